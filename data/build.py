"""Datasets, transforms, loaders and Mixup/CutMix from a config (see data/__init__.py)."""
import logging
import math
import os
import re

import torch
from PIL import Image, ImageOps
import quiet_timm  # noqa: F401  (before timm, which warns at import)
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Mixup, create_transform
from timm.data.auto_augment import AugmentOp
from timm.data.transforms import str_to_interp_mode
from torch.utils.data import DataLoader
from torchvision import transforms

from utils import get_rank, get_world_size

from . import dali
from .digits import export_digits
from .fashion_mnist import export_fashion_mnist, has_idx_files
from .folder import DataError, check_same_classes, image_folder, split_dir
from .samplers import ExactDistributedSampler, RepeatedAugmentationSampler, ResumableDistributedSampler
from .seeding import SeededDataset

logger = logging.getLogger(__name__)

DATASETS = ('imagenet', 'digits', 'fashion_mnist')
INTERPOLATIONS = ('bicubic', 'bilinear', 'nearest', 'random')
# The datasets exported once into an ImageFolder: what a DATA.DATA_PATH lacks that is none of theirs,
# and how to read them instead
EXPORTED_DATASETS = {
    'digits': ('no digits export (digits_<IMG_SIZE>/)', 'for the digits, leave --data-path unset'),
    'fashion_mnist': ('neither the Fashion-MNIST IDX files nor their export (fashion_mnist_<IMG_SIZE>/)',
                      'for Fashion-MNIST, leave --data-path unset or give the folder of its IDX files'),
}
DEFAULT_CACHE_ROOT = os.path.join('~', '.cache', 'pss')  # digits / fashion_mnist export when DATA.DATA_PATH is empty


def _mixup_enabled(config):
    aug = config.AUG
    return aug.MIXUP > 0 or aug.CUTMIX > 0 or aug.CUTMIX_MINMAX is not None


def _check_settings(config, training=True):
    """Data settings that can be checked without touching the disk (Mixup's only when training)."""
    if config.DATA.DATASET not in DATASETS:
        raise DataError(f"DATA.DATASET '{config.DATA.DATASET}' is not known; valid values: {', '.join(DATASETS)}")
    if config.DATA.INTERPOLATION not in INTERPOLATIONS:
        raise DataError(f"DATA.INTERPOLATION '{config.DATA.INTERPOLATION}' is not known; "
                        f"valid values: {', '.join(INTERPOLATIONS)}")
    if config.DATA.LOADER not in dali.LOADERS:
        raise DataError(f"DATA.LOADER '{config.DATA.LOADER}' is not known; valid values: {', '.join(dali.LOADERS)}")
    if config.DATA.LOADER == 'dali':  # before any image is read: what DALI is missing or cannot do
        dali.import_dali()
        dali.settings_from_config(config)
    if training and _mixup_enabled(config) and config.DATA.BATCH_SIZE % 2:
        raise DataError(f'DATA.BATCH_SIZE {config.DATA.BATCH_SIZE} is odd, but Mixup/CutMix (AUG.MIXUP, '
                        f'AUG.CUTMIX, AUG.CUTMIX_MINMAX) mixes pairs of samples and needs an even batch size')


def _holds_export(folder, dataset):
    # an export another process is writing (data/export.py's temporary folder) counts: it is about to be one
    pattern = re.compile(rf'\.?{dataset}_\d+(\.tmp\..*)?')
    return any(entry.is_dir() and pattern.fullmatch(entry.name) for entry in os.scandir(folder))


def _check_export_folder(data_path, dataset):
    """The digits and Fashion-MNIST read DATA.DATA_PATH as the folder of their export (Fashion-MNIST: or
    of its IDX files): one that holds neither is most likely the user's own images, which these
    datasets would ignore, writing an export into it instead. A path that does not exist yet, or an empty
    folder, holds nothing of the user's: the export goes there."""
    if not os.path.exists(data_path) or (os.path.isdir(data_path) and not os.listdir(data_path)):
        return
    if os.path.isdir(data_path):
        if _holds_export(data_path, dataset):
            return
        if dataset == 'fashion_mnist' and has_idx_files(data_path):
            return
    lacks, instead = EXPORTED_DATASETS[dataset]
    found = 'is not a folder' if not os.path.isdir(data_path) else f'holds {lacks}'
    raise DataError(f"DATA.DATASET is '{dataset}', but the data path '{data_path}' {found}: to train on the "
                    'images of an ImageFolder root (train/ and val/), set DATA.DATASET imagenet (--opts '
                    f'DATA.DATASET imagenet); {instead}')


