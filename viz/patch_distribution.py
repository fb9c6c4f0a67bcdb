"""How often each patch position is kept: a heat map per rho of the fraction of images that kept it.

    python viz/patch_distribution.py --runs output/pss/cyclic [output/pss/cyclic_random ...] --out dist.png

Reads <run>/patch_distribution.json (written by the top-level patch_distribution.py, which draws the
same figure through `plot_patch_distribution`): counts / num_images per position, one panel per rho
below 1 (at rho = 1 every image keeps every position; the original's figure left that entry out too),
one row per run, one colour scale from 0 to 1 for all panels. `counts` is read in the original's form,
one flat row-major list per drop ratio, and in this project's earlier form, one [grid_h][grid_w] grid.
Under each panel: the fraction at the centre and at the corners (the paper: magnitude selection at
rho 0.6 keeps a centre position for about 66% of images, a corner for about 54%).
"""
import os
import sys

import numpy as np

# Run as `python viz/patch_distribution.py`: put the repo root on the path so `viz.common` imports.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from matplotlib.figure import Figure  # noqa: E402

from viz.common import (PATCH_DISTRIBUTION, VizInputError, check_out_path, keep_ratio,  # noqa: E402
                        make_parser, read_json, run_cli, run_labels, save_figure)

REQUIRED_KEYS = ('drop_ratios', 'counts', 'grid_shape', 'num_images')


def kept_fractions(data, source='patch_distribution data'):
    """(drop_ratios (R,), fractions (R, grid_h, grid_w)) from patch_distribution.json's contents, checked."""
    for key in REQUIRED_KEYS:
        if key not in data:
            raise VizInputError(f"{source}: missing field '{key}'")
    try:
        drop_ratios = np.asarray(data['drop_ratios'], dtype=float)
        counts = np.asarray(data['counts'], dtype=float)
        grid_shape = tuple(int(n) for n in data['grid_shape'])
    except (TypeError, ValueError):
        raise VizInputError(f"{source}: 'drop_ratios', 'counts' and 'grid_shape' must be (nested) lists of "
                            f"numbers, 'counts' one list of grid_h * grid_w per drop ratio") from None
    num_images = data['num_images']
    if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)) or num_images < 1:
        raise VizInputError(f"{source}: 'num_images' is {num_images!r}; expected a positive integer")
    if drop_ratios.ndim != 1 or len(drop_ratios) == 0:
        raise VizInputError(f"{source}: 'drop_ratios' must be a non-empty list")
    if len(grid_shape) == 2 and counts.shape == (len(drop_ratios), grid_shape[0] * grid_shape[1]):
        counts = counts.reshape(len(drop_ratios), *grid_shape)  # the flat row-major form (the original's)
    if counts.shape != (len(drop_ratios), *grid_shape):
        raise VizInputError(f"{source}: 'counts' has shape {list(counts.shape)}; expected "
                            f"[{len(drop_ratios)} drop ratios, grid_h * grid_w] for grid_shape {list(grid_shape)}")
    if counts.min() < 0 or counts.max() > num_images:
        raise VizInputError(f"{source}: 'counts' must lie in [0, num_images = {num_images}]")
    return drop_ratios, counts / num_images


def centre_and_corners(fractions):
    """Mean fraction at the centre (the middle cell, or 2 x 2 block for an even side) and at the 4 corners."""
    h, w = fractions.shape
    centre = fractions[(h - 1) // 2:h // 2 + 1, (w - 1) // 2:w // 2 + 1]
    corners = fractions[[0, 0, -1, -1], [0, -1, 0, -1]]
    return float(centre.mean()), float(corners.mean())


def _informative(drop_ratios, fractions):
    """The panels worth drawing: those below rho = 1, where every image keeps every position (all of
    them if there is nothing else)."""
    shown = keep_ratio(drop_ratios) < 1
    return (drop_ratios[shown], fractions[shown]) if shown.any() else (drop_ratios, fractions)


def plot_patch_distribution(data, out_path=None, labels=None, source='patch_distribution data'):
    """Draw patch_distribution.json's contents: one dict (one row), or a list of them (one row each,
    named by `labels`). Returns the Figure."""
    datasets = [data] if isinstance(data, dict) else list(data)
    if not datasets:
        raise VizInputError('no patch distributions to draw')
    if labels is not None and len(labels) != len(datasets):
        raise VizInputError(f'got {len(labels)} labels for {len(datasets)} patch distributions')
    rows = [_informative(*kept_fractions(d, source)) for d in datasets]
    num_cols = max(len(drop_ratios) for drop_ratios, _ in rows)
    fig = Figure(figsize=(2.2 * num_cols + 1.0, 2.4 * len(rows) + 0.4), layout='constrained')
    axes = fig.subplots(len(rows), num_cols, squeeze=False)
    image = None
    for i, (drop_ratios, fractions) in enumerate(rows):
        for j, ax in enumerate(axes[i]):
            if j >= len(drop_ratios):
                ax.set_axis_off()
                continue
            image = ax.imshow(fractions[j], vmin=0.0, vmax=1.0, cmap='viridis', interpolation='nearest')
            centre, corners = centre_and_corners(fractions[j])
            ax.set_title(f'ρ = {keep_ratio(drop_ratios[j]):.1f}', fontsize=10)
            ax.set_xlabel(f'centre {centre:.0%}, corners {corners:.0%}', fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0 and labels is not None:
                ax.set_ylabel(labels[i])
    fig.colorbar(image, ax=axes, shrink=0.8, label='fraction of images that kept the position')
    if out_path:
        save_figure(fig, out_path)
    return fig


def main(argv=None):
    parser = make_parser(__doc__)
    args = parser.parse_args(argv)
    check_out_path(args.out)
    labels = run_labels(args.runs, args.labels)
    paths = [os.path.join(run, PATCH_DISTRIBUTION) for run in args.runs]
    datasets = [read_json(path, REQUIRED_KEYS) for path in paths]
    for path, d in zip(paths, datasets):
        kept_fractions(d, path)  # check each file now, so an error names it
    fig = plot_patch_distribution(datasets, args.out, labels if len(args.runs) > 1 or args.labels else None)
    print(f'wrote {args.out}')
    return fig


if __name__ == '__main__':
    sys.exit(run_cli(main))
