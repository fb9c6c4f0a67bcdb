"""DeiT's repeated augmentation: RepeatedAugmentationSampler and the per-copy augmentation seeds."""
import pytest
import torch

from data import RepeatedAugmentationSampler, ResumableDistributedSampler, build_loader, set_train_epoch
from data.seeding import sample_seed
from tests.test_data import all_batches, assert_same_batches, make_config, make_folder


def rank_lists(n, world, batch_size=2, seed=7, epoch=3, repeats=3):
    lists = []
    for rank in range(world):
        sampler = RepeatedAugmentationSampler(range(n), batch_size, world, rank, seed=seed, num_repeats=repeats)
        sampler.set_epoch(epoch)
        lists.append(list(sampler))
    return lists


@pytest.mark.parametrize('world', [1, 2, 3, 4])
def test_copies_in_a_row_of_the_shuffled_order_dealt_to_the_ranks(world):
    n, repeats = 10, 3
    lists = rank_lists(n, world, repeats=repeats)
    generator = torch.Generator()
    generator.manual_seed(7 + 3)  # seed + epoch, as DistributedSampler
    order = torch.randperm(n, generator=generator).tolist()
    repeated = [(i, c) for i in order for c in range(repeats)]
    per_rank = -(-n // world)  # as long as a plain epoch
    for rank, got in enumerate(lists):
        padded = repeated + repeated[:-(-len(repeated) // world) * world - len(repeated)]
        assert got == padded[rank::world][:per_rank]
        assert len(got) == len(ResumableDistributedSampler(range(n), 2, world, rank)) == per_rank
    # the copies of an image go to different ranks (while there are at least as many ranks as copies)
    if world >= repeats:
        first = [got[0] for got in lists[:repeats]]
        assert first == [(order[0], c) for c in range(repeats)]


def test_order_depends_only_on_seed_and_epoch_and_resumes_mid_epoch():
    assert rank_lists(23, 2) == rank_lists(23, 2)
    assert rank_lists(23, 2) != rank_lists(23, 2, epoch=4)
    assert rank_lists(23, 2) != rank_lists(23, 2, seed=8)
    sampler = RepeatedAugmentationSampler(range(23), 3, 2, 1, seed=7)
    sampler.set_epoch(3)
    full = list(sampler)
    sampler.set_epoch(3, start_batch=2)
    assert list(sampler) == full[6:]
    with pytest.raises(ValueError, match='num_repeats 0'):
        RepeatedAugmentationSampler(range(4), 2, 1, 0, num_repeats=0)


def test_each_copy_is_augmented_differently_and_exactly_again(tmp_path):
    make_folder(tmp_path, train=(5, 5, 4))
    opts = ('DATA.BATCH_SIZE', '3', 'AUG.AUTO_AUGMENT', 'rand-m9-mstd0.5-inc1', 'AUG.REPROB', '0.5',
            'AUG.NUM_REPEATS', '3', 'AUG.MIXUP', '0.0', 'AUG.CUTMIX', '0.0')
    _, _, loader, _, _ = build_loader(make_config(tmp_path, *opts))
    assert isinstance(loader.sampler, RepeatedAugmentationSampler) and len(loader) == 14 // 3
    set_train_epoch(loader, 2)
    batches = all_batches(loader)
    x, y = batches[0]  # one process: the three copies of one image make the first batch
    assert y.eq(y[0]).all() and not torch.equal(x[0], x[1]) and not torch.equal(x[1], x[2])
    set_train_epoch(loader, 2, start_batch=1)  # mid-epoch resume: the same augmented tail
    assert_same_batches(all_batches(loader), batches[1:])
    dataset = loader.dataset
    dataset.set_epoch(2)
    assert torch.equal(dataset[(4, 0)][0], dataset[4][0])  # copy 0 is the plain sample
    assert sample_seed(0, 2, 4, 0) == sample_seed(0, 2, 4)
    assert len({sample_seed(0, 2, 4, c) for c in range(3)}) == 3
