"""The demo dataset: scikit-learn's bundled handwritten digits as a train/val ImageFolder.

1,797 real 8x8 grey images (values 0..16) of 10 classes ship with scikit-learn, so the demo needs
no download. They are exported once to

    <cache_root>/digits_<img_size>/{train,val}/<class 0..9>/<index>.png

with a fixed, class-stratified 80/20 split (1,437 / 360), each image scaled to 0..255, upscaled
(bicubic) to img_size x img_size and saved as RGB, and then read like any other ImageFolder.

The export is atomic: it is written into a temporary folder next to the final one and renamed, so
a killed export never leaves a half-written dataset, and when several processes export at once the
first rename wins and the others use its folder.
"""
import logging
import os
import shutil
import socket
import tempfile

import numpy as np
from PIL import Image

from .folder import DataError

logger = logging.getLogger(__name__)

SPLIT_SEED = 0  # fixed, not config.SEED: the exported split must not depend on the run
VAL_FRACTION = 0.2


def _temp_prefix(img_size):
    # Host and pid in the name let a later export recognise temporaries whose writer has died.
    return f'.digits_{img_size}.tmp.{socket.gethostname()}.{os.getpid()}.'


def _remove_dead_temporaries(cache_root, img_size):
    """Delete temporaries left by killed exports on this host; others (live, or another host's
    on a shared file system) are left alone and never read."""
    host_prefix = f'.digits_{img_size}.tmp.{socket.gethostname()}.'
    for entry in os.scandir(cache_root):
        if not (entry.is_dir() and entry.name.startswith(host_prefix)):
            continue
        pid = entry.name[len(host_prefix):].split('.')[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            logger.info('removing %s, left by an interrupted digits export', entry.path)
            shutil.rmtree(entry.path, ignore_errors=True)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


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
    final_dir = os.path.join(cache_root, f'digits_{img_size}')
    if os.path.isdir(final_dir):
        return final_dir
    try:
        os.makedirs(cache_root, exist_ok=True)
        _remove_dead_temporaries(cache_root, img_size)
        temp_dir = tempfile.mkdtemp(prefix=_temp_prefix(img_size), dir=cache_root)
    except OSError as e:
        raise DataError(f"cannot create the digits cache folder '{cache_root}': {e}") from e
    try:
        logger.info('exporting scikit-learn digits at %d px to %s', img_size, final_dir)
        _write_split_images(temp_dir, img_size)
        os.rename(temp_dir, final_dir)
    except OSError as e:
        if not os.path.isdir(final_dir):
            raise DataError(f"cannot export the digits dataset to '{final_dir}': {e}") from e
        # Another process renamed its export first: use that one.
    finally:
        if os.path.isdir(temp_dir):
            shutil.rmtree(temp_dir, ignore_errors=True)
    return final_dir
