"""Time per training iteration across one epoch, coloured by rho, with the mean time at each rho.

    python viz/train_times.py --runs output/pss/cyclic output/pss/baseline --out times.png [--epoch 42]

One row per run: each iteration's `time` (ms) against its index within the epoch, coloured by its rho
(1 - patch_drop_ratio), and a dashed line at the mean time of each rho level (the paper measured
352 / 304 / 215 / 161 / 130 ms at rho 1.0 / 0.8 / 0.6 / 0.4 / 0.2 on 4 x A100). The epoch is the last
complete one of each run (the last with the full number of iterations), or --epoch. The means are
printed as a table.
"""
import os
import sys

import numpy as np

# Run as `python viz/train_times.py`: put the repo root on the path so `viz.common` imports.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from matplotlib import colormaps  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from viz.common import (TRAIN_LOG, VizInputError, check_out_path, keep_ratio, make_parser,  # noqa: E402
                        read_train_log, run_cli, run_labels, save_figure, select)

RHO_CMAP = colormaps['viridis']


def last_complete_epoch(train):
    """The last epoch with the full number of iterations (a run in progress ends mid-epoch)."""
    epochs, counts = np.unique(train['epoch'], return_counts=True)
    return int(epochs[counts == counts.max()][-1])


def epoch_records(train, epoch=None, source=TRAIN_LOG):
    """The records of one epoch (default: the last complete one)."""
    epoch = last_complete_epoch(train) if epoch is None else epoch
    mask = train['epoch'] == epoch
    if not mask.any():
        raise VizInputError(f'{source}: no iterations of epoch {epoch}; the log holds epochs '
                            f'{train["epoch"].min()}-{train["epoch"].max()}')
    return select(train, mask)


def time_per_keep_ratio(records):
    """[(rho, number of iterations, mean seconds)] over `records`, by increasing rho."""
    rho = keep_ratio(records['patch_drop_ratio'])
    return [(float(level), int(np.sum(rho == level)), float(np.mean(records['time'][rho == level])))
            for level in np.unique(rho)]


def plot_train_times(runs, out_path=None):
    """Draw [(label, one epoch's records)] (see epoch_records), one row per run. Returns the Figure."""
    if not runs:
        raise VizInputError('no runs to draw')
    fig = Figure(figsize=(10, 1.0 + 2.8 * len(runs)), layout='constrained')
    axes = fig.subplots(len(runs), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (label, records) in zip(axes, runs):
        position = records['iteration'] - records['iteration'][0]
        rho = keep_ratio(records['patch_drop_ratio'])
        ax.scatter(position, records['time'] * 1000, c=RHO_CMAP(rho), s=6, linewidths=0)
        for level, count, mean in time_per_keep_ratio(records):
            ax.axhline(mean * 1000, color=RHO_CMAP(level), linestyle='--', linewidth=1.2,
                       label=f'ρ {level:.1f}: {mean * 1000:.0f} ms (n = {count})')
        ax.set(title=f'{label}: epoch {records["epoch"][0]}', ylabel='time per iteration (ms)', ylim=(0, None))
        ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1.0), title='mean per ρ', title_fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel('iteration within the epoch')
    if out_path:
        save_figure(fig, out_path)
    return fig


def print_table(runs):
    for label, records in runs:
        print(f'{label}, epoch {records["epoch"][0]} ({len(records["time"])} iterations)')
        print('   rho  iterations  mean time (ms)')
        for level, count, mean in time_per_keep_ratio(records):
            print(f'  {level:4.1f}  {count:10d}  {mean * 1000:14.1f}')


def main(argv=None):
    parser = make_parser(__doc__)
    parser.add_argument('--epoch', type=int, help='the epoch to draw (default: the last complete one)')
    args = parser.parse_args(argv)
    check_out_path(args.out)
    labels = run_labels(args.runs, args.labels)
    runs = []
    for label, run in zip(labels, args.runs):
        path = os.path.join(run, TRAIN_LOG)
        runs.append((label, epoch_records(read_train_log(path), args.epoch, path)))
    print_table(runs)
    fig = plot_train_times(runs, args.out)
    print(f'wrote {args.out}')
    return fig


if __name__ == '__main__':
    sys.exit(run_cli(main))
