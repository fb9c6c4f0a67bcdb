"""Augmentation randomness that is a pure function of (seed, epoch, sample index).

A training run resumed mid-epoch, or run with another number of data-loader workers, then draws
exactly the same random crops, flips and RandAugment ops as an uninterrupted run: the samples do
not depend on which worker loads them or on how far the process's own RNGs have advanced.
"""
import random

import numpy as np
import torch
from torch.utils.data import Dataset


def sample_seed(seed, epoch, index, copy=0):
    """A 63-bit seed for one sample of one epoch (distinct for distinct (seed, epoch, index)).

    `copy` > 0 (repeated augmentation: the same image again in the same epoch) mixes in an odd
    constant times the copy number, so each copy gets a seed of its own.
    """
    base = ((seed * 1_000_003 + epoch) * 2_147_483_659 + index) % (2 ** 63)
    return base if copy == 0 else (base ^ (copy * 0x9E3779B97F4A7C15)) % (2 ** 63)


class SeededDataset(Dataset):
    """Wraps a dataset so that loading sample i in epoch e seeds the Python, NumPy and torch RNGs
    with sample_seed(seed, e, i), and restores the caller's RNG states afterwards (so in a
    worker-less loader the training process's own random stream, used for dropout, drop path,
    Mixup and random patch selection, is left exactly as it was).

    The epoch is set with `set_epoch`; loader workers must not be persistent, so that each epoch's
    workers receive the current epoch.
    """

    def __init__(self, dataset, seed):
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        """index: a sample index, or (index, copy) from RepeatedAugmentationSampler."""
        index, copy = index if isinstance(index, tuple) else (index, 0)
        seed = sample_seed(self.seed, self.epoch, index, copy)
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(seed)
            np.random.seed(seed % 2 ** 32)
            # the CPU generator only: torch.manual_seed would also reseed every accelerator's generator
            # (which fork_rng(devices=[]) does not restore) and, before CUDA is initialised, queue
            # lazy calls that each capture a stack trace: 0.9 ms per image, half the loading time
            torch.default_generator.manual_seed(seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
