"""Checked ImageFolders: every problem with a data folder becomes a `DataError` naming the path.

Every image is verified when the dataset is built (PIL `Image.open(path).verify()` in a thread
pool), so a broken file stops the run before any training rather than hours into an epoch. The cost
is one open and header parse per file (PNG: a CRC pass over the file; JPEG: the header only): the
threads hide file-system latency, and the parsing itself holds the GIL. Measured on 2 busy CPU
cores with files in the page cache: about 4,400 JPEGs (375x500) or 14,000 small PNGs per second, so
ImageNet-1k's 1.33 M files take a few minutes, and longer on a cold network file system. Each
process verifies the whole split.

What verify() reads is the header (and for PNG the chunk checksums), not the pixels: a JPEG cut
short passes it and fails only when decoded. Such a file raises a `DataError` naming it when it is
read (also from a loader worker), or with `skip_bad_images` it is skipped: the next image of the
split that decodes takes its place (deterministic, so a resumed run stays exact), a warning names it
and `decode_failures()` lists it for the log. `python -m data.verify` decodes every image once.

Hidden entries (names starting with '.', such as `.ipynb_checkpoints`) are not classes or images.
"""
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """A data folder, image file or data setting that cannot be used; the message names it."""

    def __init__(self, message=''):
        # A DataLoader worker's DataError reaches the main process rebuilt from the text "Caught
        # DataError in DataLoader worker process N. Original Traceback ...": keep its message only.
        if isinstance(message, str) and message.startswith('Caught DataError'):
            message = message.rstrip().splitlines()[-1].split('DataError: ', 1)[-1]
        super().__init__(message)


def short_list(items, limit=10):
    """'a, b, c' or 'a, b, ... (+N more)' for error messages about long lists."""
    items = list(items)
    shown = ', '.join(str(item) for item in items[:limit])
    return shown + (f', ... (+{len(items) - limit} more)' if len(items) > limit else '')


# Modes of 16-bit grey samples ('I': 32-bit ints, as older Pillow opened 16-bit PNGs): PIL's
# convert('RGB') clips them at 255, which turns almost every pixel white.
_16_BIT_GREY_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I')


def to_rgb(img):
    """`img` as an 8-bit RGB image; 16-bit grey scaled to 8 bits (value / 257, so 65535 -> 255)."""
    if img.mode in _16_BIT_GREY_MODES:
        pixels = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.rint(pixels / 257.0), 0, 255).astype(np.uint8))
    return img.convert('RGB')


def read_rgb(path):
    """ImageFolder loader: the image as RGB (16-bit grey scaled to 8 bits), or a DataError naming the
    file. EXIF orientation is not applied, as in torchvision's ImageFolder."""
    try:
        with open(path, 'rb') as f:
            return to_rgb(Image.open(f))
    # PIL reports broken files with many exception types (OSError, SyntaxError, ValueError,
    # struct.error, EOFError, DecompressionBombError...): re-raise any of them with the file name.
    except Exception as e:
        raise DataError(f"cannot decode image '{path}': {type(e).__name__}: {e}") from e


def _verify_one(path):
    """None if PIL can verify the file, else the reason."""
    try:
        with Image.open(path) as img:
            img.verify()
    except Exception as e:  # see read_rgb: the reason is reported, never swallowed
        return f'{type(e).__name__}: {e}'
    return None


