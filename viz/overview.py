r"""The paper's two-panel overview: accuracy against training time, and accuracy against rho.

    python viz/overview.py --runs out/baseline out/cyclic --labels baseline "Cyclic(0.2, 1.0)" \
        --out overview.pdf [--ylim 70 85]

Left: validation top-1 (at rho = 1) after each epoch against wall-clock time (training plus
validation so far, from <run>/train_log.json and <run>/val_log.json; in minutes when every run is
shorter than an hour), the legend giving each label's final top-1 and time (the mean over its runs
when several share a label). Right: top-1 against rho at inference from <run>/sweep_drop.json (runs
without one are left out of this panel, with a note), seeds as mean and min-max band and throughput
(images/s) at the points, as in sweep_drop_ratio.py.
"""
import os
import sys

# Run as `python viz/overview.py`: put the repo root on the path so `viz.common` imports.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from viz.common import (SWEEP, TRAIN_LOG, VAL_LOG, VizInputError, check_out_path, epoch_end_hours,  # noqa: E402
                        group_by_label, label_colors, make_parser, read_sweep, read_train_log, read_val_log,
                        run_cli, run_labels, save_figure, time_unit)
from viz.sweep_drop_ratio import draw_sweep, throughput_note  # noqa: E402


def plot_overview(runs, out_path=None, ylim=None):
    """Draw [(label, train_log, val_log, sweep or None)]; labels may repeat (seeds). Returns the Figure."""
    if not runs:
        raise VizInputError('no runs to draw')
    fig = Figure(figsize=(12, 4.8), layout='constrained')
    ax_hours, ax_rho = fig.subplots(1, 2)
    colors = label_colors([run[0] for run in runs])
    ends = [epoch_end_hours(train, val) for _, train, val, _ in runs]
    factor, unit, unit_name = time_unit(ends)
    finals = {}  # label -> [(final top-1, time)] over its runs (seeds), for the legend
    for (label, _, val, _), hours in zip(runs, ends):
        finals.setdefault(label, []).append((val['acc1'][-1], hours[-1] * factor))
    legend = {}
    for label, values in finals.items():
        acc, t = np.mean(values, axis=0)
        seeds = f', mean of {len(values)}' if len(values) > 1 else ''
        legend[label] = f'{label}: {acc:.2f}% · {t:.2f} {unit}{seeds}'
    for (label, _, val, _), hours in zip(runs, ends):
        t = hours * factor
        ax_hours.plot(t, val['acc1'], color=colors[label], linewidth=1.2, label=legend.pop(label, None))
        ax_hours.plot(t[-1], val['acc1'][-1], marker='o', color=colors[label])
    ax_hours.set(title='top-1 vs training time', xlabel=f'{unit_name} (training + validation)',
                 ylabel='validation top-1 (%, ρ = 1)')
    ax_hours.grid(alpha=0.3)
    ax_hours.legend(fontsize=8, loc='lower right')

    with_sweep = [(label, sweep) for label, _, _, sweep in runs if sweep is not None]
    if with_sweep:
        groups = group_by_label(*zip(*with_sweep))
        annotated = draw_sweep(ax_rho, groups, colors=colors)
        ax_rho.set_title(f'top-1 vs ρ at inference ({throughput_note(groups, annotated)})')
    else:
        ax_rho.text(0.5, 0.5, f'no {SWEEP} in these runs', ha='center', va='center', transform=ax_rho.transAxes)
        ax_rho.set_axis_off()
    if ylim:
        ax_hours.set_ylim(*ylim)
        ax_rho.set_ylim(*ylim)
    if out_path:
        save_figure(fig, out_path)
    return fig


def load_run(run):
    """(train_log, val_log, sweep or None) of a run folder."""
    train = read_train_log(os.path.join(run, TRAIN_LOG))
    val_path = os.path.join(run, VAL_LOG)
    val = read_val_log(val_path, ('acc1', 'total_time'))
    epoch_end_hours(train, val, val_path)  # check now, so an error names the file
    sweep_path = os.path.join(run, SWEEP)
    if not os.path.exists(sweep_path):
        print(f'note: {sweep_path} not found; {run} is left out of the accuracy-vs-rho panel')
        return train, val, None
    return train, val, read_sweep(sweep_path)


def main(argv=None):
    parser = make_parser(__doc__)
    parser.add_argument('--ylim', nargs=2, type=float, metavar=('LOW', 'HIGH'),
                        help='top-1 range of both panels (default: all points)')
    args = parser.parse_args(argv)
    check_out_path(args.out)
    labels = run_labels(args.runs, args.labels)
    runs = [(label, *load_run(run)) for label, run in zip(labels, args.runs)]
    ends = [epoch_end_hours(train, val)[-1] for _, train, val, _ in runs]
    factor, unit, _ = time_unit(ends)
    for (label, _, val, _), end in zip(runs, ends):
        print(f'{label}: final top-1 {val["acc1"][-1]:.2f}% after {end * factor:.2f} {unit}')
    fig = plot_overview(runs, args.out, args.ylim)
    print(f'wrote {args.out}')
    return fig


if __name__ == '__main__':
    sys.exit(run_cli(main))
