"""Data: ImageFolder datasets, timm transforms, distributed loaders and Mixup/CutMix from a config.

    from data import build_loader, build_dataset, DataError

    dataset_train, dataset_val, data_loader_train, data_loader_val, mixup_fn = build_loader(config)
    dataset_val = build_dataset(is_train=False, config=config)
    dataset_val, data_loader_val = build_val_loader(config)   # evaluation only: train/ is not read
    dataset, data_loader = build_pretrain_loader(config)      # SimMIM: (images, masks), data/masking.py

Datasets (DATA.DATASET):
    'imagenet'  DATA.DATA_PATH/train and DATA.DATA_PATH/val, any ImageFolders with the same class
                folders; the class count is len(dataset_train.classes).
    'digits'    scikit-learn's bundled 8x8 digits, exported once (atomically) to
                <DATA.DATA_PATH or ~/.cache/pss>/digits_<IMG_SIZE>/{train,val}/<0..9>/<index>.png
                (80/20 split, stratified, fixed) and then read the same way (see data/digits.py).
    'fashion_mnist'  Fashion-MNIST's IDX files from DATA.DATA_PATH (default: the Debian package
                dataset-fashion-mnist's /usr/share/datasets/fashion-mnist), exported once the same
                way to fashion_mnist_<IMG_SIZE>/{train,val} (60,000 / 10,000; data/fashion_mnist.py).

Checks: `build_loader` raises `DataError` (a ValueError) before any training, with a message naming
the setting or path, for: an unknown DATA.DATASET or DATA.INTERPOLATION; an odd batch size with
Mixup/CutMix on; DATA_PATH unset, missing or not a folder; no train/ or val/; a split without class
folders or images; train and val class folders that differ; an image that PIL cannot verify
(unless DATA.SKIP_BAD_IMAGES, which drops such files with a warning listing them); a batch size
above the training images per process (zero iterations per epoch with drop_last). Every image is
verified up front (data/folder.py: one open and header parse per file in a thread pool, each
process the whole split; not a full decode, which `python -m data.verify` does). An image that
verifies but fails to decode later raises a DataError naming the file, also from a loader worker;
with DATA.SKIP_BAD_IMAGES it is skipped instead (the next image of the split takes its place, the
same in every run) and `decode_failures(dataset)` lists it. Hidden folders and files are skipped,
and a class folder without images is an error.

Training loader: `ResumableDistributedSampler` (a DistributedSampler, also in one process; shuffled
by config.SEED + epoch, the same on every rank), or with AUG.NUM_REPEATS > 1 its subclass
`RepeatedAugmentationSampler` (DeiT's repeated augmentation: each image NUM_REPEATS times in a row
of the shuffled order, dealt to the ranks, each copy augmented with a seed of its own; the epoch
keeps its length), DATA.BATCH_SIZE per process, drop_last=True.
Before each epoch call `set_train_epoch(data_loader_train, epoch)`; to continue an epoch after its
first n batches (mid-epoch resume), `set_train_epoch(data_loader_train, epoch, start_batch=n)`:

    for it, (samples, targets) in enumerate(data_loader_train, start=data_loader_train.sampler.start_batch):

The skipped batches are not loaded, and every batch after them is exactly the one the
uninterrupted epoch would give. `start_batch` lasts until the next epoch; `len(loader)` stays the
full epoch, so step counts and LR schedules derived from it are unchanged.

Randomness: the batch order depends only on (SEED, epoch), and each sample's augmentation draws
from RNGs seeded by (SEED, epoch, index) (data/seeding.py), whatever the number of workers and
wherever the epoch was resumed; the training process's own RNGs (dropout, drop path, Mixup, random
patch selection) are left untouched by loading, so restoring them on resume makes a resumed run
bit-identical to an uninterrupted one.

Validation loader: batch DATA.BATCH_SIZE, in order, last partial batch kept. Its
`ExactDistributedSampler` cuts the validation set into global batches and gives rank r of W the
batches r, r + W, r + 2W, ... (no padding, no duplicates; with batch size 1 that is the indices
r, r + W, ...), so the all-reduced counts and sums cover every image exactly once for any number of
processes, and each batch holds the same images as in a one-process run. `sampler.batch_ids()`
(the global index of each local batch) and `sampler.num_batches` (global batches) let evaluation
sum per-batch results in one fixed order, for bit-identical numbers across world sizes.

Input pipeline (DATA.LOADER): 'torch' (the default: DataLoader workers, timm's PIL transforms, as
above) or 'dali' (data/dali.py: NVIDIA DALI, decoding and augmenting on the GPU, CPU operators
without one; the same samplers and batches of the same images, the same calls; its augmentation is
seeded per pipeline, so a resumed run draws differently after the resume).

Mixup: timm's `Mixup` (with label smoothing MODEL.LABEL_SMOOTHING) when AUG.MIXUP > 0, AUG.CUTMIX > 0
or AUG.CUTMIX_MINMAX is set, else None.
"""
from .build import (DATASETS, build_dataset, build_loader, build_mixup, build_transform, build_val_loader,
                    set_train_epoch)
from .folder import DataError, decode_failures, log_decode_failures
from .masking import MaskGenerator, build_pretrain_loader
from .samplers import ExactDistributedSampler, RepeatedAugmentationSampler, ResumableDistributedSampler

__all__ = ['DATASETS', 'DataError', 'decode_failures', 'log_decode_failures', 'ExactDistributedSampler',
           'MaskGenerator', 'RepeatedAugmentationSampler', 'ResumableDistributedSampler', 'set_train_epoch',
           'build_dataset', 'build_pretrain_loader',
           'build_loader', 'build_mixup', 'build_transform', 'build_val_loader']
