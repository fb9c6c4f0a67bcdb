"""data/: datasets, transforms, samplers, loaders, the digits export and every DataError."""
import argparse
import logging
import os
import socket
import struct
import subprocess
import zlib

import pytest
import torch
from PIL import Image
from timm.data import Mixup
from timm.data.auto_augment import AugmentOp

import data.build
import data.digits
from config import get_config
from data import (DataError, ExactDistributedSampler, ResumableDistributedSampler, build_dataset, build_loader,
                  build_transform)
from data.digits import export_digits

IMG = 16  # image side of the tiny folders and of the model input
# Deterministic data path: no colour jitter, RandAugment or erasing. The test images are solid colours,
# so the remaining random crop, resize and flip leave them unchanged and batches can be compared exactly.
BASE_OPTS = ['DATA.IMG_SIZE', str(IMG), 'MODEL.VIT.PATCH_SIZE', '8', 'DATA.NUM_WORKERS', '0',
             'DATA.PIN_MEMORY', 'False', 'DATA.BATCH_SIZE', '4', 'AUG.COLOR_JITTER', '0.0',
             'AUG.AUTO_AUGMENT', 'none', 'AUG.REPROB', '0.0']


def make_config(data_path, *opts):
    return get_config(argparse.Namespace(cfg=None, opts=BASE_OPTS + ['DATA.DATA_PATH', str(data_path)] + list(opts)))


def make_folder(root, train=(4, 3, 3), val=(3, 2, 2), classes=('a', 'b', 'c'), val_classes=None):
    """train/ and val/ ImageFolders of solid-colour PNGs, each image a different colour."""
    colour = 0
    for split, counts, names in (('train', train, classes), ('val', val, val_classes or classes)):
        for name, count in zip(names, counts):
            os.makedirs(root / split / name, exist_ok=True)
            for i in range(count):
                colour += 1
                rgb = (colour * 7 % 256, colour * 13 % 256, 255 - colour * 5 % 256)
                Image.new('RGB', (IMG + 4, IMG), rgb).save(root / split / name / f'{i}.png')
    return root


def write_undecodable_png(path):
    """A PNG with valid chunks and CRCs, so PIL's verify() passes, but an IDAT that is not zlib data."""
    def chunk(kind, payload):
        return struct.pack('>I', len(payload)) + kind + payload + struct.pack('>I', zlib.crc32(kind + payload))
    header = struct.pack('>IIBBBBB', 4, 4, 8, 2, 0, 0, 0)  # 4x4, 8 bit, RGB
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', b'not zlib') + chunk(b'IEND', b''))


def all_batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def assert_same_batches(batches, expected):
    assert len(batches) == len(expected)
    for (x, y), (x_ref, y_ref) in zip(batches, expected):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)


# ----------------------------------------------------------------------------- loaders

def test_loaders_give_batches_of_the_right_shape_and_type(tmp_path):
    make_folder(tmp_path, train=(4, 3, 3), val=(3, 2, 2))
    dataset_train, dataset_val, loader_train, loader_val, mixup_fn = build_loader(make_config(tmp_path))
    assert (len(dataset_train), len(dataset_val)) == (10, 7)
    assert dataset_train.classes == dataset_val.classes == ['a', 'b', 'c']
    assert dataset_train.class_to_idx == {'a': 0, 'b': 1, 'c': 2}

    loader_train.sampler.set_epoch(0)
    x, y = next(iter(loader_train))
    assert x.shape == (4, 3, IMG, IMG) and x.dtype == torch.float32
    assert y.shape == (4,) and y.dtype == torch.int64
    mixed_x, soft_y = mixup_fn(x, y)
    assert mixed_x.shape == x.shape and soft_y.shape == (4, 3)
    assert torch.allclose(soft_y.sum(1), torch.ones(4))

    val_batches = all_batches(loader_val)
    assert [len(y) for _, y in val_batches] == [4, 3]  # last partial batch kept
    assert all(x.shape[1:] == (3, IMG, IMG) and x.dtype == torch.float32 for x, _ in val_batches)
    # One process: every validation image once, in folder order.
    assert torch.cat([y for _, y in val_batches]).tolist() == dataset_val.targets


def test_train_loader_drops_the_last_partial_batch(tmp_path):
    make_folder(tmp_path, train=(4, 3, 3))  # 10 images, batch 4
    _, _, loader_train, _, _ = build_loader(make_config(tmp_path))
    loader_train.sampler.set_epoch(0)
    assert len(loader_train) == 2
    assert [len(y) for _, y in loader_train] == [4, 4]