def dataset_root(config, training=True):
    """The folder holding train/ and val/: DATA.DATA_PATH, or the exported digits / Fashion-MNIST.
    `training` False: for evaluation only, so a Mixup setting does not restrict the batch size."""
    _check_settings(config, training)
    data_path = config.DATA.DATA_PATH
    if data_path and config.DATA.DATASET in EXPORTED_DATASETS:
        _check_export_folder(data_path, config.DATA.DATASET)
    if config.DATA.DATASET == 'digits':
        return export_digits(data_path or os.path.expanduser(DEFAULT_CACHE_ROOT), config.DATA.IMG_SIZE)
    if config.DATA.DATASET == 'fashion_mnist':
        return export_fashion_mnist(data_path, config.DATA.IMG_SIZE, os.path.expanduser(DEFAULT_CACHE_ROOT))
    if not data_path:
        raise DataError('DATA.DATA_PATH is not set: pass --data-path <folder with train/ and val/>')
    if not os.path.exists(data_path):
        raise DataError(f"data path '{data_path}' does not exist")
    if not os.path.isdir(data_path):
        raise DataError(f"data path '{data_path}' is not a folder")
    return data_path


def _posterize_any_bits(img, bits_to_keep, **_):
    """timm's posterize op, also for 0 bits. Pillow 13 rejects bits < 1, but timm's increasing
    posterize asks for 0 bits at magnitude 10, which the default policy 'rand-m9-mstd0.5-inc1' reaches
    within a few ImageNet batches (its noisy magnitude is clipped at 10); keeping no bits gives a
    black image, as it did with older Pillow."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _fix_posterize(transform):
    """Route the posterize ops of timm's RandAugment / AugMix / AutoAugment to _posterize_any_bits."""
    for t in transform.transforms:
        ops = list(getattr(t, 'ops', []))  # RandAugment, AugMixAugment
        for sub_policy in getattr(t, 'policy', []):  # AutoAugment: a list of op sequences
            ops.extend(sub_policy)
        for op in ops:
            if isinstance(op, AugmentOp) and op.name.startswith('Posterize'):
                op.aug_fn = _posterize_any_bits
    return transform


def build_transform(is_train, config):
    """timm's RandAugment pipeline for training; resize (+ centre crop) for validation."""
    size = config.DATA.IMG_SIZE
    if is_train:
        aug = config.AUG
        return _fix_posterize(create_transform(
            input_size=size,
            is_training=True,
            color_jitter=aug.COLOR_JITTER if aug.COLOR_JITTER > 0 else None,
            auto_augment=aug.AUTO_AUGMENT if aug.AUTO_AUGMENT not in ('none', '') else None,
            re_prob=aug.REPROB,
            re_mode=aug.REMODE,
            re_count=aug.RECOUNT,
            interpolation=config.DATA.INTERPOLATION,
            hflip=aug.HFLIP,
            scale=tuple(aug.SCALE),
            mean=IMAGENET_DEFAULT_MEAN,
            std=IMAGENET_DEFAULT_STD,
        ))
    # Validation must be deterministic: 'random' interpolation (a training augmentation) becomes bicubic.
    interpolation = config.DATA.INTERPOLATION
    interpolation = str_to_interp_mode('bicubic' if interpolation == 'random' else interpolation)
    if config.TEST.CROP:
        # The usual ImageNet protocol: short side to 256/224 of the size (256 for 224), centre crop.
        resize = [transforms.Resize(int(256 / 224 * size), interpolation=interpolation),
                  transforms.CenterCrop(size)]
    else:
        resize = [transforms.Resize((size, size), interpolation=interpolation)]
    return transforms.Compose(resize + [transforms.ToTensor(),
                                        transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])


def _split_dataset(root, is_train, config):
    split = 'train' if is_train else 'val'
    subset = config.DATA.TRAIN_SUBSET if is_train else 0
    dataset = image_folder(split_dir(root, split), build_transform(is_train, config), config.DATA.SKIP_BAD_IMAGES,
                           subset)
    if config.DATA.LOADER == 'dali':
        dali.check_images(dataset, config.DATA.SKIP_BAD_IMAGES)
    logger.info('%s: %d images in %d classes from %s', split, len(dataset), len(dataset.classes), dataset.root)
    return dataset


def build_dataset(is_train, config):
    """The train or val ImageFolder (with .classes, .class_to_idx, .samples), every image verified."""
    return _split_dataset(dataset_root(config, training=is_train), is_train, config)


