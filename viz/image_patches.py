"""Which patches a model keeps: one row per image, one column per rho.

    python viz/image_patches.py --runs output/pss/cyclic --out patches.png [--max-images 4]

Reads <run>/image_patches.json (written by the top-level image_patches.py, which draws the same
figure through `plot_image_patches`). Each panel shows the image with its dropped patches faded
toward white and a thin outline around every kept patch; under it the predicted class and its softmax
confidence (green when right, red when wrong); rho as the column title and the true class at the left.
"""
import os
import sys

import numpy as np

# Run as `python viz/image_patches.py`: put the repo root on the path so `viz.common` imports.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from viz.common import (IMAGE_PATCHES, VizInputError, check_out_path, keep_ratio, make_parser,  # noqa: E402
                        read_json, run_cli, run_labels, save_figure)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FADE = 0.75  # a dropped patch is drawn 75% of the way to white
REQUIRED_KEYS = ('drop_ratios', 'images', 'targets', 'kept_patches', 'logits', 'patch_size')


def _array(value, dtype, name, source):
    try:
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError):
        raise VizInputError(f"{source}: '{name}' is not a rectangular array of numbers") from None


def kept_patch_masks(kept_patches, num_images, grid_shape, source='image_patches data'):
    """Boolean (R, B, grid_h, grid_w) masks from R pairs [batch_indices, token_indices] (token 0 = CLS,
    token t >= 1 = patch t - 1 in row-major order)."""
    grid_h, grid_w = grid_shape
    masks = np.zeros((len(kept_patches), num_images, grid_h * grid_w), dtype=bool)
    for r, entry in enumerate(kept_patches):
        name = f'kept_patches[{r}]'
        if len(entry) != 2:
            raise VizInputError(f"{source}: '{name}' must be a pair [batch_indices, token_indices]")
        batch = _array(entry[0], np.int64, name, source)
        token = _array(entry[1], np.int64, name, source)
        if batch.ndim != 1 or batch.shape != token.shape:
            raise VizInputError(f"{source}: '{name}' has {batch.size} batch indices and {token.size} token "
                                f"indices; they must be equal-length lists")
        if batch.size and (batch.min() < 0 or batch.max() >= num_images):
            raise VizInputError(f"{source}: '{name}' has batch indices outside [0, {num_images})")
        if token.size and (token.min() < 0 or token.max() > grid_h * grid_w):
            raise VizInputError(f"{source}: '{name}' has token indices outside [0, {grid_h * grid_w}] "
                                f"(CLS and {grid_h} x {grid_w} patches)")
        patch = token > 0  # CLS is always kept and has no position in the image
        masks[r, batch[patch], token[patch] - 1] = True
    return masks.reshape(len(kept_patches), num_images, grid_h, grid_w)


