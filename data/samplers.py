"""Samplers: training samplers that can start an epoch part-way (plain, and with DeiT's repeated
augmentation), and an exact validation sampler.

Both take `num_replicas` / `rank` explicitly (the builders pass `utils.get_world_size()` /
`utils.get_rank()`), so tests can build the sampler of any rank in one process.
"""
import torch
from torch.utils.data import DistributedSampler, Sampler


class ResumableDistributedSampler(DistributedSampler):
    """`DistributedSampler` (shuffled by `seed + epoch`, padded to equal length per rank) whose
    epoch can start at a given batch, for mid-epoch resume.

        sampler.set_epoch(epoch)                  # the whole epoch
        sampler.set_epoch(epoch, start_batch=n)   # the same epoch, without its first n batches

    The skipped batches are never loaded: the index list is cut before the DataLoader sees it, and
    because the cut is a whole number of batches (the loader uses this `batch_size` and
    drop_last=True) every remaining batch is exactly the one the uninterrupted epoch would give.
    `start_batch` applies until the next `set_epoch` call, so a resumed run only needs to pass it
    for the first epoch it runs.

    `len(sampler)` stays the full epoch (and so does `len(loader)`), so iteration counts and LR
    schedules computed from it do not change on resume; the loop numbers its batches from
    `sampler.start_batch`: `for it, batch in enumerate(loader, start=loader.sampler.start_batch)`.
    """

    def __init__(self, dataset, batch_size, num_replicas, rank, seed=0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed,
                         drop_last=False)
        self.batch_size = batch_size
        self.start_batch = 0

    @property
    def num_batches(self):
        """Full batches per epoch on this rank (the last partial batch is dropped)."""
        return self.num_samples // self.batch_size

    def set_epoch(self, epoch, start_batch=0):
        if not 0 <= start_batch <= self.num_batches:
            raise ValueError(f'start_batch {start_batch} is outside [0, {self.num_batches}] '
                             f'(batches per epoch on this rank)')
        super().set_epoch(epoch)
        self.start_batch = start_batch

    def epoch_indices(self):
        """This rank's samples of the whole epoch, in order."""
        return list(super().__iter__())

    def __iter__(self):
        return iter(self.epoch_indices()[self.start_batch * self.batch_size:])


class RepeatedAugmentationSampler(ResumableDistributedSampler):
    """DeiT's repeated augmentation (Hoffer et al. 2020), resumable like its parent: the epoch's
    shuffled order (by `seed + epoch`) takes each image `num_repeats` times in a row, and the
    copies are dealt round-robin to the ranks, so with several processes they land on different
    GPUs. Each rank keeps the first ceil(n / world) of its samples: an epoch has as many
    iterations as without repetition (and sees about n / num_repeats distinct images).

    It yields (index, copy) pairs, copy in [0, num_repeats): SeededDataset seeds each copy's
    augmentation differently, so the copies of an image are different views of it. Mid-epoch
    resume (`set_epoch(epoch, start_batch=n)`) skips whole batches as the parent does.
    """

    def __init__(self, dataset, batch_size, num_replicas, rank, seed=0, num_repeats=3):
        if num_repeats < 1:
            raise ValueError(f'num_repeats {num_repeats} must be at least 1')
        super().__init__(dataset, batch_size, num_replicas, rank, seed)
        self.num_repeats = num_repeats

    def epoch_indices(self):
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.dataset), generator=generator).tolist()
        repeated = [(index, copy) for index in order for copy in range(self.num_repeats)]
        per_rank = -(-len(repeated) // self.num_replicas)
        repeated += repeated[:per_rank * self.num_replicas - len(repeated)]  # pad: every rank as long
        return repeated[self.rank::self.num_replicas][:self.num_samples]


class ExactDistributedSampler(Sampler):
    """Whole batches dealt round-robin, without padding or duplicates: the dataset is cut in order
    into global batches of `batch_size` (the last may be partial), and rank r of W gets global
    batches r, r + W, r + 2W, ... in order. Over all ranks every sample is seen exactly once.

    With batch_size=1 rank r simply gets indices r, r + W, r + 2W, .... With the loader's batch
    size (and drop_last=False) each loader batch is exactly one global batch, the same images as in
    a one-process run: per-batch results do not depend on the number of processes, and
    `batch_ids()` / `num_batches` let the evaluation put them back in one order before summing.
    Ranks may differ by one batch, and a rank may get none when there are fewer batches than ranks.
    """

    def __init__(self, dataset, num_replicas, rank, batch_size=1):
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f'rank {rank} is outside [0, {num_replicas}) for {num_replicas} replicas')
        if batch_size < 1:
            raise ValueError(f'batch_size {batch_size} must be at least 1')
        self.num_total = len(dataset)
        self.num_replicas = num_replicas
        self.rank = rank
        self.batch_size = batch_size

    @property
    def num_batches(self):
        """Global batches over all ranks."""
        return -(-self.num_total // self.batch_size)

    def batch_ids(self):
        """The global batch index of each batch this rank yields, in order."""
        return range(self.rank, self.num_batches, self.num_replicas)

    def __iter__(self):
        for batch in self.batch_ids():
            yield from range(batch * self.batch_size, min((batch + 1) * self.batch_size, self.num_total))

    def __len__(self):
        return sum(min(self.batch_size, self.num_total - batch * self.batch_size) for batch in self.batch_ids())
