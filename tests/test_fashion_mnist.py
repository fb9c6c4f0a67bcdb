"""DATA.DATASET fashion_mnist: reading IDX files and exporting them to an ImageFolder, with small IDX
files written here (the Debian package is never needed)."""
import argparse
import gzip
import os

import numpy as np
import pytest
from PIL import Image

import data.fashion_mnist as fashion
from config import get_config
from data import DataError, build_loader
from data.fashion_mnist import export_fashion_mnist, idx_file_names, read_idx, read_split

TRAIN_LABELS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 3]  # 12 training images
TEST_LABELS = [4, 0, 9, 4, 1, 2, 3, 5, 6, 7, 8]  # 11 test images, every class (an empty class is refused)


def write_idx(path, array):
    """An IDX file as in the original release: 0, 0, type 0x08, ndim, big-endian sizes, the bytes."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b''.join(int(n).to_bytes(4, 'big') for n in array.shape)
    with gzip.open(path, 'wb') as f:
        f.write(header + array.tobytes())


def images_for(labels, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)


@pytest.fixture
def idx_dir(tmp_path):
    """A folder with the four release files, small; returns (folder, {prefix: (images, labels)})."""
    folder = tmp_path / 'fashion'
    folder.mkdir()
    content = {}
    for prefix, labels, seed in (('train', TRAIN_LABELS, 0), ('t10k', TEST_LABELS, 1)):
        images = images_for(labels, seed)
        images_name, labels_name = idx_file_names(prefix)
        write_idx(folder / images_name, images)
        write_idx(folder / labels_name, labels)
        content[prefix] = (images, np.array(labels, dtype=np.uint8))
    return folder, content


def test_read_idx_gives_the_written_arrays(idx_dir):
    folder, content = idx_dir
    for prefix, (images, labels) in content.items():
        read_images, read_labels = read_split(str(folder), prefix)
        assert read_images.shape == (len(labels), 28, 28) and read_images.dtype == np.uint8
        assert np.array_equal(read_images, images) and np.array_equal(read_labels, labels)


def test_export_writes_train_from_train_and_val_from_t10k(idx_dir, tmp_path):
    folder, content = idx_dir
    root = export_fashion_mnist(str(folder), 28, str(tmp_path / 'unused_cache'))
    assert root == str(folder / 'fashion_mnist_28')  # next to the IDX files
    assert not (tmp_path / 'unused_cache').exists()
    for split, prefix in (('train', 'train'), ('val', 't10k')):
        images, labels = content[prefix]
        assert sorted(os.listdir(os.path.join(root, split))) == [str(c) for c in range(10)]  # every class
        files = {(int(c), int(name[:-4])) for c in os.listdir(os.path.join(root, split))
                 for name in os.listdir(os.path.join(root, split, c))}
        assert files == {(int(label), i) for i, label in enumerate(labels)}  # <label>/<index>.png
        for i, label in enumerate(labels):
            with Image.open(os.path.join(root, split, str(label), f'{i}.png')) as img:
                assert img.mode == 'RGB' and img.size == (28, 28)
                pixels = np.asarray(img)
            assert all(np.array_equal(pixels[..., c], images[i]) for c in range(3))  # lossless, grey as RGB
    mtime = os.stat(os.path.join(root, 'train')).st_mtime_ns
    os.remove(folder / idx_file_names('train')[0])  # exported once: the files are no longer needed
    assert export_fashion_mnist(str(folder), 28, '') == root
    assert os.stat(os.path.join(root, 'train')).st_mtime_ns == mtime


def test_export_resizes_to_the_image_size_and_builds_the_loaders(idx_dir):
    folder, _ = idx_dir
    opts = ['DATA.DATASET', 'fashion_mnist', 'DATA.DATA_PATH', str(folder), 'DATA.IMG_SIZE', '32',
            'DATA.BATCH_SIZE', '4', 'DATA.NUM_WORKERS', '0', 'MODEL.VIT.PATCH_SIZE', '4']
    config = get_config(argparse.Namespace(cfg='configs/demo/baseline.yaml', opts=opts))
    dataset_train, dataset_val, loader_train, loader_val, _ = build_loader(config)
    assert (len(dataset_train), len(dataset_val), len(dataset_train.classes)) == (12, 11, 10)
    assert dataset_train.root == str(folder / 'fashion_mnist_32' / 'train')
    assert sorted(dataset_val.targets) == sorted(TEST_LABELS)
    with Image.open(dataset_train.samples[0][0]) as img:
        assert img.size == (32, 32)
    x, y = next(iter(loader_val))
    assert x.shape == (4, 3, 32, 32) and y.tolist() == sorted(TEST_LABELS)[:4]


def test_default_folder_is_the_debian_package_and_the_export_goes_to_the_cache(idx_dir, tmp_path, monkeypatch):
    folder, _ = idx_dir
    monkeypatch.setattr(fashion, 'DEFAULT_DIR', str(folder))
    cache = tmp_path / 'cache'
    assert export_fashion_mnist('', 28, str(cache)) == str(cache / 'fashion_mnist_28')
    assert len(os.listdir(cache / 'fashion_mnist_28' / 'val' / '4')) == 2


def test_missing_files_name_the_apt_package(tmp_path, monkeypatch):
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(DataError) as info:
        export_fashion_mnist(str(empty), 28, str(tmp_path / 'cache'))
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message and str(empty) in message
    assert all(name in message for prefix in ('train', 't10k') for name in idx_file_names(prefix))
    assert os.listdir(empty) == []  # nothing written
    monkeypatch.setattr(fashion, 'DEFAULT_DIR', str(tmp_path / 'not_installed'))
    with pytest.raises(DataError, match='apt-get install dataset-fashion-mnist'):
        export_fashion_mnist('', 28, str(tmp_path / 'cache'))
    assert not (tmp_path / 'cache').exists()


def test_broken_idx_files_are_named(idx_dir):
    folder, _ = idx_dir
    images_name, labels_name = idx_file_names('train')
    path = folder / images_name
    good = path.read_bytes()
    with gzip.open(path, 'rb') as f:
        raw = f.read()
    with gzip.open(path, 'wb') as f:
        f.write(raw[:-10])  # cut short
    with pytest.raises(DataError, match=f"'{path}' holds .* bytes, but its header"):
        read_idx(str(path))
    path.write_bytes(good[:100])  # a cut gzip stream
    with pytest.raises(DataError, match='cannot read the IDX file'):
        read_idx(str(path))
    stream = gzip.compress(raw)  # a 10-byte header, then deflate blocks
    for corrupt in (stream[:10] + bytes(b ^ 0xFF for b in stream[10:13]) + stream[13:],  # zlib.error
                    stream[:-8] + bytes(b ^ 0xFF for b in stream[-8:-4]) + stream[-4:]):  # CRC: BadGzipFile
        path.write_bytes(corrupt)
        with pytest.raises(DataError, match='cannot read the IDX file'):
            read_idx(str(path))
    with gzip.open(path, 'wb') as f:
        f.write(b'\x00\x00\x0d\x03' + raw[4:])  # float type code
    with pytest.raises(DataError, match='not an IDX file of unsigned bytes'):
        read_idx(str(path))
    path.write_bytes(good)
    write_idx(folder / labels_name, TRAIN_LABELS[:-1])  # one label short
    with pytest.raises(DataError, match='has 12 images but .* 11 labels'):
        read_split(str(folder), 'train')
    write_idx(folder / labels_name, TRAIN_LABELS[:-1] + [10])
    with pytest.raises(DataError, match='label 10'):
        export_fashion_mnist(str(folder), 28, '')
    assert not any(name.startswith(('fashion_mnist_28', '.fashion_mnist_28')) for name in os.listdir(folder))


def test_main_finetune_without_the_files_exits_2_with_one_line(tmp_path, capsys, monkeypatch):
    import data.build
    import main_finetune
    monkeypatch.setattr(fashion, 'DEFAULT_DIR', str(tmp_path / 'not_installed'))
    monkeypatch.setattr(data.build, 'DEFAULT_CACHE_ROOT', str(tmp_path / 'cache'))  # no earlier export
    out = tmp_path / 'out'
    args = ['--cfg', 'configs/demo/baseline.yaml', '--output', str(out), '--opts', 'DATA.DATASET', 'fashion_mnist']
    assert main_finetune.run(args) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: Fashion-MNIST not found') and err.count('\n') == 1
    assert 'apt-get install dataset-fashion-mnist' in err
    assert not out.exists()