@pytest.mark.parametrize('num_total', [13, 2])
def test_exact_sampler_covers_every_index_once(num_total):
    # 13 is divisible by none of 2 and 3; with 2 samples, rank 2 of 3 gets none.
    dataset = range(num_total)
    for world in (1, 2, 3):
        per_rank = [list(ExactDistributedSampler(dataset, num_replicas=world, rank=r)) for r in range(world)]
        assert sorted(i for indices in per_rank for i in indices) == list(range(num_total))
        for rank, indices in enumerate(per_rank):
            assert indices == list(range(rank, num_total, world))
            assert len(ExactDistributedSampler(dataset, num_replicas=world, rank=rank)) == len(indices)
    with pytest.raises(ValueError, match='rank 3 is outside'):
        ExactDistributedSampler(dataset, num_replicas=3, rank=3)


def test_exact_sampler_deals_whole_batches():
    dataset = range(13)  # batches of 4: [0..3], [4..7], [8..11], [12]
    for world in (1, 2, 3):
        samplers = [ExactDistributedSampler(dataset, num_replicas=world, rank=r, batch_size=4) for r in range(world)]
        assert all(s.num_batches == 4 for s in samplers)
        assert sorted(i for s in samplers for i in s) == list(range(13))
        for rank, sampler in enumerate(samplers):
            assert list(sampler.batch_ids()) == list(range(rank, 4, world))
            assert list(sampler) == [i for b in sampler.batch_ids() for i in range(4 * b, min(4 * b + 4, 13))]
            assert len(sampler) == len(list(sampler))


def test_val_loader_batches_are_the_same_for_any_number_of_processes(tmp_path, monkeypatch):
    make_folder(tmp_path, train=(4, 3, 3), val=(3, 2, 2))  # 7 val images, batch 2: 4 global batches
    config = make_config(tmp_path, 'DATA.BATCH_SIZE', '2')
    one_process = all_batches(build_loader(config)[3])
    for world in (2, 3):
        monkeypatch.setattr(data.build, 'get_world_size', lambda world=world: world)
        seen = []
        for rank in range(world):
            monkeypatch.setattr(data.build, 'get_rank', lambda rank=rank: rank)
            loader_val = build_loader(config)[3]
            batch_ids = list(loader_val.sampler.batch_ids())
            batches = all_batches(loader_val)
            assert_same_batches(batches, [one_process[b] for b in batch_ids])
            seen += batch_ids
        assert sorted(seen) == [0, 1, 2, 3]


def test_epoch_fixes_the_order(tmp_path):
    make_folder(tmp_path, train=(5, 5, 4))
    _, _, loader_train, _, _ = build_loader(make_config(tmp_path))
    loader_train.sampler.set_epoch(3)
    first = all_batches(loader_train)
    loader_train.sampler.set_epoch(3)
    assert_same_batches(all_batches(loader_train), first)
    loader_train.sampler.set_epoch(4)
    other = all_batches(loader_train)
    assert not all(torch.equal(y, y_ref) for (_, y), (_, y_ref) in zip(other, first))
    assert sorted(loader_train.sampler) == list(range(14))  # a permutation of the dataset, every epoch


def test_skipping_batches_gives_the_tail_of_the_epoch_without_loading_the_rest(tmp_path):
    make_folder(tmp_path, train=(5, 5, 4))  # 14 images, batch 2: 7 batches
    _, _, loader_train, _, _ = build_loader(make_config(tmp_path, 'DATA.BATCH_SIZE', '2'))
    dataset = loader_train.dataset.dataset  # the ImageFolder under the per-sample seeding wrapper
    sampler = loader_train.sampler
    sampler.set_epoch(5)
    full = all_batches(loader_train)
    assert len(full) == len(loader_train) == 7

    reads = []
    read = dataset.loader
    dataset.loader = lambda path: reads.append(path) or read(path)
    for start in (0, 3, 7):
        reads.clear()
        sampler.set_epoch(5, start_batch=start)
        assert len(loader_train) == 7  # the full epoch, so step counts do not change on resume
        assert sampler.start_batch == start
        assert_same_batches(all_batches(loader_train), full[start:])
        assert len(reads) == 2 * (7 - start)  # skipped batches are never read

    sampler.set_epoch(6)  # the skip lasts one epoch
    assert sampler.start_batch == 0 and len(all_batches(loader_train)) == 7
    with pytest.raises(ValueError, match='start_batch 8 is outside'):
        sampler.set_epoch(6, start_batch=8)


