"""The demo dataset: scikit-learn's bundled handwritten digits as a train/val ImageFolder.

1,797 real 8x8 grey images (values 0..16) of 10 classes ship with scikit-learn, so the demo needs
no download. They are exported once to

    <cache_root>/digits_<img_size>/{train,val}/<class 0..9>/<index>.png

with a fixed, class-stratified 80/20 split (1,437 / 360), each image scaled to 0..255, upscaled
(bicubic) to img_size x img_size and saved as RGB, and then read like any other ImageFolder.

The export is atomic (data/export.py): a killed export never leaves a half-written dataset, and
when several processes export at once the first one's folder is used.
"""
import os

import numpy as np
from PIL import Image

from .export import export_once

SPLIT_SEED = 0  # fixed, not config.SEED: the exported split must not depend on the run
VAL_FRACTION = 0.2


def _write_split_images(out_dir, img_size):
    # scikit-learn is imported here so that only the digits demo pays for its import.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    indices = np.arange(len(digits.target))
    train_idx, val_idx = train_test_split(indices, test_size=VAL_FRACTION, random_state=SPLIT_SEED,
                                          stratify=digits.target)
    for split, split_idx in (('train', train_idx), ('val', val_idx)):
        for label in range(10):
            os.makedirs(os.path.join(out_dir, split, str(label)))
        for i in split_idx:
            pixels = np.round(digits.images[i] * (255.0 / 16.0)).astype(np.uint8)  # [8, 8], 0..16 -> 0..255
            img = Image.fromarray(pixels).resize((img_size, img_size), Image.Resampling.BICUBIC)
            img.convert('RGB').save(os.path.join(out_dir, split, str(digits.target[i]), f'{i}.png'))


def export_digits(cache_root, img_size):
    """The digits ImageFolder root for `img_size`, exported under `cache_root` unless it exists."""
    # A lambda, so that _write_split_images is looked up when the export runs (tests replace it).
    return export_once(cache_root, f'digits_{img_size}', lambda out_dir: _write_split_images(out_dir, img_size),
                       f'the scikit-learn digits at {img_size} px')