def build_mixup(config, num_classes):
    """timm's Mixup/CutMix (which also smooths the labels), or None when both are off."""
    if not _mixup_enabled(config):
        return None
    aug = config.AUG
    return Mixup(
        mixup_alpha=aug.MIXUP,
        cutmix_alpha=aug.CUTMIX,
        cutmix_minmax=tuple(aug.CUTMIX_MINMAX) if aug.CUTMIX_MINMAX is not None else None,
        prob=aug.MIXUP_PROB,
        switch_prob=aug.MIXUP_SWITCH_PROB,
        mode=aug.MIXUP_MODE,
        label_smoothing=config.MODEL.LABEL_SMOOTHING,
        num_classes=num_classes,
    )


def _check_iterations(dataset_train, batch_size, world_size):
    # DistributedSampler pads every rank to ceil(n / world) samples; drop_last then keeps full batches.
    per_rank = math.ceil(len(dataset_train) / world_size)
    if per_rank < batch_size:
        raise DataError(f'DATA.BATCH_SIZE {batch_size} is larger than the {per_rank} training images per '
                        f"process ({len(dataset_train)} images in '{dataset_train.root}' over {world_size} "
                        f'process(es)): with drop_last an epoch would have zero iterations; '
                        f'use a batch size of at most {per_rank}')


def _loader_kwargs(config):
    num_workers = config.DATA.NUM_WORKERS
    return dict(batch_size=config.DATA.BATCH_SIZE, num_workers=num_workers,
                pin_memory=config.DATA.PIN_MEMORY and torch.cuda.is_available(),
                persistent_workers=num_workers > 0)


def _val_loader(dataset_val, config):
    # Whole validation batches per rank, so each batch holds the same images whatever the world size.
    sampler_val = ExactDistributedSampler(dataset_val, num_replicas=get_world_size(), rank=get_rank(),
                                          batch_size=config.DATA.BATCH_SIZE)
    if config.DATA.LOADER == 'dali':
        return dali.DaliLoader(dataset_val, sampler_val, config, training=False)
    return DataLoader(dataset_val, sampler=sampler_val, shuffle=False, drop_last=False,
                      generator=torch.Generator(), **_loader_kwargs(config))


def build_val_loader(config):
    """(dataset_val, data_loader_val) alone, for scripts that only evaluate: the training split is
    neither read nor verified. The same loader as build_loader's (see data/__init__.py)."""
    dataset_val = _split_dataset(dataset_root(config, training=False), False, config)
    return dataset_val, _val_loader(dataset_val, config)


def set_train_epoch(data_loader_train, epoch, start_batch=0):
    """Before each epoch: fix its order and augmentation seeds; skip its first `start_batch`
    batches when resuming mid-epoch (they are not loaded)."""
    data_loader_train.sampler.set_epoch(epoch, start_batch=start_batch)
    if hasattr(data_loader_train.dataset, 'set_epoch'):  # SeededDataset; DALI seeds from the sampler's epoch
        data_loader_train.dataset.set_epoch(epoch)


def build_loader(config):
    """(dataset_train, dataset_val, data_loader_train, data_loader_val, mixup_fn); see data/__init__.py."""
    root = dataset_root(config)
    train_dir, val_dir = split_dir(root, 'train'), split_dir(root, 'val')
    check_same_classes(train_dir, val_dir)  # cheap, so before verifying every image
    dataset_train = _split_dataset(root, True, config)
    dataset_val = _split_dataset(root, False, config)

    world_size, rank = get_world_size(), get_rank()
    batch_size = config.DATA.BATCH_SIZE
    _check_iterations(dataset_train, batch_size, world_size)
    # The sampler is distributed even in one process, so that set_epoch() fixes each epoch's order.
    sampler_kwargs = dict(batch_size=batch_size, num_replicas=world_size, rank=rank, seed=config.SEED)
    if config.AUG.NUM_REPEATS > 1:
        sampler_train = RepeatedAugmentationSampler(dataset_train, num_repeats=config.AUG.NUM_REPEATS,
                                                    **sampler_kwargs)
    else:
        sampler_train = ResumableDistributedSampler(dataset_train, **sampler_kwargs)
    # Per-sample seeded augmentation and a private generator for the workers' base seed: the
    # batches depend only on (SEED, epoch), never on the training process's RNG or the resume point.
    # Workers are not persistent so that each epoch's workers see the epoch set by set_train_epoch.
    kwargs = dict(_loader_kwargs(config), persistent_workers=False)
    if config.DATA.LOADER == 'dali':
        data_loader_train = dali.DaliLoader(dataset_train, sampler_train, config, training=True)
    else:
        data_loader_train = DataLoader(SeededDataset(dataset_train, config.SEED), sampler=sampler_train,
                                       drop_last=True, generator=torch.Generator(), **kwargs)
    data_loader_val = _val_loader(dataset_val, config)

    mixup_fn = build_mixup(config, num_classes=len(dataset_train.classes))
    return dataset_train, dataset_val, data_loader_train, data_loader_val, mixup_fn