def test_skipping_batches_on_every_rank():
    dataset = range(23)
    for world in (2, 3):
        for rank in range(world):
            sampler = ResumableDistributedSampler(dataset, batch_size=3, num_replicas=world, rank=rank, seed=7)
            sampler.set_epoch(2)
            full = list(sampler)
            sampler.set_epoch(2, start_batch=2)
            assert list(sampler) == full[6:]


def test_val_and_train_transforms(tmp_path):
    config = make_config(tmp_path, 'AUG.HFLIP', '0.0', 'AUG.SCALE', '(0.5, 1.0)')
    train_ops = build_transform(True, config).transforms
    assert train_ops[0].scale == (0.5, 1.0) and train_ops[0].size == (IMG, IMG)
    assert not any(type(t).__name__ == 'RandomHorizontalFlip' for t in train_ops)
    resize, crop = build_transform(False, config).transforms[:2]
    assert resize.size == int(256 / 224 * IMG) and crop.size == (IMG, IMG)
    no_crop = build_transform(False, make_config(tmp_path, 'TEST.CROP', 'False'))
    assert no_crop.transforms[0].size == (IMG, IMG)
    wide = Image.new('RGB', (40, 20))
    assert no_crop(wide).shape == build_transform(False, config)(wide).shape == (3, IMG, IMG)


def test_posterize_at_full_magnitude_works_with_current_pillow(tmp_path):
    # 'inc1' posterize keeps 0 bits at magnitude 10, which Pillow 13 rejects; we return a black image.
    config = make_config(tmp_path, 'AUG.AUTO_AUGMENT', 'rand-m10-n1-mstd0-inc1')
    rand_augment = next(t for t in build_transform(True, config).transforms if hasattr(t, 'ops'))
    ops = [op for op in rand_augment.ops if isinstance(op, AugmentOp) and op.name.startswith('Posterize')]
    assert ops
    for op in ops:
        op.prob = 1.0
        out = op(Image.new('RGB', (8, 8), (200, 100, 50)))
        assert out.getextrema() == ((0, 0), (0, 0), (0, 0))


def test_mixup_only_when_enabled(tmp_path):
    make_folder(tmp_path)
    off = make_config(tmp_path, 'AUG.MIXUP', '0.0', 'AUG.CUTMIX', '0.0')
    assert build_loader(off)[4] is None
    mixup_fn = build_loader(make_config(tmp_path, 'AUG.MIXUP', '0.0', 'AUG.CUTMIX', '1.0',
                                        'MODEL.LABEL_SMOOTHING', '0.2'))[4]
    assert isinstance(mixup_fn, Mixup)
    assert (mixup_fn.num_classes, mixup_fn.label_smoothing, mixup_fn.cutmix_alpha) == (3, 0.2, 1.0)
    assert isinstance(build_loader(make_config(tmp_path, 'AUG.MIXUP', '0.0', 'AUG.CUTMIX', '0.0',
                                               'AUG.CUTMIX_MINMAX', '(0.2, 0.8)'))[4], Mixup)


# ----------------------------------------------------------------------------- errors

def test_error_unknown_dataset_and_interpolation(tmp_path):
    with pytest.raises(DataError, match="DATA.DATASET 'cifar' is not known; valid values: imagenet, digits"):
        build_loader(make_config(tmp_path, 'DATA.DATASET', 'cifar'))
    with pytest.raises(DataError, match="DATA.INTERPOLATION 'cubic' is not known"):
        build_loader(make_config(tmp_path, 'DATA.INTERPOLATION', 'cubic'))


def test_error_odd_batch_with_mixup(tmp_path):
    make_folder(tmp_path)
    with pytest.raises(DataError, match='DATA.BATCH_SIZE 3 is odd, but Mixup/CutMix'):
        build_loader(make_config(tmp_path, 'DATA.BATCH_SIZE', '3'))
    build_loader(make_config(tmp_path, 'DATA.BATCH_SIZE', '3', 'AUG.MIXUP', '0.0', 'AUG.CUTMIX', '0.0'))


def test_error_data_path(tmp_path):
    with pytest.raises(DataError, match='DATA.DATA_PATH is not set'):
        build_loader(make_config(''))
    missing = tmp_path / 'nowhere'
    with pytest.raises(DataError, match=f"data path '{missing}' does not exist"):
        build_loader(make_config(missing))
    a_file = tmp_path / 'file.txt'
    a_file.write_text('x')
    with pytest.raises(DataError, match=f"data path '{a_file}' is not a folder"):
        build_loader(make_config(a_file))


