"""rho (the patch keep rate) over training for the schedules that runs were configured with.

    python viz/patch_schedules.py --runs output/pss/simmim/vit-b/* --out schedules.png
    python viz/patch_schedules.py --configs configs/vit-b/*.yaml --out schedules.pdf

Two panels: rho over the whole run (x in epochs), and one epoch of the cyclic schedules (x in
iterations; every schedule when none is cyclic). The values come from `patch_scheduler.patch_drop_ratio_at`,
the function training uses. A run's schedule is read from <run>/config.yaml; its iterations per epoch
from --iters-per-epoch, else from its train_log.json, else 2502 (ImageNet at a total batch of 512).
Prints the mean rho and the share of iterations spent at each rho.
"""
import functools
import os
import sys
from dataclasses import dataclass

import numpy as np

# Run as `python viz/patch_schedules.py`: put the repo root on the path so `viz.common` and
# `patch_scheduler` import as they do from the root.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from matplotlib.figure import Figure  # noqa: E402

from patch_scheduler import PATCH_SCHEDULES, patch_drop_ratio_at  # noqa: E402
from viz.common import (TRAIN_LOG, VizInputError, check_out_path, config_value, keep_ratio,  # noqa: E402
                        make_parser, read_config, read_train_log, run_cli, run_labels, save_figure)

DEFAULT_ITERS_PER_EPOCH = 2502


@dataclass(frozen=True)
class Schedule:
    """The TRAIN.PATCH_SCHEDULER settings of one run (drop ratios, as the configs store them)."""
    name: str
    start_drop_ratio: float
    end_drop_ratio: float
    epochs: int
    cooldown_epochs: int = 0
    round_to: float = 0.2
    iterations_per_epoch: int = DEFAULT_ITERS_PER_EPOCH

    def keep_ratios(self):
        """rho at every step of the run, from patch_drop_ratio_at (cached: do not modify the array)."""
        return _keep_ratios(self)


@functools.lru_cache(maxsize=16)  # the summary and the figure both need it; 250,200 calls take ~0.3 s
def _keep_ratios(schedule):
    steps = schedule.epochs * schedule.iterations_per_epoch
    drop_ratios = np.fromiter(
        (patch_drop_ratio_at(i, schedule.name, schedule.start_drop_ratio, schedule.end_drop_ratio,
                             schedule.iterations_per_epoch, schedule.epochs, schedule.cooldown_epochs,
                             schedule.round_to)
         for i in range(steps)), dtype=float, count=steps)
    return keep_ratio(drop_ratios)


def schedule_from_config(config, source, iterations_per_epoch):
    """The Schedule of a resolved config (nested dicts, as in config.yaml)."""
    def get(key, default=None, kind=str):
        value = config_value(config, key, source, default)
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise VizInputError(f'{source}: {key} is {value!r}, not a {kind.__name__}') from None

    name = get('TRAIN.PATCH_SCHEDULER.NAME').lower()
    if name not in PATCH_SCHEDULES:
        raise VizInputError(f"{source}: TRAIN.PATCH_SCHEDULER.NAME '{name}' is not known; valid: "
                            f"{', '.join(PATCH_SCHEDULES)}")
    # COOLDOWN_EPOCHS and ROUND_TO default to config.py's values: configs saved before they existed
    # trained without a cooldown and on the 0.2 grid.
    return Schedule(name=name,
                    start_drop_ratio=get('TRAIN.PATCH_SCHEDULER.START_PATCH_DROP_RATIO', kind=float),
                    end_drop_ratio=get('TRAIN.PATCH_SCHEDULER.END_PATCH_DROP_RATIO', kind=float),
                    epochs=get('TRAIN.EPOCHS', kind=int),
                    cooldown_epochs=get('TRAIN.PATCH_SCHEDULER.COOLDOWN_EPOCHS', 0, int),
                    round_to=get('TRAIN.PATCH_SCHEDULER.ROUND_TO', 0.2, float),
                    iterations_per_epoch=int(iterations_per_epoch))


def schedule_from_config_file(path, iterations_per_epoch=DEFAULT_ITERS_PER_EPOCH):
    """The Schedule of a config file in configs/ (defaults and BASE: inheritance through config.py)."""
    import argparse

    from config import ConfigError, get_config  # imports the models (torch): only for --configs

    try:
        config = get_config(argparse.Namespace(cfg=path, opts=[]))
    except ConfigError as e:
        raise VizInputError(str(e)) from None
    ps = config.TRAIN.PATCH_SCHEDULER
    return Schedule(ps.NAME.lower(), ps.START_PATCH_DROP_RATIO, ps.END_PATCH_DROP_RATIO, config.TRAIN.EPOCHS,
                    ps.COOLDOWN_EPOCHS, ps.ROUND_TO, iterations_per_epoch)


def logged_iterations_per_epoch(train):
    """Iterations per epoch in a training log: the most in any epoch (the last one may be partial)."""
    _, counts = np.unique(train['epoch'], return_counts=True)
    return int(counts.max())