def check_image_patches(data, source='image_patches data'):
    """The contents of image_patches.json as arrays, checked against each other:
    {'drop_ratios' (R,), 'images' (B, H, W, 3) in [0, 1], 'targets' (B,), 'probabilities' (R, B, classes),
    'masks' (R, B, grid_h, grid_w), 'class_names' {index: name}, 'patch_size'}."""
    for key in REQUIRED_KEYS:
        if key not in data:
            raise VizInputError(f"{source}: missing field '{key}'")
    drop_ratios = _array(data['drop_ratios'], float, 'drop_ratios', source)
    images = _array(data['images'], np.float32, 'images', source)
    targets = _array(data['targets'], np.int64, 'targets', source)
    logits = _array(data['logits'], np.float64, 'logits', source)
    patch_size = data['patch_size']
    if not isinstance(patch_size, (int, np.integer)):
        raise VizInputError(f"{source}: 'patch_size' is {patch_size!r}, not an integer")
    if images.ndim != 4 or images.shape[1] != 3 or len(images) == 0:
        raise VizInputError(f"{source}: 'images' must be a non-empty list of [3][H][W] images, "
                            f"got shape {images.shape}")
    num_images, _, height, width = images.shape
    if drop_ratios.ndim != 1 or len(drop_ratios) == 0:
        raise VizInputError(f"{source}: 'drop_ratios' must be a non-empty list")
    if patch_size < 1 or height % patch_size or width % patch_size:
        raise VizInputError(f"{source}: images of {height} x {width} do not split into patches of {patch_size}")
    if targets.shape != (num_images,):
        raise VizInputError(f"{source}: 'targets' has {targets.size} entries for {num_images} images")
    if len(data['kept_patches']) != len(drop_ratios):
        raise VizInputError(f"{source}: 'kept_patches' has {len(data['kept_patches'])} entries for "
                            f"{len(drop_ratios)} drop ratios")
    if logits.ndim != 3 or logits.shape[:2] != (len(drop_ratios), num_images):
        raise VizInputError(f"{source}: 'logits' has shape {logits.shape}; expected "
                            f"[{len(drop_ratios)} drop ratios][{num_images} images][classes]")

    # (B, 3, H, W) normalised -> (B, H, W, 3) in [0, 1]
    pixels = images.transpose(0, 2, 3, 1) * np.asarray(IMAGENET_STD, np.float32) + np.asarray(IMAGENET_MEAN,
                                                                                                np.float32)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    class_to_idx = data.get('class_to_idx', {})  # without it, classes are shown by index
    if not isinstance(class_to_idx, dict) or not all(isinstance(i, int) for i in class_to_idx.values()):
        raise VizInputError(f"{source}: 'class_to_idx' must map class names to integer indices")
    class_names = {index: str(name) for name, index in class_to_idx.items()}
    return {
        'drop_ratios': drop_ratios,
        'images': np.clip(pixels, 0.0, 1.0),
        'targets': targets,
        'probabilities': shifted / shifted.sum(axis=-1, keepdims=True),
        'masks': kept_patch_masks(data['kept_patches'], num_images, (height // patch_size, width // patch_size),
                                  source),
        'class_names': class_names,
        'patch_size': patch_size,
    }


def render_panel(image, mask, patch_size, fade=FADE):
    """(H, W, 3) image in [0, 1] with the patches where `mask` (grid_h, grid_w) is False faded to white."""
    pixel_mask = np.repeat(np.repeat(mask, patch_size, axis=0), patch_size, axis=1)[..., None]
    return np.where(pixel_mask, image, image * (1 - fade) + fade)


def kept_patch_outlines(mask, patch_size):
    """Line segments (n, 2, 2) in imshow pixel coordinates around every kept patch, shared edges once."""
    rows, cols = np.nonzero(mask)
    x0, y0 = cols * patch_size - 0.5, rows * patch_size - 0.5  # pixel centres are integers
    x1, y1 = x0 + patch_size, y0 + patch_size
    segments = np.concatenate([np.stack([x0, y0, x1, y0], 1), np.stack([x0, y1, x1, y1], 1),
                               np.stack([x0, y0, x0, y1], 1), np.stack([x1, y0, x1, y1], 1)])
    return np.unique(segments, axis=0).reshape(-1, 2, 2)


def _short(name, length=18):
    return name if len(name) <= length else name[:length - 1] + '…'


def plot_image_patches(data, out_path=None, max_images=None, title=None, source='image_patches data'):
    """Draw image_patches.json's contents (the dict, or lists/arrays alike): rows = images, columns = rho.

    Returns the Figure; writes it to out_path (.png, .pdf or .svg) when given.
    """
    d = check_image_patches(data, source)
    num_images = len(d['images']) if max_images is None else min(max_images, len(d['images']))
    num_ratios = len(d['drop_ratios'])
    names = d['class_names']
    fig = Figure(figsize=(1.9 * num_ratios + 0.5, 2.1 * num_images + 0.3), layout='constrained')
    axes = fig.subplots(num_images, num_ratios, squeeze=False)
    if title:
        fig.suptitle(title)
    for b in range(num_images):
        target = int(d['targets'][b])
        for r, rho in enumerate(keep_ratio(d['drop_ratios'])):
            ax = axes[b, r]
            mask = d['masks'][r, b]
            ax.imshow(render_panel(d['images'][b], mask, d['patch_size']), interpolation='nearest')
            ax.add_collection(LineCollection(kept_patch_outlines(mask, d['patch_size']), colors='black',
                                             linewidths=0.4))
            prediction = int(np.argmax(d['probabilities'][r, b]))
            confidence = d['probabilities'][r, b, prediction]
            ax.set_xlabel(f'{_short(names.get(prediction, str(prediction)))} {confidence:.0%}', fontsize=8,
                          color='tab:green' if prediction == target else 'tab:red')
            ax.set_xticks([])
            ax.set_yticks([])
            if b == 0:
                ax.set_title(f'ρ = {rho:.1f}', fontsize=10)
            if r == 0:
                ax.set_ylabel(_short(names.get(target, str(target))), fontsize=8)
    if out_path:
        save_figure(fig, out_path)
    return fig


def main(argv=None):
    parser = make_parser(__doc__)
    parser.add_argument('--max-images', type=int, metavar='N', help='draw only the first N images')
    args = parser.parse_args(argv)
    check_out_path(args.out)
    if len(args.runs) != 1:
        raise VizInputError(f'image_patches.py draws one run; got {len(args.runs)} (--runs DIR)')
    title = args.labels and run_labels(args.runs, args.labels)[0]  # a label given becomes the title
    if args.max_images is not None and args.max_images < 1:
        raise VizInputError(f'--max-images must be at least 1, got {args.max_images}')
    path = os.path.join(args.runs[0], IMAGE_PATCHES)
    fig = plot_image_patches(read_json(path, REQUIRED_KEYS), args.out, args.max_images, title, source=path)
    print(f'wrote {args.out}')
    return fig


if __name__ == '__main__':
    sys.exit(run_cli(main))