@pytest.mark.parametrize('split', ['train', 'val'])
def test_error_missing_split(tmp_path, split):
    make_folder(tmp_path)
    os.rename(tmp_path / split, tmp_path / 'other')
    with pytest.raises(DataError, match=f"no '{split}/' folder in '{tmp_path}'"):
        build_loader(make_config(tmp_path))


def test_error_split_without_classes_or_images(tmp_path):
    make_folder(tmp_path)
    for name in ('a', 'b', 'c'):
        for png in (tmp_path / 'val' / name).iterdir():
            png.unlink()
    with pytest.raises(DataError, match=f"'{tmp_path / 'val'}' has no images"):
        build_loader(make_config(tmp_path))
    with pytest.raises(DataError, match="has no images"):
        build_dataset(is_train=False, config=make_config(tmp_path))
    for name in ('a', 'b', 'c'):
        (tmp_path / 'val' / name).rmdir()
    with pytest.raises(DataError, match=f"'{tmp_path / 'val'}' has no class folders"):
        build_loader(make_config(tmp_path))


def test_error_different_class_folders(tmp_path):
    make_folder(tmp_path, val_classes=('a', 'b', 'd'))
    with pytest.raises(DataError, match=r"differ: only in train: \[c\], only in val: \[d\]"):
        build_loader(make_config(tmp_path))
    for i in range(15):
        os.makedirs(tmp_path / 'train' / f'extra{i:02d}')
    with pytest.raises(DataError, match=r"only in train: \[c, extra00, .*, extra08, \.\.\. \(\+6 more\)\]"):
        build_loader(make_config(tmp_path))


def test_error_batch_larger_than_the_images_per_process(tmp_path, monkeypatch):
    make_folder(tmp_path, train=(4, 3, 3))  # 10 images
    with pytest.raises(DataError, match='DATA.BATCH_SIZE 12 is larger than the 10 training images per process '
                                        r'.* over 1 process\(es\)\): with drop_last an epoch would have zero'):
        build_loader(make_config(tmp_path, 'DATA.BATCH_SIZE', '12'))
    build_loader(make_config(tmp_path, 'DATA.BATCH_SIZE', '10'))
    # 4 processes: ceil(10 / 4) = 3 images each, fewer than a batch of 4.
    monkeypatch.setattr(data.build, 'get_world_size', lambda: 4)
    with pytest.raises(DataError, match=r'DATA.BATCH_SIZE 4 is larger than the 3 training images .* over 4 process'):
        build_loader(make_config(tmp_path))


def test_error_undecodable_image_names_the_file(tmp_path):
    make_folder(tmp_path)
    bad = tmp_path / 'train' / 'b' / 'broken.png'
    bad.write_bytes(b'this is not an image')
    with pytest.raises(DataError, match=f"1 image file\\(s\\) in .* cannot be decoded: '{bad}'.*SKIP_BAD_IMAGES"):
        build_loader(make_config(tmp_path))


def test_image_that_verifies_but_fails_to_decode_is_named_when_read(tmp_path):
    make_folder(tmp_path, train=(4, 4, 4))
    bad = tmp_path / 'train' / 'a' / 'bad.png'
    write_undecodable_png(bad)
    _, _, loader_train, _, _ = build_loader(make_config(tmp_path))  # verify() cannot see it
    loader_train.sampler.set_epoch(0)
    with pytest.raises(DataError, match=f"cannot decode image '{bad}'"):
        all_batches(loader_train)


def test_skip_bad_images_drops_them_with_a_warning_and_a_count(tmp_path, caplog):
    make_folder(tmp_path, train=(4, 3, 3), val=(3, 2, 2))
    bad_train = [tmp_path / 'train' / 'a' / 'x.png', tmp_path / 'train' / 'c' / 'y.jpg']
    bad_val = tmp_path / 'val' / 'b' / 'z.png'
    for path in bad_train + [bad_val]:
        path.write_bytes(b'\x89PNG garbage')
    with caplog.at_level(logging.WARNING, logger='data.folder'):
        dataset_train, dataset_val, loader_train, loader_val, _ = build_loader(
            make_config(tmp_path, 'DATA.SKIP_BAD_IMAGES', 'True'))
    assert (len(dataset_train), len(dataset_val)) == (10, 7)
    bad_paths = {str(p) for p in bad_train + [bad_val]}
    assert not bad_paths & {p for p, _ in dataset_train.samples + dataset_val.samples}
    assert dataset_train.targets == [t for _, t in dataset_train.samples]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert 'skipping 2 image file(s)' in warnings[0] and all(str(p) in warnings[0] for p in bad_train)
    assert 'skipping 1 image file(s)' in warnings[1] and str(bad_val) in warnings[1]
    assert sum(len(y) for _, y in loader_val) == 7