def _steps(ax, keep_ratios, x_scale, **kwargs):
    """Draw a step function through its change points only (a 100-epoch run has 250,200 steps)."""
    change = np.flatnonzero(np.diff(keep_ratios)) + 1
    x = np.concatenate([[0], change, [len(keep_ratios)]])
    y = np.append(keep_ratios[x[:-1]], keep_ratios[-1])
    ax.step(x * x_scale, y, where='post', **kwargs)


def plot_patch_schedules(schedules, out_path=None):
    """Draw [(label, Schedule)]: rho over the whole run, and one epoch of the cyclic ones. Returns the Figure.

    Runs with identical schedules (magnitude and random selection, seeds) share one line.
    """
    if not schedules:
        raise VizInputError('no schedules to draw')
    merged = {}
    for label, schedule in schedules:
        merged.setdefault(schedule, []).append(label)
    fig = Figure(figsize=(12, 4.5), layout='constrained')
    ax_run, ax_epoch = fig.subplots(1, 2, width_ratios=(3, 2))
    any_cyclic = any(schedule.name == 'cyclic' for schedule in merged)
    for i, (schedule, labels) in enumerate(merged.items()):
        rho = schedule.keep_ratios()
        # A cyclic schedule fills the whole-run panel with triangles: draw it thin and behind the others.
        cyclic = schedule.name == 'cyclic'
        style = dict(color=f'C{i % 10}', linewidth=0.6 if cyclic else 1.6, zorder=1 if cyclic else 2)
        label = f'{", ".join(dict.fromkeys(labels))} (mean ρ {rho.mean():.3f})'
        _steps(ax_run, rho, 1 / schedule.iterations_per_epoch, label=label, **style)
        if cyclic or not any_cyclic:
            _steps(ax_epoch, rho[:schedule.iterations_per_epoch], 1, **{**style, 'linewidth': 1.6})
    ax_run.set(xlabel='epoch', ylabel='ρ (keep rate)', title='whole run', ylim=(0, 1.05))
    ax_epoch.set(xlabel='iteration', ylabel='ρ (keep rate)', ylim=(0, 1.05),
                 title='one epoch (epoch 0)' + (' of the cyclic schedules' if any_cyclic else ''))
    fig.legend(loc='outside lower center', ncols=min(len(merged), 3), fontsize=8, frameon=False)
    for ax in (ax_run, ax_epoch):
        ax.grid(alpha=0.3)
    if out_path:
        save_figure(fig, out_path)
    return fig


def print_summary(schedules):
    for label, schedule in schedules:
        rho = schedule.keep_ratios()
        levels, counts = np.unique(rho, return_counts=True)
        shares = ', '.join(f'{level:.1f}: {count / len(rho):.3f}' for level, count in zip(levels, counts))
        print(f'{label}: {schedule.name} {schedule.start_drop_ratio} -> {schedule.end_drop_ratio}, '
              f'{schedule.epochs} epochs x {schedule.iterations_per_epoch} iterations; '
              f'mean rho {rho.mean():.3f}; share of iterations per rho {{{shares}}}')


def main(argv=None):
    parser = make_parser(__doc__, runs_required=False)
    parser.add_argument('--configs', nargs='+', default=[], metavar='YAML',
                        help='config files to draw (after the runs), e.g. configs/vit-b/*.yaml')
    parser.add_argument('--iters-per-epoch', type=int, metavar='N',
                        help=f'iterations per epoch (default: from each run\'s {TRAIN_LOG}, else '
                             f'{DEFAULT_ITERS_PER_EPOCH})')
    args = parser.parse_args(argv)
    check_out_path(args.out)
    if not args.runs and not args.configs:
        raise VizInputError('give run folders (--runs) or config files (--configs)')
    if args.iters_per_epoch is not None and args.iters_per_epoch < 1:
        raise VizInputError(f'--iters-per-epoch must be at least 1, got {args.iters_per_epoch}')
    labels = run_labels(args.runs + args.configs, args.labels)
    if args.labels is None:  # a config file is named by its stem, as the run it describes would be
        labels[len(args.runs):] = [os.path.splitext(os.path.basename(p))[0] for p in args.configs]

    schedules = []
    for run in args.runs:
        config = read_config(run)
        if config is None:
            raise FileNotFoundError(f'{os.path.join(run, "config.yaml")}: file not found (the schedule is read '
                                    'from the run\'s resolved config; or pass --configs)')
        iters = args.iters_per_epoch
        if iters is None:
            log_path = os.path.join(run, TRAIN_LOG)
            iters = (logged_iterations_per_epoch(read_train_log(log_path, fields=()))
                     if os.path.exists(log_path) else DEFAULT_ITERS_PER_EPOCH)
        schedules.append(schedule_from_config(config, os.path.join(run, 'config.yaml'), iters))
    for path in args.configs:
        schedules.append(schedule_from_config_file(path, args.iters_per_epoch or DEFAULT_ITERS_PER_EPOCH))

    named = list(zip(labels, schedules))
    print_summary(named)
    fig = plot_patch_schedules(named, args.out)
    print(f'wrote {args.out}')
    return fig


if __name__ == '__main__':
    sys.exit(run_cli(main))
