"""Fashion-MNIST (Xiao et al. 2017) from its original IDX files, as a train/val ImageFolder.

Debian and Ubuntu package the original release: `apt-get install dataset-fashion-mnist` puts

    /usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz

on the machine: 60,000 training and 10,000 test images, 28x28 grey (0..255), 10 classes (LABELS).
The four files are read from DATA.DATA_PATH when it is set, else from that folder, and exported
once, as the digits are (data/digits.py, atomically via data/export.py), to

    <DATA.DATA_PATH or ~/.cache/pss>/fashion_mnist_<img_size>/{train,val}/<label 0..9>/<index>.png

train/ from the train files, val/ from the t10k files (the official test set), each image upscaled
(bicubic) to img_size x img_size and saved as RGB; <index> is the image's position in its IDX file.
"""
import gzip
import os
import zlib

import numpy as np
from PIL import Image

from .export import export_once
from .folder import DataError

DEFAULT_DIR = '/usr/share/datasets/fashion-mnist'  # where dataset-fashion-mnist installs the files
APT_PACKAGE = 'dataset-fashion-mnist'
LABELS = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag',
          'Ankle boot')  # class names of the labels 0..9
SPLITS = {'train': 'train', 'val': 't10k'}  # ImageFolder split -> IDX file prefix
_IDX_UBYTE = 0x08  # IDX type code of unsigned bytes


def idx_file_names(prefix):
    """The (images, labels) file names of one split of the original release."""
    return f'{prefix}-images-idx3-ubyte.gz', f'{prefix}-labels-idx1-ubyte.gz'


def read_idx(path):
    """An IDX file (gzip-compressed) as a uint8 array of the shape its header gives.

    IDX: two zero bytes, a type byte (0x08: unsigned bytes), the number of dimensions, one
    big-endian int32 per dimension, then the values in C order. Raises DataError naming the file
    when it cannot be read or its header and size disagree.
    """
    try:
        with gzip.open(path, 'rb') as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # missing, unreadable, not gzip, cut short or corrupt
        raise DataError(f"cannot read the IDX file '{path}': {type(e).__name__}: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE:
        raise DataError(f"'{path}' is not an IDX file of unsigned bytes (header {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected:
        raise DataError(f"IDX file '{path}' holds {len(raw)} bytes, but its header {shape} needs {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_split(source_dir, prefix):
    """(images [n, 28, 28] uint8, labels [n] uint8) of one split ('train' or 't10k'), checked."""
    images_name, labels_name = idx_file_names(prefix)
    images = read_idx(os.path.join(source_dir, images_name))
    labels = read_idx(os.path.join(source_dir, labels_name))
    if images.ndim != 3 or labels.ndim != 1:
        raise DataError(f"'{os.path.join(source_dir, images_name)}' must hold [n, rows, cols] images and "
                        f"'{labels_name}' [n] labels; found {images.shape} and {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"'{source_dir}': {images_name} has {len(images)} images but {labels_name} "
                        f'{len(labels)} labels')
    if labels.size and labels.max() >= len(LABELS):
        raise DataError(f"'{os.path.join(source_dir, labels_name)}' has label {labels.max()}; "
                        f'Fashion-MNIST labels are 0..{len(LABELS) - 1}')
    return images, labels


def _missing_idx_files(source_dir):
    names = [name for prefix in SPLITS.values() for name in idx_file_names(prefix)]
    return [name for name in names if not os.path.isfile(os.path.join(source_dir, name))]


def has_idx_files(source_dir):
    """Whether `source_dir` holds the four IDX files (not checked further)."""
    return not _missing_idx_files(source_dir)


def check_source(source_dir):
    """Raise DataError (naming the apt package) unless `source_dir` holds the four IDX files."""
    missing = _missing_idx_files(source_dir)
    if missing:
        raise DataError(f"Fashion-MNIST not found: '{source_dir}' lacks {', '.join(missing)}; install it with "
                        f"'apt-get install {APT_PACKAGE}' (files in {DEFAULT_DIR}) or set DATA.DATA_PATH "
                        '(--data-path) to a folder with the four IDX files')


def _write_split_images(out_dir, source_dir, img_size):
    for split, prefix in SPLITS.items():
        images, labels = read_split(source_dir, prefix)
        for label in range(len(LABELS)):
            os.makedirs(os.path.join(out_dir, split, str(label)))
        for i, (pixels, label) in enumerate(zip(images, labels)):
            img = Image.fromarray(pixels)
            if img.size != (img_size, img_size):
                img = img.resize((img_size, img_size), Image.Resampling.BICUBIC)
            img.convert('RGB').save(os.path.join(out_dir, split, str(label), f'{i}.png'))


def export_fashion_mnist(data_path, img_size, cache_root):
    """The Fashion-MNIST ImageFolder root for `img_size` (see the module docstring).

    `data_path`: the folder with the IDX files, which also receives the export; empty: the
    package's folder, with the export under `cache_root`. The files are needed only to export.
    """
    source_dir, export_root = (data_path, data_path) if data_path else (DEFAULT_DIR, cache_root)
    name = f'fashion_mnist_{img_size}'
    if not os.path.isdir(os.path.join(export_root, name)):
        check_source(source_dir)
    return export_once(export_root, name, lambda out_dir: _write_split_images(out_dir, source_dir, img_size),
                       f"Fashion-MNIST from '{source_dir}' at {img_size} px")