# ----------------------------------------------------------------------------- digits

def _dead_pid():
    child = subprocess.Popen(['true'])
    child.wait()
    return child.pid


@pytest.fixture(scope='module')
def digits_cache(tmp_path_factory):
    """A cache folder with leftovers of two interrupted exports, then the digits exported at IMG px."""
    cache = tmp_path_factory.mktemp('cache')
    dead = cache / f'.digits_{IMG}.tmp.{socket.gethostname()}.{_dead_pid()}.abc123'
    foreign = cache / f'.digits_{IMG}.tmp.other-host.example.1.xyz789'  # another machine's: left alone
    for leftover in (dead, foreign):
        os.makedirs(leftover / 'train' / '0')
        (leftover / 'train' / '0' / '0.png').write_bytes(b'half written')
    export_digits(str(cache), IMG)
    return cache, dead, foreign


def test_digits_export(digits_cache):
    cache, dead, foreign = digits_cache
    root = cache / f'digits_{IMG}'
    counts = {split: {c: len(os.listdir(root / split / c)) for c in os.listdir(root / split)}
              for split in ('train', 'val')}
    assert sorted(counts['train']) == sorted(counts['val']) == [str(c) for c in range(10)]
    assert sum(counts['train'].values()) == 1437 and sum(counts['val'].values()) == 360
    for c in counts['train']:  # stratified: each class about 80/20 (class sizes are 174 to 183)
        assert abs(counts['val'][c] - 0.2 * (counts['train'][c] + counts['val'][c])) <= 1
    names = {split: {n for c in counts[split] for n in os.listdir(root / split / c)} for split in counts}
    assert not names['train'] & names['val'] and len(names['train'] | names['val']) == 1797
    with Image.open(root / 'val' / '3' / sorted(names['val'] & set(os.listdir(root / 'val' / '3')))[0]) as img:
        assert img.size == (IMG, IMG) and img.mode == 'RGB'
        assert img.getextrema()[0][1] > 200  # 0..16 scaled to 0..255

    assert not dead.exists() and foreign.exists()  # the dead writer's leftover is removed
    mtime = (root.stat().st_mtime_ns, (root / 'train' / '0').stat().st_mtime_ns)
    assert export_digits(str(cache), IMG) == str(root)
    assert (root.stat().st_mtime_ns, (root / 'train' / '0').stat().st_mtime_ns) == mtime


def test_digits_loader(digits_cache):
    cache, _, _ = digits_cache
    config = make_config(cache, 'DATA.DATASET', 'digits', 'DATA.BATCH_SIZE', '64')
    dataset_train, dataset_val, loader_train, loader_val, _ = build_loader(config)
    assert (len(dataset_train), len(dataset_val), len(dataset_train.classes)) == (1437, 360, 10)
    assert dataset_train.root == str(cache / f'digits_{IMG}' / 'train')
    assert len(loader_train) == 1437 // 64 and len(loader_val) == 6
    x, y = next(iter(loader_val))
    assert x.shape == (64, 3, IMG, IMG) and set(y.tolist()) <= set(range(10))


def test_digits_export_race_uses_the_winner(tmp_path, monkeypatch):
    final = tmp_path / 'digits_8'

    def lose_the_race(out_dir, img_size):
        (tmp_path / 'seen_temp').write_text(out_dir)
        os.makedirs(final / 'train')  # another process renames its export first
        (final / 'winner').write_text('')
    monkeypatch.setattr(data.digits, '_write_split_images', lose_the_race)
    assert export_digits(str(tmp_path), 8) == str(final)
    assert (final / 'winner').exists()
    temp = (tmp_path / 'seen_temp').read_text()
    assert os.path.dirname(temp) == str(tmp_path) and not os.path.exists(temp)


def test_digits_interrupted_export_leaves_no_folder(tmp_path, monkeypatch):
    def killed(out_dir, img_size):
        os.makedirs(os.path.join(out_dir, 'train', '0'))
        raise KeyboardInterrupt
    monkeypatch.setattr(data.digits, '_write_split_images', killed)
    with pytest.raises(KeyboardInterrupt):
        export_digits(str(tmp_path), 8)
    assert os.listdir(tmp_path) == []


