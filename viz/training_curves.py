r"""Training and validation curves of one or more runs, against iterations, epochs and wall-clock time.

    python viz/training_curves.py --runs output/pss/baseline output/pss/cyclic --labels baseline cyclic \
        --out curves.png [--smooth 500]

A 3 x 2 grid: training loss (a trailing moving average of each step's `step_loss`) against iteration
and against wall-clock time (the cumulative sum of each iteration's `time`); validation top-1
accuracy, then validation loss, against epoch and against time (training time up to the end of the
epoch plus the validation passes so far, `total_time`).
Time is in minutes when every run is shorter than an hour, in hours otherwise.
Reads <run>/train_log.json and <run>/val_log.json; a run without a val_log.json (still in its first
epoch) shows its training loss only. Prints each run's final and best accuracy and its hours.
"""
import os
import sys

import numpy as np

# Run as `python viz/training_curves.py`: put the repo root on the path so `viz.common` imports.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from matplotlib.figure import Figure  # noqa: E402

from viz.common import (TRAIN_LOG, VAL_LOG, VizInputError, check_out_path, downsample_index,  # noqa: E402
                        epoch_end_hours, label_colors, make_parser, moving_average, read_train_log,
                        read_val_log, run_cli, run_labels, save_figure, time_unit)


def default_window(num_iterations):
    """About 1% of the run, at most 1000 iterations (0.4 ImageNet epochs: the cyclic swing stays visible)."""
    return int(min(max(num_iterations // 100, 1), 1000))


def plot_training_curves(runs, out_path=None, smooth=None):
    """Draw [(label, train_log, val_log or None)] (logs as read by viz.common). Returns the Figure.

    smooth: moving-average window in iterations (default: default_window of each run).
    """
    if not runs:
        raise VizInputError('no runs to draw')
    fig = Figure(figsize=(11, 10), layout='constrained')
    axes = fig.subplots(3, 2, sharey='row')
    colors = label_colors([label for label, _, _ in runs])
    drawn, windows = set(), set()
    seconds = [np.sum(train['time']) + (np.nansum(val['total_time']) if val is not None else 0)
               for _, train, val in runs]
    factor, _, unit_name = time_unit(np.array(seconds) / 3600)
    for label, train, val in runs:
        style = dict(color=colors[label], linewidth=1.2)
        if label not in drawn:  # one legend entry per label (seeds share one)
            style['label'] = label
            drawn.add(label)
        t = np.cumsum(train['time'], dtype=float) / 3600 * factor
        window = smooth or default_window(len(t))
        windows.add(window)
        loss = moving_average(train['step_loss'], window)
        index = downsample_index(len(t))  # after smoothing, so no iteration is lost from the mean
        axes[0, 0].plot(train['iteration'][index], loss[index], **style)
        axes[0, 1].plot(t[index], loss[index], color=colors[label], linewidth=1.2)
        if val is None:
            continue
        val_t = epoch_end_hours(train, val) * factor
        marker = dict(marker='o', markersize=3) if len(val['epoch']) <= 50 else {}
        for row, field in ((1, 'acc1'), (2, 'loss')):
            axes[row, 0].plot(val['epoch'], val[field], color=colors[label], **marker)
            axes[row, 1].plot(val_t, val[field], color=colors[label], **marker)

    window = windows.pop() if len(windows) == 1 else None
    loss_title = ('training loss' if window == 1 else f'training loss (mean of {window} iterations)' if window
                  else 'training loss (moving average)')
    axes[0, 0].set(title=loss_title, xlabel='iteration', ylabel='loss')
    axes[0, 1].set(title=loss_title, xlabel=f'{unit_name} (training)')
    axes[1, 0].set(title='validation top-1 (ρ = 1)', xlabel='epoch', ylabel='top-1 (%)')
    axes[1, 1].set(title='validation top-1 (ρ = 1)', xlabel=f'{unit_name} (training + validation)')
    axes[2, 0].set(title='validation loss', xlabel='epoch', ylabel='loss')
    axes[2, 1].set(title='validation loss', xlabel=f'{unit_name} (training + validation)')
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    if out_path:
        save_figure(fig, out_path)
    return fig


def print_summary(runs):
    for label, train, val in runs:
        hours = float(np.sum(train['time'])) / 3600
        line = f'{label}: {len(train["iteration"])} iterations, {hours:.2f} h of training'
        if val is not None:
            best = int(np.nanargmax(val['acc1']))
            line += (f'; final top-1 {val["acc1"][-1]:.2f}% (epoch {val["epoch"][-1]}), '
                     f'best {val["acc1"][best]:.2f}% (epoch {val["epoch"][best]}), '
                     f'{epoch_end_hours(train, val)[-1]:.2f} h with validation')
        print(line)


def load_run(run):
    """(train_log, val_log or None) of a run folder."""
    train = read_train_log(os.path.join(run, TRAIN_LOG))
    val_path = os.path.join(run, VAL_LOG)
    if not os.path.exists(val_path):
        print(f'note: {val_path} not found; drawing the training loss only')
        return train, None
    val = read_val_log(val_path)
    epoch_end_hours(train, val, val_path)  # check now, so an error names the file
    return train, val


def main(argv=None):
    parser = make_parser(__doc__)
    parser.add_argument('--smooth', type=int, metavar='N',
                        help='moving-average window of the training loss in iterations '
                             '(default: 1%% of the run, at most 1000)')
    args = parser.parse_args(argv)
    check_out_path(args.out)
    if args.smooth is not None and args.smooth < 1:
        raise VizInputError(f'--smooth must be at least 1, got {args.smooth}')
    labels = run_labels(args.runs, args.labels)
    runs = [(label, *load_run(run)) for label, run in zip(labels, args.runs)]
    print_summary(runs)
    fig = plot_training_curves(runs, args.out, args.smooth)
    print(f'wrote {args.out}')
    return fig


if __name__ == '__main__':
    sys.exit(run_cli(main))
