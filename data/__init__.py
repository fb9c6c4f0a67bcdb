"""Data: ImageFolder datasets, timm transforms, distributed loaders and Mixup/CutMix from a config.

    dataset_train, dataset_val, data_loader_train, data_loader_val, mixup_fn = build_loader(config)
    dataset_val, data_loader_val = build_val_loader(config)   # evaluation only: train/ is not read
    dataset, data_loader = build_pretrain_loader(config)      # SimMIM: (images, masks), masking.py
    set_train_epoch(data_loader_train, epoch, start_batch=n)  # before each epoch; n > 0: mid-epoch resume

Datasets (DATA.DATASET, README "Fashion-MNIST" and the demo): 'imagenet' (any ImageFolders train/ and
val/), 'digits' (digits.py) and 'fashion_mnist' (fashion_mnist.py), both exported once to ImageFolders.
Bad input is a DataError before any training (folder.py). The training order depends only on (SEED,
epoch) and each sample's augmentation on (SEED, epoch, index) (samplers.py, seeding.py), so resumes
are exact; validation counts every image once for any number of processes (ExactDistributedSampler).
Input pipeline (DATA.LOADER): 'torch' (the default: DataLoader workers, timm's PIL transforms) or
'dali' (dali.py: NVIDIA DALI, decoding and augmenting on the GPU, CPU operators without one; the same
samplers and batches of the same images; its augmentation is seeded per pipeline, so a resumed run
draws differently after the resume).
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