def test_augmentation_depends_only_on_seed_epoch_and_index(tmp_path):
    import random

    from data import set_train_epoch
    make_folder(tmp_path, train=(5, 5, 4))
    opts = ('DATA.BATCH_SIZE', '2', 'AUG.AUTO_AUGMENT', 'rand-m9-mstd0.5-inc1', 'AUG.REPROB', '0.5')
    _, _, loader, _, _ = build_loader(make_config(tmp_path, *opts))
    set_train_epoch(loader, 2)
    torch.manual_seed(0)
    reference = all_batches(loader)

    # other states of the training process's RNGs, and two workers: the same augmented batches
    _, _, loader_workers, _, _ = build_loader(make_config(tmp_path, *opts, 'DATA.NUM_WORKERS', '2'))
    set_train_epoch(loader_workers, 2)
    torch.manual_seed(123)
    random.seed(5)
    assert_same_batches(all_batches(loader_workers), reference)

    # a mid-epoch start gives the tail of the same augmented epoch
    set_train_epoch(loader, 2, start_batch=4)
    assert_same_batches(all_batches(loader), reference[4:])

    # loading leaves the training process's RNG stream untouched
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    all_batches(loader)
    assert torch.equal(torch.rand(3), expected)

    # the same sample is augmented differently in another epoch, and identically in the same one
    dataset = loader.dataset
    dataset.set_epoch(2)
    a = dataset[0][0]
    dataset.set_epoch(3)
    assert not torch.equal(dataset[0][0], a)
    dataset.set_epoch(2)
    assert torch.equal(dataset[0][0], a)


# ----------------------------------------------------------------------------- truncated JPEGs
def write_truncated_jpeg(path, seed=0):
    """A JPEG cut in half: PIL's verify() (the header) passes, decoding the pixels fails."""
    import io

    import numpy as np
    pixels = (np.random.default_rng(seed).random((64, 64, 3)) * 255).astype('uint8')  # noise: a long scan
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, 'JPEG')
    path.write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
    with Image.open(path) as img:
        img.verify()  # the up-front check cannot see it


@pytest.mark.parametrize('workers', ['0', '2'])
def test_a_truncated_jpeg_is_one_line_naming_it_whatever_the_workers(tmp_path, workers):
    make_folder(tmp_path, train=(4, 4, 4))
    bad = tmp_path / 'train' / 'b' / 'cut.jpg'
    write_truncated_jpeg(bad)
    _, _, loader_train, _, _ = build_loader(make_config(tmp_path, 'DATA.NUM_WORKERS', workers))
    loader_train.sampler.set_epoch(0)
    with pytest.raises(DataError) as error:
        all_batches(loader_train)
    message = str(error.value)
    assert message.startswith(f"cannot decode image '{bad}': OSError: image file is truncated") and '\n' not in message
    assert 'Caught' not in message and 'Traceback' not in message


def test_skip_bad_images_skips_a_truncated_jpeg_deterministically(tmp_path, caplog):
    make_folder(tmp_path, train=(4, 4, 4), val=(3, 2, 2))
    bad_train, bad_val = tmp_path / 'train' / 'b' / 'cut.jpg', tmp_path / 'val' / 'a' / 'cut.jpg'
    write_truncated_jpeg(bad_train)
    write_truncated_jpeg(bad_val, seed=1)
    opts = ('DATA.SKIP_BAD_IMAGES', 'True', 'AUG.MIXUP', '0.0', 'AUG.CUTMIX', '0.0')
    batches = {}
    for workers in ('0', '2'):
        dataset_train, dataset_val, loader_train, loader_val, _ = build_loader(
            make_config(tmp_path, 'DATA.NUM_WORKERS', workers, *opts))
        assert len(dataset_train) == 13  # verify() passed it: it is in the dataset
        loader_train.sampler.set_epoch(3)
        batches[workers] = all_batches(loader_train), all_batches(loader_val)
        # the failed files, seen by the workers, are listed in the main process
        assert data.folder.decode_failures(dataset_train) == [str(bad_train)]
        assert data.folder.decode_failures(dataset_val) == [str(bad_val)]
    # the same batches with 0 and 2 workers: the next image of the split takes the bad one's place
    assert_same_batches(batches['2'][0], batches['0'][0])
    assert_same_batches(batches['2'][1], batches['0'][1])
    index = [p for p, _ in dataset_val.samples].index(str(bad_val))
    expected = dataset_val[index + 1]
    flat = torch.cat([x for x, _ in batches['0'][1]])
    assert torch.equal(flat[index], expected[0]) and torch.equal(flat[index + 1], expected[0])
    assert f"cannot decode image '{bad_val}'" in caplog.text and 'skipped (DATA.SKIP_BAD_IMAGES)' in caplog.text

    class Log:
        messages = []

        def warning(self, message):
            self.messages.append(message)
    log = Log()
    assert data.folder.log_decode_failures(dataset_train, log) == [str(bad_train)]
    assert data.folder.log_decode_failures(dataset_train, log) == []  # reported once
    assert len(log.messages) == 1 and f'1 more image(s) of {dataset_train.root} failed to decode' in log.messages[0]
    assert '(1 so far' in log.messages[0] and str(bad_train) in log.messages[0]