def find_bad_images(paths, num_threads=None):
    """[(path, reason)] for the files PIL cannot verify, in the order of `paths`."""
    num_threads = num_threads or min(32, 4 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(num_threads) as pool:
        reasons = list(pool.map(_verify_one, paths, chunksize=256))
    return [(path, reason) for path, reason in zip(paths, reasons) if reason is not None]


def split_dir(root, split):
    """`root/split`, which must be a folder."""
    path = os.path.join(root, split)
    if not os.path.isdir(path):
        raise DataError(f"no '{split}/' folder in '{root}': the dataset root must hold train/ and val/ "
                        f"ImageFolders (<split>/<class>/<image>)")
    return path


def _hidden(name):
    return name.startswith('.')


def class_folders(path):
    """The sorted class folder names of an ImageFolder split; hidden folders are not classes."""
    classes = sorted(entry.name for entry in os.scandir(path) if entry.is_dir() and not _hidden(entry.name))
    if not classes:
        raise DataError(f"'{path}' has no class folders: expected <split>/<class>/<image>")
    return classes


def check_same_classes(train_dir, val_dir):
    train_classes, val_classes = set(class_folders(train_dir)), set(class_folders(val_dir))
    if train_classes != val_classes:
        raise DataError(f"the class folders of '{train_dir}' and '{val_dir}' differ: "
                        f"only in train: [{short_list(sorted(train_classes - val_classes))}], "
                        f"only in val: [{short_list(sorted(val_classes - train_classes))}]")


class CheckedImageFolder(ImageFolder):
    """torchvision's ImageFolder without hidden folders or files, which can skip images that fail
    to decode when read (see the module docstring)."""

    skip_bad_images = False
    failed = None  # with skip_bad_images: a uint8 flag per sample in shared memory, set by any worker

    def find_classes(self, directory):
        classes = class_folders(directory)
        return classes, {name: i for i, name in enumerate(classes)}

    def __getitem__(self, index):
        for offset in range(len(self.samples)):
            i = (index + offset) % len(self.samples)
            path, target = self.samples[i]
            try:
                sample = self.loader(path)
            except DataError as e:
                if not self.skip_bad_images:
                    raise
                if not self.failed[i]:
                    logger.warning('%s; skipped (DATA.SKIP_BAD_IMAGES): the next image takes its place', e)
                    self.failed[i] = 1
                continue
            if self.transform is not None:
                sample = self.transform(sample)
            if self.target_transform is not None:
                target = self.target_transform(target)
            return sample, target
        raise DataError(f"no image in '{self.root}' can be decoded")


def decode_failures(dataset):
    """The paths of `dataset` (a CheckedImageFolder) that failed to decode so far and were skipped."""
    if getattr(dataset, 'failed', None) is None:
        return []
    return [dataset.samples[i][0] for i in dataset.failed.nonzero().flatten().tolist()]


def log_decode_failures(dataset, log):
    """Warn in `log` about the images of `dataset` found undecodable (and skipped) since the last call,
    with the count so far; nothing when there are none."""
    failed = decode_failures(dataset)
    reported = getattr(dataset, 'reported_failures', set())
    new = [path for path in failed if path not in reported]
    if new:
        log.warning(f'DATA.SKIP_BAD_IMAGES: {len(new)} more image(s) of {dataset.root} failed to decode and are '
                    f'skipped ({len(failed)} so far, each replaced by the next image): {short_list(new)}')
        dataset.reported_failures = set(failed)
    return new


def _visible_image(root):
    def is_valid_file(path):
        parts = os.path.relpath(path, root).split(os.sep)
        return path.lower().endswith(IMG_EXTENSIONS) and not any(_hidden(part) for part in parts)
    return is_valid_file


def image_paths(path):
    """Every image file of an ImageFolder split, as the datasets here list them (hidden ones not)."""
    class_folders(path)
    dataset = CheckedImageFolder(path, loader=read_rgb, allow_empty=True, is_valid_file=_visible_image(path))
    return [p for p, _ in dataset.samples]


SUBSET_SEED = 0  # class_balanced_subset's draw: fixed, so that every SEED fine-tunes on the same images


def class_balanced_subset(targets, num_classes, size):
    """The sorted indices of `size` samples, as equal a number per class as possible: a class with fewer
    images gives them all and the rest is shared among the others. Drawn uniformly within each class by
    a fixed generator, so the same `targets` always give the same subset."""
    targets = np.asarray(targets)
    rng = np.random.default_rng(SUBSET_SEED)
    by_class = [rng.permutation(np.flatnonzero(targets == c)) for c in range(num_classes)]
    take, left = [0] * num_classes, size
    while left:  # deal one image per class in turn, skipping the classes that are used up
        open_classes = [c for c in range(num_classes) if take[c] < len(by_class[c])]
        for c in open_classes[:left]:
            take[c] += 1
        left -= min(left, len(open_classes))
    return np.sort(np.concatenate([indices[:n] for indices, n in zip(by_class, take)]))


def image_folder(path, transform, skip_bad_images=False, subset=0):
    """An ImageFolder over `path` with every image verified (`subset` > 0: only that many images,
    chosen by class_balanced_subset, are kept and verified).

    Raises DataError when `path` has no class folders, no images, a class folder without images,
    or (unless `skip_bad_images`) a file that cannot be decoded. With `skip_bad_images`, such files
    are dropped from the dataset and listed in a warning with their count, and files that verify but
    fail to decode later are skipped when read. Hidden folders are skipped with a note.
    """
    classes = class_folders(path)
    hidden = sorted(entry.name for entry in os.scandir(path) if entry.is_dir() and _hidden(entry.name))
    if hidden:
        logger.warning('skipping hidden folder(s) in %s (not classes): %s', path, short_list(hidden))
    dataset = CheckedImageFolder(path, transform=transform, loader=read_rgb, allow_empty=True,
                                 is_valid_file=_visible_image(path))
    if not dataset.samples:
        raise DataError(f"'{path}' has no images (looked for {', '.join(IMG_EXTENSIONS)} "
                        f"files in its class folders)")
    _check_no_empty_class(dataset, classes)
    if subset:
        if subset > len(dataset.samples):
            raise DataError(f"DATA.TRAIN_SUBSET {subset} is more than the {len(dataset.samples)} images in '{path}'")
        keep = class_balanced_subset(dataset.targets, len(classes), subset)
        dataset.samples = [dataset.samples[i] for i in keep]
        dataset.imgs, dataset.targets = dataset.samples, [t for _, t in dataset.samples]
        logger.info('DATA.TRAIN_SUBSET: %d of the images in %s', subset, path)
    start = time.perf_counter()
    bad = find_bad_images([p for p, _ in dataset.samples])
    logger.info('verified %d images in %s in %.1f s', len(dataset.samples), path, time.perf_counter() - start)
    if skip_bad_images:
        dataset.skip_bad_images = True
    if not bad:
        return _with_failure_flags(dataset)
    listing = short_list(f"'{p}' ({reason})" for p, reason in bad)
    if not skip_bad_images:
        raise DataError(f'{len(bad)} image file(s) in {path} cannot be decoded: {listing}; fix or remove '
                        f'them, or set DATA.SKIP_BAD_IMAGES True to skip them')
    logger.warning('skipping %d image file(s) in %s that cannot be decoded (DATA.SKIP_BAD_IMAGES): %s',
                   len(bad), path, listing)
    bad_paths = {p for p, _ in bad}
    dataset.samples = [s for s in dataset.samples if s[0] not in bad_paths]
    dataset.imgs = dataset.samples
    dataset.targets = [target for _, target in dataset.samples]
    if not dataset.samples:
        raise DataError(f"'{path}' has no images left after skipping {len(bad)} that cannot be decoded")
    _check_no_empty_class(dataset, classes)
    return _with_failure_flags(dataset)


def _check_no_empty_class(dataset, classes):
    counts = torch.bincount(torch.tensor(dataset.targets), minlength=len(classes)).tolist()
    empty = [name for name, count in zip(classes, counts) if count == 0]
    if empty:
        raise DataError(f"class folder(s) without images in '{dataset.root}': {short_list(empty)}; "
                        'every class needs images (remove the folder or add its images)')


def _with_failure_flags(dataset):
    if dataset.skip_bad_images:  # created before the loader workers start, so they share it
        dataset.failed = torch.zeros(len(dataset.samples), dtype=torch.uint8).share_memory_()
    return dataset
