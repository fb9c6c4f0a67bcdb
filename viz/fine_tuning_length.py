r"""Top-1 against the length of fine-tuning, one panel per rho at inference.

    python viz/fine_tuning_length.py --runs results/runs/baseline_seed0 results/runs/baseline_8ep_seed0 \
        results/runs/magnitude_cyclic_seed0 results/runs/magnitude_cyclic_8ep_seed0 \
        --labels baseline baseline Cyclic Cyclic --out length.png [--rhos 1.0 0.4 0.2]

Each run is placed at its TRAIN.EPOCHS (<run>/config.yaml). At rho = 1 the point is the last epoch's top-1
(<run>/val_log.json); at other rho it is <run>/sweep_drop.json's. Runs that share a label and a length are
seeds: their mean is joined by a line across lengths, and each seed is a dot.
"""
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from viz.common import (SWEEP, VAL_LOG, VizInputError, check_out_path, config_value, keep_ratio,  # noqa: E402
                        label_colors, make_parser, read_config, read_sweep, read_val_log, run_cli, run_labels,
                        save_figure)

DEFAULT_RHOS = (1.0, 0.4, 0.2)


def top1_at(val, sweep, rho):
    """Top-1 of the final model at keep rate `rho`, or None where the sweep did not measure it."""
    if rho == 1.0:
        return float(val['acc1'][-1])
    if sweep is None:
        return None
    match = keep_ratio(sweep['drop_ratio']) == round(rho, 6)
    return float(sweep['acc1'][match][0]) if match.any() else None


def plot_fine_tuning_length(runs, rhos=DEFAULT_RHOS, out_path=None):
    """Draw [(label, epochs, val_log, sweep or None)]. Returns the Figure."""
    if not runs:
        raise VizInputError('no runs to draw')
    fig = Figure(figsize=(4.2 * len(rhos), 4.0), layout='constrained')
    axes = np.atleast_1d(fig.subplots(1, len(rhos)))
    colors = label_colors([run[0] for run in runs])
    for ax, rho in zip(axes, rhos):
        for label in colors:
            points = {}  # epochs -> top-1 per seed
            for name, epochs, val, sweep in runs:
                value = top1_at(val, sweep, rho) if name == label else None
                if value is not None:
                    points.setdefault(epochs, []).append(value)
            if not points:
                continue
            lengths = sorted(points)
            ax.plot(lengths, [np.mean(points[e]) for e in lengths], color=colors[label], marker='o', label=label)
            for e in lengths:
                ax.scatter([e] * len(points[e]), points[e], color=colors[label], s=12, alpha=0.5)
            ax.set_xticks(lengths)
        ax.set(title=f'ρ = {rho:.1f} at inference', xlabel='fine-tuning epochs', ylabel='top-1 (%)')
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if out_path:
        save_figure(fig, out_path)
    return fig


def main(argv):
    parser = make_parser(__doc__)
    parser.add_argument('--rhos', type=float, nargs='+', default=list(DEFAULT_RHOS), help='keep rates, one panel each')
    args = parser.parse_args(argv)
    check_out_path(args.out)
    runs = []
    for label, run in zip(run_labels(args.runs, args.labels), args.runs):
        config = read_config(run)
        epochs = config_value(config, 'TRAIN.EPOCHS', run)
        sweep_path = os.path.join(run, SWEEP)
        sweep = read_sweep(sweep_path) if os.path.exists(sweep_path) else None
        runs.append((label, int(epochs), read_val_log(os.path.join(run, VAL_LOG)), sweep))
    fig = plot_fine_tuning_length(runs, args.rhos, args.out)
    print(f'wrote {args.out}')
    return fig


if __name__ == '__main__':
    sys.exit(run_cli(main))