def test_verify_decodes_every_image_and_lists_the_bad_ones(tmp_path, capsys):
    from data import verify
    make_folder(tmp_path, train=(4, 3, 3), val=(3, 2, 2))
    assert verify.main(['--data-path', str(tmp_path), '--no-progress']) == 0
    assert 'all good' in capsys.readouterr().err
    bad = [tmp_path / 'train' / 'a' / 'cut.jpg', tmp_path / 'val' / 'c' / 'cut.jpg']
    for path in bad:
        write_truncated_jpeg(path)
    (tmp_path / 'train' / '.ipynb_checkpoints').mkdir()
    write_truncated_jpeg(tmp_path / 'train' / '.ipynb_checkpoints' / 'hidden.jpg')  # skipped, as in training
    assert verify.main(['--data-path', str(tmp_path), '--threads', '2']) == 1
    out, err = capsys.readouterr()
    assert [line.split('\t')[0] for line in out.splitlines()] == [str(p) for p in bad]
    assert all('image file is truncated' in line for line in out.splitlines())
    assert '19 images decoded' in err and '2 cannot be decoded' in err
    assert verify.main(['--data-path', str(tmp_path / 'train')]) == 1  # one split alone
    capsys.readouterr()
    assert verify.main(['--data-path', str(tmp_path / 'nowhere')]) == 2
    assert capsys.readouterr().err.startswith('error: ')


# ----------------------------------------------------------------------------- DATA.TRAIN_SUBSET
def test_class_balanced_subset_deals_the_images_evenly_over_the_classes():
    import numpy as np

    from data.folder import class_balanced_subset
    targets = np.array([0] * 10 + [1] * 2 + [2] * 10)
    for size, counts in ((12, [5, 2, 5]), (6, [2, 2, 2]), (7, [3, 2, 2]), (22, [10, 2, 10])):
        keep = class_balanced_subset(targets, 3, size)
        assert np.bincount(targets[keep], minlength=3).tolist() == counts
        assert len(set(keep.tolist())) == size and keep.tolist() == sorted(keep.tolist())
    # within a class, the first images of a fixed permutation: a subset grows by adding images
    assert set(class_balanced_subset(targets, 3, 6)) <= set(class_balanced_subset(targets, 3, 12))
    assert class_balanced_subset(targets, 3, 12).tolist() == class_balanced_subset(targets, 3, 12).tolist()


def test_train_subset_cuts_the_training_images_only_the_same_for_every_seed(tmp_path):
    from data.masking import build_pretrain_loader
    make_folder(tmp_path, train=(6, 5, 2), val=(3, 2, 2))
    full, val_full, _, _, _ = build_loader(make_config(tmp_path))
    subsets = []
    for seed in ('0', '5'):
        train, val, loader, _, _ = build_loader(make_config(tmp_path, 'DATA.TRAIN_SUBSET', '8', 'SEED', seed))
        assert len(train) == 8 and len(loader) == 2 and val.samples == val_full.samples
        assert [t for _, t in train.samples].count(2) == 2 and train.targets == [t for _, t in train.samples]
        assert set(train.samples) <= set(full.samples)
        subsets.append(train.samples)
    assert subsets[0] == subsets[1]
    # main_simmim.py's loader takes the same subset of the training images
    config = make_config(tmp_path, 'DATA.TRAIN_SUBSET', '8', 'DATA.MASK_PATCH_SIZE', '8', 'MODEL.TYPE', 'vit')
    pretrain, _ = build_pretrain_loader(config)
    assert pretrain.samples == subsets[0]
    with pytest.raises(DataError, match='DATA.TRAIN_SUBSET 14 is more than the 13 images'):
        build_loader(make_config(tmp_path, 'DATA.TRAIN_SUBSET', '14'))


