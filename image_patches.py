"""Which patches a checkpoint keeps on a few validation images at several drop ratios, and its predictions.

    python image_patches.py --cfg configs/vit-b/magnitude_cyclic_80_0.yaml --data-path <imagenet> \\
        --pretrained output/pss/simmim/vit-b/magnitude_cyclic_80_0/checkpoint.pth --output output
    python image_patches.py ... --images 0 5000 10000 --drop-ratios 0.0 0.4 0.8
    torchrun --nproc_per_node 4 image_patches.py ...     # accepted: rank 0 does the work, the others exit

Flags are main_finetune.py's plus --images and --drop-ratios (as sweep_drop.py; --pretrained or
--resume names the checkpoint to evaluate). Default images: 8 indices spaced evenly over the
validation set, which ImageFolder sorts by class, so they come from classes spread over the label
range. Default drop ratios: 0.0, 0.2, 0.4, 0.6, 0.8.

Writes to <output>/<MODEL.NAME>/<TAG>/:
  image_patches.json  drop_ratios    [R] the drop ratios (rho = 1 - drop ratio)
                      image_indices  [B] the validation images used
                      images         [B][C][H][W] the normalised input tensors (4 decimals)
                      targets        [B] their class indices
                      kept_patches   per ratio a pair [batch_indices, token_indices], one entry per
                                     kept token in the model's order (token 0 = CLS, token t = patch
                                     t - 1 of the row-major grid)
                      logits         per ratio [B][num_classes]
                      class_to_idx   {class folder: index}
                      patch_size     pixels per patch side
  image_patches.png / .pdf  one row per image, one column per rho: dropped patches faded, kept ones
                      outlined, prediction and confidence under each panel (viz/image_patches.py,
                      which redraws it from the JSON: python viz/image_patches.py --runs <folder> --out f.png)

Kept patches and logits are computed in fp32 (no autocast), so the recorded patches are exactly
those the forward pass used; random selection is re-seeded with SEED before each, the same draw.
"""
import json
import os
import sys

import torch

from config import ConfigError
from data import build_dataset
from launch import run_script
from logger import create_logger
from experiments import (build_model_from_checkpoint, check_drop_ratios, check_output_folder, checkpoint_path,
                         get_parser)
from utils import write_atomically
from viz.common import save_figure
from viz.image_patches import plot_image_patches

IMAGE_DROP_RATIOS = (0.0, 0.2, 0.4, 0.6, 0.8)
NUM_DEFAULT_IMAGES = 8
OUTPUT_FILE = 'image_patches.json'
FIGURE_FILES = ('image_patches.png', 'image_patches.pdf')


def default_image_indices(num_images, count=NUM_DEFAULT_IMAGES):
    """`count` indices spaced evenly over [0, num_images), first and last included (all when fewer)."""
    if num_images <= count:
        return list(range(num_images))
    return [round(i * (num_images - 1) / (count - 1)) for i in range(count)]


@torch.no_grad()
def record_kept_patches(model, images, drop_ratios, seed=0):
    """For each drop ratio: (kept token indices [B, K], logits [B, classes]) of `model` on images [B, C, H, W].

    Both come from the same draw of the selection: the RNG is reset to `seed` before each call, so
    random selection keeps the same patches in get_kept_token_indices and in the forward pass.
    """
    results = []
    for drop_ratio in drop_ratios:
        model.set_patch_drop_ratio(drop_ratio)
        torch.manual_seed(seed)
        kept = model.get_kept_token_indices(images)
        torch.manual_seed(seed)
        logits = model(images)
        results.append((kept, logits.float()))
    model.set_patch_drop_ratio(0.0)
    return results


def kept_pairs(kept):
    """Kept indices [B, K] -> [batch_indices, token_indices], two lists of B * K ints."""
    batch = torch.arange(kept.shape[0], device=kept.device)[:, None].expand_as(kept)
    return [batch.flatten().tolist(), kept.flatten().tolist()]


def main(config, args, on_exit):
    # One process is plenty for a handful of images. Under a launcher the other ranks leave at
    # once, without joining a process group (nothing here is collective).
    if int(os.environ.get('RANK', '0')) != 0:
        return 0
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    device = torch.device('cuda', local_rank) if torch.cuda.is_available() else torch.device('cpu')
    logger = create_logger(None, 0, name=config.MODEL.NAME)

    path = checkpoint_path(config)
    check_output_folder(config)
    dataset_val = build_dataset(is_train=False, config=config)
    indices = args.images if args.images is not None else default_image_indices(len(dataset_val))
    bad = [i for i in indices if not 0 <= i < len(dataset_val)]
    if bad or not indices:
        raise ConfigError(f'--images: {bad or "no indices"}; the validation set has {len(dataset_val)} images, '
                          f'indices 0 to {len(dataset_val) - 1}')
    model = build_model_from_checkpoint(path, config, len(dataset_val.classes), device)
    check_drop_ratios(model, args.drop_ratios)

    samples = [dataset_val[i] for i in indices]
    images = torch.stack([image for image, _ in samples]).to(device)  # [B, C, H, W]
    results = record_kept_patches(model, images, args.drop_ratios, seed=config.SEED)
    data = {
        'drop_ratios': list(args.drop_ratios),
        'image_indices': list(indices),
        # 4 decimals: finer than one 8-bit pixel step (1/255/std > 0.015), and a third of the file size
        'images': ((images.double() * 1e4).round() / 1e4).tolist(),
        'targets': [int(target) for _, target in samples],
        'kept_patches': [kept_pairs(kept) for kept, _ in results],
        'logits': [logits.tolist() for _, logits in results],
        'class_to_idx': dict(dataset_val.class_to_idx),
        'patch_size': config.MODEL.VIT.PATCH_SIZE,
    }

    os.makedirs(config.OUTPUT, exist_ok=True)
    out_path = os.path.join(config.OUTPUT, OUTPUT_FILE)
    write_atomically(out_path, json.dumps(data, separators=(',', ':')))  # compact: the images are 1e6 numbers
    figure = plot_image_patches(data, source=out_path)
    for name in FIGURE_FILES:
        save_figure(figure, os.path.join(config.OUTPUT, name))
    for drop_ratio, (kept, logits) in zip(args.drop_ratios, results):
        correct = (logits.argmax(dim=1).cpu() == torch.tensor(data['targets'])).sum().item()
        logger.info(f'drop {drop_ratio:.2f} (rho {1 - drop_ratio:.2f}): {kept.shape[1]} tokens kept, '
                    f'{correct}/{len(indices)} images right')
    logger.info(f"'{path}': wrote {out_path} and {', '.join(FIGURE_FILES)} in {config.OUTPUT}")
    return 0


def run(argv=None):
    parser = get_parser(__doc__, IMAGE_DROP_RATIOS)
    parser.add_argument('--images', type=int, nargs='+', metavar='I',
                        help=f'validation image indices (default: {NUM_DEFAULT_IMAGES} spread over the set)')
    return run_script(parser, main, argv)


if __name__ == '__main__':
    sys.exit(run())
