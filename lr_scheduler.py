"""Learning-rate scaling and schedules (timm), stepped once per optimizer update.

    base_lr, warmup_lr, min_lr = scaled_lrs(config, world_size)
    optimizer = build_optimizer(config, model, world_size)           # optimizer.py, at base_lr
    scheduler = build_scheduler(config, optimizer, n_iter_per_epoch)  # OPTIMIZER steps per epoch
    num_updates = start_epoch * n_iter_per_epoch
    for every optimizer update:
        optimizer.step()
        num_updates += 1
        scheduler.step_update(num_updates)   # sets the LR of the next update

So update u (0-based, counted over the whole run) runs at `lr_at(scheduler, u)` times its group's
`lr_scale`: the value is a pure function of u, which is what makes resume exact. Micro-batches of an
accumulated step do not count; only optimizer updates do.

Schedules, with T = EPOCHS * n_iter updates and W = WARMUP_EPOCHS * n_iter warm-up updates:
- every schedule warms up linearly: lr(u) = warmup_lr + u * (base_lr - warmup_lr) / W for u < W;
- cosine: as SimMIM / the original PSS code, the cosine spans the whole run (timm t_initial = T,
  no warm-up prefix) and the warm-up replaces its first W updates. The LR right after warm-up is
  therefore the cosine's value at W, not base_lr (0.905 x base_lr for 20 of 100 epochs), and it
  reaches min_lr at u = T. We keep this convention because the paper's numbers were trained with it;
- linear: base_lr at u = W falling linearly to min_lr at u = T (timm PolyLRScheduler, power 1, with
  the warm-up as a prefix, which is the shape of SimMIM's linear schedule);
- step: base_lr * DECAY_RATE ** (u // (DECAY_EPOCHS * n_iter)), epochs counted from the start of
  the run (warm-up included);
- multistep: base_lr * GAMMA ** (number of MULTISTEPS epochs m with u >= m * n_iter).
"""
import bisect

import quiet_timm  # noqa: F401  (before timm, which warns at import)
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler, PolyLRScheduler, StepLRScheduler

from utils import get_world_size


def scaled_lrs(config, world_size):
    """(base_lr, warmup_lr, min_lr): the configured rates scaled to the effective batch (SimMIM's rule).

    Each rate is multiplied by DATA.BATCH_SIZE * world_size / 512 and, when TRAIN.ACCUMULATION_STEPS
    is above 1, by the accumulation steps (the config rates are quoted for a total batch of 512).
    """
    scale = config.DATA.BATCH_SIZE * world_size / 512.0
    if config.TRAIN.ACCUMULATION_STEPS > 1:
        scale *= config.TRAIN.ACCUMULATION_STEPS
    return config.TRAIN.BASE_LR * scale, config.TRAIN.WARMUP_LR * scale, config.TRAIN.MIN_LR * scale


class _MultiStepLRScheduler(MultiStepLRScheduler):
    """timm's multistep schedule with the milestone on the update it names.

    timm bisects t + 1 (made for its end-of-epoch call convention), which decays one update early
    when stepped per update; here update u >= milestone is the first decayed one.
    """

    def get_curr_decay_steps(self, t):
        return bisect.bisect_right(self.decay_t, t)


def build_scheduler(config, optimizer, n_iter_per_epoch, world_size=None):
    """The timm scheduler for TRAIN.LR_SCHEDULER.NAME, in updates (t_in_epochs=False).

    `n_iter_per_epoch` counts optimizer updates per epoch (loader length // accumulation steps).
    The peak LR is each group's `initial_lr` (the scaled base LR that build_optimizer set); warm-up
    and minimum LRs come from scaled_lrs(config, world_size), world_size defaulting to the process
    group's. The schedules are described in the module docstring. state_dict() / load_state_dict()
    hold every field the LR depends on (plain Python numbers and lists), so a resumed run follows
    the same curve.
    """
    if n_iter_per_epoch < 1:
        raise ValueError(f'build_scheduler: n_iter_per_epoch must be at least 1, got {n_iter_per_epoch}')
    if world_size is None:
        world_size = get_world_size()
    train = config.TRAIN
    _, warmup_lr, min_lr = scaled_lrs(config, world_size)
    num_updates = int(train.EPOCHS * n_iter_per_epoch)
    warmup_updates = int(train.WARMUP_EPOCHS * n_iter_per_epoch)
    warmup = dict(warmup_lr_init=warmup_lr, warmup_t=warmup_updates, t_in_epochs=False)
    name = train.LR_SCHEDULER.NAME
    if name == 'cosine':
        return CosineLRScheduler(optimizer, t_initial=max(1, num_updates), lr_min=min_lr, cycle_limit=1,
                                 warmup_prefix=False, **warmup)
    if name == 'linear':
        return PolyLRScheduler(optimizer, t_initial=max(1, num_updates - warmup_updates), power=1.0,
                               lr_min=min_lr, cycle_limit=1, warmup_prefix=True, **warmup)
    if name == 'step':
        decay_updates = int(train.LR_SCHEDULER.DECAY_EPOCHS * n_iter_per_epoch)
        if decay_updates < 1:
            raise ValueError(f'TRAIN.LR_SCHEDULER.DECAY_EPOCHS = {train.LR_SCHEDULER.DECAY_EPOCHS} '
                             'must be positive for the step schedule')
        return StepLRScheduler(optimizer, decay_t=decay_updates, decay_rate=train.LR_SCHEDULER.DECAY_RATE,
                               warmup_prefix=False, **warmup)
    if name == 'multistep':
        milestones = sorted(int(epoch * n_iter_per_epoch) for epoch in train.LR_SCHEDULER.MULTISTEPS)
        return _MultiStepLRScheduler(optimizer, decay_t=milestones, decay_rate=train.LR_SCHEDULER.GAMMA,
                                     warmup_prefix=False, **warmup)
    raise ValueError(f"TRAIN.LR_SCHEDULER.NAME '{name}' is not known; valid values: cosine, linear, "
                     'step, multistep')


def lr_at(scheduler, num_updates):
    """The scheduled LR (before a group's lr_scale) of update `num_updates` (0-based): a pure function."""
    return scheduler._get_lr(num_updates)[0]