def test_per_sample_seeding_leaves_the_accelerators_generators_alone(tmp_path, monkeypatch):
    """Only the CPU generator is reseeded for each sample: torch.manual_seed would also reseed every CUDA
    device's generator (which dropout and random selection on the GPU draw from) and, before CUDA is
    initialised, queue a lazy call with a captured stack trace for every image."""
    make_folder(tmp_path)

    def forbidden(seed):
        raise AssertionError('a CUDA generator was reseeded')
    monkeypatch.setattr(torch.cuda, 'manual_seed_all', forbidden)
    monkeypatch.setattr(torch.cuda, 'manual_seed', forbidden)
    _, _, loader, _, _ = build_loader(make_config(tmp_path))
    loader.sampler.set_epoch(0)
    assert len(all_batches(loader)) == 2


# ----------------------------------------------------------------------------- image modes
def write_png_16bit_grey(path, pixels):
    """A 16-bit greyscale PNG (colour type 0, big-endian samples) written byte by byte, not by PIL."""
    def chunk(kind, payload):
        return struct.pack('>I', len(payload)) + kind + payload + struct.pack('>I', zlib.crc32(kind + payload))
    h, w = pixels.shape
    header = struct.pack('>IIBBBBB', w, h, 16, 0, 0, 0, 0)
    rows = b''.join(b'\x00' + pixels[y].astype('>u2').tobytes() for y in range(h))  # filter byte 0 per row
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(rows))
                     + chunk(b'IEND', b''))


def test_16_bit_grey_images_are_scaled_to_8_bits_not_white(tmp_path):
    """PIL's convert('RGB') clips 16-bit values at 255, so a 16-bit grey image came out all white."""
    import numpy as np

    from data.folder import read_rgb, to_rgb
    values = (np.arange(16 * 12).reshape(12, 16) * 343).astype(np.uint16)  # 0 .. 65,513
    expected = np.round(values / 257.0).astype(np.uint8)  # 65535 -> 255
    by_pil = tmp_path / 'pil_16.png'
    Image.fromarray(values).save(by_pil)
    by_hand = tmp_path / 'hand_16.png'
    write_png_16bit_grey(by_hand, values)
    for path in (by_pil, by_hand):
        with Image.open(path) as img:
            assert img.mode.startswith('I'), img.mode
        rgb = read_rgb(str(path))
        assert rgb.mode == 'RGB' and rgb.size == (16, 12)
        pixels = np.asarray(rgb)
        for channel in range(3):
            assert np.array_equal(pixels[..., channel], expected), path
    # mode 'I' (32-bit ints, how older Pillow opened 16-bit PNGs) holds the same 16-bit range
    as_int32 = Image.fromarray(values.astype(np.int32))
    assert as_int32.mode == 'I'
    assert np.array_equal(np.asarray(to_rgb(as_int32))[..., 1], expected)
    # 8-bit images are unchanged
    grey = Image.fromarray(expected)
    assert np.array_equal(np.asarray(to_rgb(grey))[..., 0], expected)


def test_verify_stopped_by_ctrl_c_lists_the_bad_files_found_so_far(tmp_path, capsys, monkeypatch):
    """Ctrl-C during `python -m data.verify`: no traceback, the bad files found until then on stdout,
    one line on stderr saying how far it got, exit status 130."""
    from data import verify
    make_folder(tmp_path, train=(4, 3, 3), val=(3, 2, 2))
    bad = [tmp_path / 'train' / 'a' / 'cut.jpg', tmp_path / 'train' / 'c' / 'cut.jpg']
    for path in bad:
        write_truncated_jpeg(path)
    paths = [p for split in verify.splits(str(tmp_path)) for p in verify.image_paths(split)]
    stop_at = paths.index(str(bad[1])) + 2  # both bad files lie before the interruption
    real_decode, calls = verify._decode, []

    def decode_until_ctrl_c(path):
        calls.append(path)
        if len(calls) == stop_at:
            raise KeyboardInterrupt
        return real_decode(path)

    monkeypatch.setattr(verify, '_decode', decode_until_ctrl_c)
    assert verify.main(['--data-path', str(tmp_path), '--threads', '1', '--no-progress']) == 130
    out, err = capsys.readouterr()
    assert [line.split('\t')[0] for line in out.splitlines()] == [str(p) for p in bad]
    assert err.count('\n') == 1 and 'interrupted' in err and f'of {len(paths)} images' in err, err
    assert '2 cannot be decoded' in err
