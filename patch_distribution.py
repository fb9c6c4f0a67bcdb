"""How often each patch position is kept over the whole validation set, at each drop ratio.

    python patch_distribution.py --cfg configs/vit-b/magnitude_cyclic_80_0.yaml --data-path <imagenet> \\
        --pretrained output/pss/simmim/vit-b/magnitude_cyclic_80_0/checkpoint.pth --output output
    torchrun --nproc_per_node 4 patch_distribution.py ...   # the same counts, 4 processes share the images
    python patch_distribution.py ... --drop-ratios 0.4

Flags are main_finetune.py's plus --drop-ratios (as sweep_drop.py; --pretrained or --resume names
the checkpoint). Default drop ratios: the original script's 0.0, 0.2, 0.4, 0.6, 0.8 (rho 1.0 to 0.2;
at 0.0 every image keeps every position, and the figures leave that panel out, as the original's did).

Writes to <output>/<MODEL.NAME>/<TAG>/:
  patch_distribution.json  drop_ratios      [R] the drop ratios (rho = 1 - drop ratio)
                           counts           [R][grid_h * grid_w], per ratio one flat row-major list
                                            (as the original): images that kept each patch position
                           grid_shape       [grid_h, grid_w], the shape of each ratio's list
                           num_images       validation images counted
                           num_kept_tokens  [R] tokens kept per image, CLS included, so each ratio's
                                            counts sum to num_images * (num_kept_tokens - 1)
  patch_distribution.png / .pdf  a heat map per rho of counts / num_images (viz/patch_distribution.py,
                           which also compares runs: python viz/patch_distribution.py --runs A B --out f.png)

Counts are summed over processes (every image is seen by exactly one), so any number of processes
gives the same counts. One pass over the data serves every ratio. Selection runs in fp32 (no
autocast), as the reference for what the model keeps; with random selection the counts are draws
that depend on the seed and the number of processes.
"""
import json
import os
import sys

import torch

from data import build_val_loader
from launch import run_script
from logger import create_logger
from experiments import (build_model_from_checkpoint, check_drop_ratios, check_output_folder, checkpoint_path,
                         get_parser)
from utils import all_reduce_sum, init_distributed_mode, write_atomically
from viz.common import save_figure
from viz.patch_distribution import centre_and_corners, plot_patch_distribution

DISTRIBUTION_DROP_RATIOS = (0.0, 0.2, 0.4, 0.6, 0.8)  # the original script's
OUTPUT_FILE = 'patch_distribution.json'
FIGURE_FILES = ('patch_distribution.png', 'patch_distribution.pdf')


@torch.no_grad()
def count_kept_positions(model, data_loader, drop_ratios, device):
    """(counts [R, num_patches] int64, images) over this process's share of `data_loader`:
    counts[r, p] = images whose kept tokens at drop_ratios[r] include patch p (row-major)."""
    num_patches = model.num_tokens - 1
    counts = torch.zeros(len(drop_ratios), num_patches, dtype=torch.int64, device=device)
    num_images = 0
    for images, _ in data_loader:
        images = images.to(device, non_blocking=True)
        num_images += images.shape[0]
        for r, drop_ratio in enumerate(drop_ratios):
            model.set_patch_drop_ratio(drop_ratio)
            patches = model.get_kept_token_indices(images)[:, 1:] - 1  # [B, K-1], CLS left out
            counts[r] += torch.bincount(patches.flatten(), minlength=num_patches)
    model.set_patch_drop_ratio(0.0)
    return counts, num_images


def main(config, args, on_exit):
    rank, world_size, _, device = init_distributed_mode()
    logger = create_logger(None, rank, name=config.MODEL.NAME)
    path = checkpoint_path(config)
    check_output_folder(config)
    dataset_val, loader_val = build_val_loader(config)
    model = build_model_from_checkpoint(path, config, len(dataset_val.classes), device)
    check_drop_ratios(model, args.drop_ratios)
    logger.info(f"counting the patches '{path}' keeps ({config.TRAIN.PATCH_DROP_FUNC} selection) on "
                f'{len(dataset_val)} validation images, {world_size} process(es), drop ratios {args.drop_ratios}')

    torch.manual_seed(config.SEED + rank)  # only random selection draws
    counts, num_images = count_kept_positions(model, loader_val, args.drop_ratios, device)
    all_reduce_sum(counts)
    num_images = int(all_reduce_sum(torch.tensor([num_images], dtype=torch.int64, device=device)).item())
    if rank != 0:
        return 0

    grid_h, grid_w = model.patch_embed.grid_size
    data = {
        'drop_ratios': list(args.drop_ratios),
        'counts': counts.tolist(),  # [R, grid_h * grid_w]: position p is row p // grid_w, column p % grid_w
        'grid_shape': [grid_h, grid_w],
        'num_images': num_images,
        'num_kept_tokens': [model.num_kept_tokens(d) for d in args.drop_ratios],
    }
    os.makedirs(config.OUTPUT, exist_ok=True)
    out_path = os.path.join(config.OUTPUT, OUTPUT_FILE)
    write_atomically(out_path, json.dumps(data))
    figure = plot_patch_distribution(data, source=out_path)
    for name in FIGURE_FILES:
        save_figure(figure, os.path.join(config.OUTPUT, name))
    fractions = counts.reshape(-1, grid_h, grid_w).double().cpu().numpy() / num_images
    for drop_ratio, grid in zip(args.drop_ratios, fractions):
        centre, corners = centre_and_corners(grid)
        logger.info(f'drop {drop_ratio:.2f} (rho {1 - drop_ratio:.2f}): positions kept for {grid.min():.0%} to '
                    f'{grid.max():.0%} of the images; centre {centre:.0%}, corners {corners:.0%}')
    logger.info(f"wrote {out_path} and {', '.join(FIGURE_FILES)} in {config.OUTPUT}")
    return 0


def run(argv=None):
    return run_script(get_parser(__doc__, DISTRIBUTION_DROP_RATIOS), main, argv)


if __name__ == '__main__':
    sys.exit(run())
