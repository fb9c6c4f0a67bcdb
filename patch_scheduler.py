"""Patch sampling schedules: the drop ratio (1 - rho) for every training iteration.

    scheduler = build_patch_scheduler(config, iterations_per_epoch)
    model.set_patch_drop_ratio(scheduler.get_patch_drop_ratio())   # before each optimizer step
    scheduler.step()                                              # after it

The value at any step is a pure function of the step (`patch_drop_ratio_at`), so resuming only
needs the step counter. With start drop s, end drop e, I iterations per epoch and
T = (epochs - cooldown_epochs) * I, at step i (from 0):
    linear:  d = (1 - i/T) s + (i/T) e
    cosine:  d = s at i = 0, e for i >= T - 1, else e + (s - e) (1 + cos(pi i / T)) / 2
    cyclic:  a triangle within every epoch, s at its ends and e at mid-epoch
    none:    d = 0 (all patches)
then d = 0 during the cooldown (i >= T), clamped to [0, 1] and rounded to the ROUND_TO grid.
"""
import math

PATCH_SCHEDULES = ('none', 'linear', 'cosine', 'cyclic')


def _linear(i, s, e, iters_per_epoch, total):
    return (1 - i / total) * s + (i / total) * e


def _cosine(i, s, e, iters_per_epoch, total):
    if i == 0:
        return s
    if i >= total - 1:
        return e
    return e + (s - e) * (1 + math.cos(math.pi * i / total)) / 2


def _cyclic(i, s, e, iters_per_epoch, total):
    p = i % iters_per_epoch
    half = iters_per_epoch / 2
    f = p / half if p <= iters_per_epoch // 2 else (iters_per_epoch - p) / half
    return (1 - f) * s + f * e


def _none(i, s, e, iters_per_epoch, total):
    return 0.0


_SCHEDULE_FUNCS = {'none': _none, 'linear': _linear, 'cosine': _cosine, 'cyclic': _cyclic}


def round_drop_ratio(drop_ratio, round_to):
    """Clamp to [0, 1] and round to the grid as round(d * n) / n, n = 1 / round_to.

    Python's round (ties to even) on d * n, as the original did: the schedules hit exact ties
    (cyclic at iteration 695 of a 2502-iteration epoch), so d / round_to would move change points.
    """
    drop_ratio = min(max(drop_ratio, 0.0), 1.0)
    if round_to <= 0:
        return drop_ratio
    n = round(1 / round_to)
    return round(drop_ratio * n) / n


def patch_drop_ratio_at(step, name, start, end, iterations_per_epoch, epochs, cooldown_epochs=0,
                        round_to=0.2):
    """The drop ratio of schedule `name` at optimizer step `step` (0-based)."""
    if name not in _SCHEDULE_FUNCS:
        raise ValueError(f"unknown patch schedule '{name}'; valid: {', '.join(PATCH_SCHEDULES)}")
    total = (epochs - cooldown_epochs) * iterations_per_epoch
    if step >= total:
        return 0.0  # cooldown: all patches
    drop_ratio = _SCHEDULE_FUNCS[name](step, start, end, iterations_per_epoch, total)
    return round_drop_ratio(drop_ratio, round_to)


class PatchScheduler:
    """A step counter over `patch_drop_ratio_at`."""

    def __init__(self, name, start, end, iterations_per_epoch, epochs, cooldown_epochs=0, round_to=0.2):
        name = name.lower()
        if name not in _SCHEDULE_FUNCS:
            raise ValueError(f"unknown patch schedule '{name}'; valid: {', '.join(PATCH_SCHEDULES)}")
        if iterations_per_epoch < 1:
            raise ValueError(f'iterations_per_epoch must be at least 1, got {iterations_per_epoch}')
        self.name = name
        self.start = start
        self.end = end
        self.iterations_per_epoch = iterations_per_epoch
        self.epochs = epochs
        self.cooldown_epochs = cooldown_epochs
        self.round_to = round_to
        self.step_count = 0

    def drop_ratio_at(self, step):
        return patch_drop_ratio_at(step, self.name, self.start, self.end, self.iterations_per_epoch,
                                   self.epochs, self.cooldown_epochs, self.round_to)

    def max_drop_ratio(self):
        """The largest drop ratio at any step of the run, exactly (rounding is monotonic, so it is
        the largest rounded value): linear and cosine move monotonically from start to end, so it
        lies at the first or last scheduled step; cyclic repeats one triangle every epoch."""
        total = (self.epochs - self.cooldown_epochs) * self.iterations_per_epoch
        if total <= 0:
            return 0.0  # all cooldown
        steps = range(self.iterations_per_epoch) if self.name == 'cyclic' else (0, total - 1)
        return max(self.drop_ratio_at(step) for step in steps)

    def get_patch_drop_ratio(self):
        return self.drop_ratio_at(self.step_count)

    def step(self):
        self.step_count += 1

    def set_epoch(self, epoch):
        self.step_count = epoch * self.iterations_per_epoch

    def state_dict(self):
        return {'step_count': self.step_count}

    def load_state_dict(self, state_dict):
        self.step_count = int(state_dict['step_count'])


def build_patch_scheduler(config, iterations_per_epoch):
    """The schedule of config.TRAIN.PATCH_SCHEDULER over config.TRAIN.EPOCHS epochs.

    `iterations_per_epoch` counts optimizer steps (micro-batches / accumulation steps).
    """
    ps = config.TRAIN.PATCH_SCHEDULER
    return PatchScheduler(ps.NAME, ps.START_PATCH_DROP_RATIO, ps.END_PATCH_DROP_RATIO,
                          iterations_per_epoch, config.TRAIN.EPOCHS, ps.COOLDOWN_EPOCHS, ps.ROUND_TO)
