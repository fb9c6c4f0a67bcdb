"""SimMIM pre-training data: random block masks, SimMIM's transform and the pre-training loader.

    mask = MaskGenerator(input_size=224, mask_patch_size=32, model_patch_size=16, mask_ratio=0.6)()
    dataset, data_loader = build_pretrain_loader(config)   # batches of (images, masks)

The mask is drawn on a grid of (input_size / mask_patch_size)^2 blocks: ceil(blocks * mask_ratio) of
them, chosen uniformly at random, are masked (1), and the grid is upsampled to the model's patch
grid (each block covers (mask_patch_size / model_patch_size)^2 patches). At SimMIM's ViT-B setting
that is 30 of 49 blocks of 2x2 patches each.

The pre-training images are the training split of DATA.DATASET (labels unused): DATA_PATH/train
when it exists (our layout; the digits and Fashion-MNIST exports), else DATA_PATH itself as one
ImageFolder (SimMIM's `--data-path <imagenet>/train`). As for fine-tuning, the batch order depends
only on (SEED, epoch) and each image's crop, flip and mask on (SEED, epoch, index) (data/seeding.py),
so a resumed run sees exactly the batches of an uninterrupted one.
"""
import logging
import math
import os

import numpy as np
import torch
import quiet_timm  # noqa: F401  (before timm, which warns at import)
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from utils import get_rank, get_world_size

from .build import _check_iterations, _loader_kwargs, dataset_root
from .folder import DataError, image_folder
from .samplers import ResumableDistributedSampler
from .seeding import SeededDataset

logger = logging.getLogger(__name__)

CROP_SCALE = (0.67, 1.0)  # SimMIM's random-resized-crop area range
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)  # and aspect-ratio range


class MaskGenerator:
    """Random block masks: calling it returns a uint8 tensor [h, w] on the model's patch grid
    (h = w = input_size / model_patch_size), 1 where the patch is masked. Randomness from NumPy's
    global RNG, which SeededDataset seeds per (SEED, epoch, index)."""

    def __init__(self, input_size=224, mask_patch_size=32, model_patch_size=16, mask_ratio=0.6):
        if input_size % mask_patch_size or mask_patch_size % model_patch_size:
            raise ValueError(f'the mask patch size {mask_patch_size} must divide the image size {input_size} '
                             f'and be a multiple of the model patch size {model_patch_size}')
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f'the mask ratio {mask_ratio} must lie strictly between 0 and 1')
        self.blocks_per_side = input_size // mask_patch_size
        self.patches_per_block = mask_patch_size // model_patch_size  # per side
        self.num_blocks = self.blocks_per_side ** 2
        self.num_masked = math.ceil(self.num_blocks * mask_ratio)

    def __call__(self):
        masked = np.random.permutation(self.num_blocks)[:self.num_masked]
        blocks = torch.zeros(self.num_blocks, dtype=torch.uint8)
        blocks[torch.from_numpy(masked)] = 1
        blocks = blocks.view(self.blocks_per_side, self.blocks_per_side)
        s = self.patches_per_block
        return blocks.repeat_interleave(s, 0).repeat_interleave(s, 1)  # [h, w]


class SimMIMTransform:
    """PIL image -> (image [3, H, W] normalised, mask [h, w]): SimMIM's random resized crop (area
    0.67 to 1, aspect 3/4 to 4/3, bilinear), a horizontal flip with probability AUG.HFLIP (SimMIM:
    always 0.5, our default), ImageNet normalisation, and a fresh MaskGenerator mask."""

    def __init__(self, config):
        self.transform = transforms.Compose([
            transforms.RandomResizedCrop(config.DATA.IMG_SIZE, scale=CROP_SCALE, ratio=CROP_RATIO),
            transforms.RandomHorizontalFlip(config.AUG.HFLIP),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
        ])
        self.mask_generator = MaskGenerator(config.DATA.IMG_SIZE, config.DATA.MASK_PATCH_SIZE,
                                            config.MODEL.VIT.PATCH_SIZE, config.DATA.MASK_RATIO)

    def __call__(self, img):
        return self.transform(img), self.mask_generator()


class MaskedImages(Dataset):
    """An ImageFolder with SimMIMTransform, without its labels: item i is (image, mask)."""

    def __init__(self, folder):
        self.folder = folder

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, index):
        (image, mask), _ = self.folder[index]
        return image, mask


def pretrain_image_folder(root):
    """The folder of pre-training images: root/train when it exists, else root itself."""
    train_dir = os.path.join(root, 'train')
    return train_dir if os.path.isdir(train_dir) else root


def build_pretrain_loader(config):
    """(dataset, data_loader) for SimMIM pre-training; the loader yields (images [B, 3, H, W],
    masks [B, h, w] uint8). Raises DataError for the same bad inputs as build_loader."""
    if config.DATA.LOADER != 'torch':
        raise DataError(f"DATA.LOADER '{config.DATA.LOADER}' is for fine-tuning; SimMIM pre-training reads its images "
                        "with the default loader: set DATA.LOADER torch")
    root = dataset_root(config, training=False)  # no Mixup in pre-training: any batch size
    dataset = image_folder(pretrain_image_folder(root), SimMIMTransform(config), config.DATA.SKIP_BAD_IMAGES,
                           config.DATA.TRAIN_SUBSET)
    logger.info('pre-training: %d images from %s', len(dataset), dataset.root)
    world_size, rank = get_world_size(), get_rank()
    _check_iterations(dataset, config.DATA.BATCH_SIZE, world_size)
    sampler = ResumableDistributedSampler(dataset, batch_size=config.DATA.BATCH_SIZE, num_replicas=world_size,
                                          rank=rank, seed=config.SEED)
    # As build_loader's training loader: seeded per sample, a private generator, fresh workers per epoch.
    kwargs = dict(_loader_kwargs(config), persistent_workers=False)
    data_loader = DataLoader(SeededDataset(MaskedImages(dataset), config.SEED), sampler=sampler, drop_last=True,
                             generator=torch.Generator(), **kwargs)
    return dataset, data_loader
