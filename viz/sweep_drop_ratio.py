r"""Accuracy against rho at inference ("dynamic inference"), for several runs, throughput at the points.

    python viz/sweep_drop_ratio.py --runs out/baseline out/cyclic_s0 out/cyclic_s1 \
        --labels baseline cyclic cyclic --out sweep.png [--metric acc5] [--throughput model_throughput]

Reads <run>/sweep_drop.json (one line per drop ratio) and draws top-1 (or --metric) against
rho = 1 - drop_ratio, one curve per label; the number at each point is the throughput in images/s
(`throughput`, end to end, or `model_throughput`; with more than two labels, the first label's only).
Runs that share a label (seeds) are drawn as their mean with a min-max band, and the throughput is
their mean. Prints the table.
"""
import os
import sys

import numpy as np

# Run as `python viz/sweep_drop_ratio.py`: put the repo root on the path so `viz.common` imports.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from matplotlib.figure import Figure  # noqa: E402

from viz.common import (SWEEP, VizInputError, check_out_path, group_by_label, keep_ratio,  # noqa: E402
                        label_colors, make_parser, read_sweep, run_cli, run_labels, save_figure)

METRICS = ('acc1', 'acc5', 'loss')
THROUGHPUTS = ('throughput', 'model_throughput')
METRIC_NAMES = {'acc1': 'top-1 (%)', 'acc5': 'top-5 (%)', 'loss': 'validation loss'}


def sweep_statistics(sweeps, metric='acc1', throughput='throughput'):
    """Over the sweeps of one setting (seeds), at each rho any of them measured (increasing):
    {'keep_ratio', 'mean', 'low', 'high', 'throughput' (mean), 'count'}, arrays."""
    per_sweep = [(keep_ratio(sweep['drop_ratio']), sweep) for sweep in sweeps]
    levels = np.unique(np.concatenate([rho for rho, _ in per_sweep]))
    stats = {key: np.empty(len(levels)) for key in ('mean', 'low', 'high', 'throughput', 'count')}
    for i, level in enumerate(levels):
        values = np.concatenate([sweep[metric][rho == level] for rho, sweep in per_sweep])
        speeds = np.concatenate([sweep[throughput][rho == level] for rho, sweep in per_sweep])
        stats['mean'][i], stats['low'][i], stats['high'][i] = values.mean(), values.min(), values.max()
        stats['throughput'][i], stats['count'][i] = speeds.mean(), len(values)
    stats['keep_ratio'] = levels
    return stats


MAX_ANNOTATED = 2  # with more labels, only the first one's throughput is written at its points


def draw_sweep(ax, groups, metric='acc1', throughput='throughput', annotate=True, colors=None):
    """Draw [(label, [sweeps])] on `ax`: mean per label, min-max band for several sweeps, throughput text.
    With more than MAX_ANNOTATED labels only the first label's throughput is written (the models share an
    architecture, so their throughputs at one rho differ only by noise, and more numbers would overlap).

    colors: {label: colour} (default: the colour cycle in order).
    Returns the labels whose throughput is written.
    """
    colors = colors or label_colors([label for label, _ in groups])
    labels = [label for label, _ in groups]
    annotated = (labels if len(labels) <= MAX_ANNOTATED else labels[:1]) if annotate else []
    for i, (label, sweeps) in enumerate(groups):
        stats = sweep_statistics(sweeps, metric, throughput)
        color = colors[label]
        spread = f' (mean of {len(sweeps)}, min-max)' if len(sweeps) > 1 else ''
        ax.plot(stats['keep_ratio'], stats['mean'], marker='o', markersize=4, color=color, label=label + spread)
        if len(sweeps) > 1:
            ax.fill_between(stats['keep_ratio'], stats['low'], stats['high'], color=color, alpha=0.2, linewidth=0)
        if label in annotated:
            # alternate above and below the points so that two curves' numbers rarely collide
            offset = (0, 6) if i % 2 == 0 else (0, -12)
            for x, y, speed in zip(stats['keep_ratio'], stats['mean'], stats['throughput']):
                ax.annotate(f'{speed:.0f}', (x, y), textcoords='offset points', xytext=offset, ha='center',
                            fontsize=7, color=color)
    ax.set(xlabel='ρ (keep rate) at inference', ylabel=METRIC_NAMES.get(metric, metric))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc='lower right')
    return annotated


def throughput_note(groups, annotated, speed_name=''):
    """'numbers: images/s[, speed_name]', naming the label when only some labels' numbers are written."""
    whose = '' if len(annotated) == len(groups) else f' of {", ".join(annotated)}'
    return f'numbers: images/s{whose}' + (f', {speed_name}' if speed_name else '')


def plot_sweep_drop_ratio(runs, out_path=None, metric='acc1', throughput='throughput'):
    """Draw [(label, sweep)] (sweep as read by viz.common.read_sweep); labels may repeat. Returns the Figure."""
    if not runs:
        raise VizInputError('no runs to draw')
    fig = Figure(figsize=(7, 5), layout='constrained')
    ax = fig.subplots()
    groups = group_by_label(*zip(*runs))
    annotated = draw_sweep(ax, groups, metric, throughput)
    speed_name = 'end to end' if throughput == 'throughput' else 'model only'
    ax.set_title(f'{METRIC_NAMES.get(metric, metric)} vs ρ ({throughput_note(groups, annotated, speed_name)})')
    if out_path:
        save_figure(fig, out_path)
    return fig


def print_table(runs, metric='acc1', throughput='throughput'):
    for label, sweeps in group_by_label(*zip(*runs)):
        stats = sweep_statistics(sweeps, metric, throughput)
        print(f'{label} ({len(sweeps)} run{"s" if len(sweeps) > 1 else ""})')
        print(f'   rho  {metric:>8}  {"min":>8}  {"max":>8}  {throughput} (img/s)')
        for i, level in enumerate(stats['keep_ratio']):
            print(f'  {level:4.2f}  {stats["mean"][i]:8.3f}  {stats["low"][i]:8.3f}  {stats["high"][i]:8.3f}  '
                  f'{stats["throughput"][i]:.1f}')


def main(argv=None):
    parser = make_parser(__doc__)
    parser.add_argument('--metric', choices=METRICS, default='acc1', help='what to draw (default: acc1)')
    parser.add_argument('--throughput', choices=THROUGHPUTS, default='throughput',
                        help='the throughput printed at the points (default: throughput, end to end)')
    args = parser.parse_args(argv)
    check_out_path(args.out)
    labels = run_labels(args.runs, args.labels)
    runs = [(label, read_sweep(os.path.join(run, SWEEP), ('drop_ratio', args.metric, args.throughput)))
            for label, run in zip(labels, args.runs)]
    print_table(runs, args.metric, args.throughput)
    fig = plot_sweep_drop_ratio(runs, args.out, args.metric, args.throughput)
    print(f'wrote {args.out}')
    return fig


if __name__ == '__main__':
    sys.exit(run_cli(main))
