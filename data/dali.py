"""The NVIDIA DALI input pipeline (DATA.LOADER 'dali'): decode and augment on the GPU.

    loader = DaliLoader(dataset, sampler, config, training=True)   # data.build_loader builds it
    set_train_epoch(loader, epoch, start_batch=n)                   # as for the default loader
    for images, targets in loader: ...                              # images on the loader's device

The loader behaves as the default DataLoader does in the training loop: `len(loader)`, `.sampler`
(the same sampler object: ResumableDistributedSampler, RepeatedAugmentationSampler or
ExactDistributedSampler), `.dataset`, and batches of (images [B, 3, S, S] float32, targets [B]).

Device: on CUDA, JPEGs are decoded with device='mixed' (nvJPEG, or the hardware decoder where the
GPU has one) and every operator runs on the GPU of the process; without CUDA (or device='cpu') the
same graph runs with CPU operators (device_id=None), which is what the tests use.

Order: each batch's files are the sampler's, in the sampler's order, fed to DALI through
fn.external_source, so the batches hold the same images as the default loader's, over any number
of processes and after a mid-epoch resume. DALI draws its random numbers per pipeline, not per
sample: the pipeline is seeded by (SEED, epoch, rank, first batch) of the pass that builds it and
its random stream runs on over the epochs. An uninterrupted run is repeatable; a resumed one gets
the same batches, with different augmentation draws after the resume. Random erasing (timm's, on
the device batch) is seeded per batch, so it is the same either way.

Images DALI cannot decode are found before training (data/folder.py verifies with PIL; here every
file's signature is read and a JPEG without its end marker is decoded once): a DataError names them,
or with DATA.SKIP_BAD_IMAGES the next image takes each one's place, as with the default loader. A
file that fails later stops the run with a DataError naming it (or is skipped the same way).
"""
import contextlib
import functools
import logging
import os
import random
import re
import sys
import tempfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.data.random_erasing import RandomErasing

from .folder import DataError, short_list
from .seeding import sample_seed

logger = logging.getLogger(__name__)

LOADERS = ('torch', 'dali')
RRC_RATIO = (3 / 4, 4 / 3)  # timm's RandomResizedCrop aspect range (width / height)
FILL = 128  # fill of rotate / shear / translate: DALI takes one value for all channels (timm: the mean pixel)
NUM_BINS = 101  # RandAugment magnitudes 0.0, 0.1, ..., 10.0 (timm's scale, in steps of 0.1)


def import_dali():
    """The nvidia.dali module, or a DataError saying how to install it."""
    try:
        import nvidia.dali as dali
    except ImportError as e:
        raise DataError(f"DATA.LOADER 'dali' needs NVIDIA DALI, which cannot be imported ({e}): "
                        "pip install -r requirements-dali.txt, or set DATA.LOADER torch") from None
    return dali


# --- RandAugment as timm's 'rand-m9-mstd0.5-inc1' ----------------------------------------------------
def parse_rand_augment(policy):
    """timm's RandAugment string as {'m', 'n', 'mstd', 'inc', 'p'}, None for 'none' / '', or a
    DataError for what this pipeline does not implement (AutoAugment, AugMix, mmax, weighted ops)."""
    if policy in ('none', ''):
        return None
    parts = policy.split('-')
    if parts[0] != 'rand':
        raise DataError(f"AUG.AUTO_AUGMENT '{policy}' is not available with DATA.LOADER dali, which implements "
                        "timm's RandAugment ('rand-m9-mstd0.5-inc1' and other 'rand-...' strings) only")
    params = {'m': 10.0, 'n': 2, 'mstd': 0.0, 'inc': 0, 'p': 0.5}  # timm's defaults
    for part in parts[1:]:
        match = re.fullmatch(r'(mstd|inc|m|n|p)(\d+(?:\.\d*)?)', part)
        if not match:
            raise DataError(f"AUG.AUTO_AUGMENT '{policy}': '{part}' is not available with DATA.LOADER dali "
                            "(it takes m<magnitude>, n<ops>, mstd<std>, inc<0|1>, p<prob>)")
        key, value = match.groups()
        params[key] = int(value) if key in ('n', 'inc') else float(value)
    if params['mstd'] > 100:  # timm: uniform in [0, m]
        params['mstd'] = float('inf')
    if not 0 <= params['m'] <= 10:
        raise DataError(f"AUG.AUTO_AUGMENT '{policy}': magnitude {params['m']:g} is outside timm's [0, 10]")
    return params


def _posterize_mask(bits_to_keep):
    # keep the high bits; 0 bits give a black image, as timm's increasing posterize at magnitude 10
    return np.uint8((0xFF << (8 - min(8, max(0, bits_to_keep)))) & 0xFF)


def _sharpness_kernel(factor):
    """PIL's ImageEnhance.Sharpness(factor) as a 3x3 filter: the image blended with PIL's smoothing."""
    smooth = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float32) / 13
    identity = np.zeros((3, 3), dtype=np.float32)
    identity[1, 1] = 1
    return (1 - factor) * smooth + factor * identity


def _timm_ops(increasing, size):
    """timm's 15 RandAugment ops ('inc1': the increasing variants) as (apply, to_param, negate,
    param_on_data_device), then the identity (an op skipped by its probability). `to_param` is timm's
    level-to-argument formula of the magnitude m in [0, 10], negated first where `negate`."""
    from nvidia.dali import fn, types
    from nvidia.dali.auto_aug import augmentations as a

    warp = dict(fill_value=FILL, interp_type=types.INTERP_LINEAR)
    if increasing:
        def enhance(m):
            return np.float32(max(0.1, 1.0 + 0.09 * m))
        negate = True
        posterize = lambda m: _posterize_mask(4 - int(0.4 * m))  # noqa: E731
        solarize = lambda m: np.float32(256 - min(256, int(25.6 * m)))  # noqa: E731
    else:
        def enhance(m):
            return np.float32(0.18 * m + 0.1)
        negate = False
        posterize = lambda m: _posterize_mask(int(0.4 * m))  # noqa: E731
        solarize = lambda m: np.float32(min(256, int(25.6 * m)))  # noqa: E731
    return [
        (lambda x: a.auto_contrast.op(x, None), None, False, False),
        (lambda x: fn.equalize(x), None, False, False),  # OpenCV's formula; PIL's differs slightly
        (lambda x: a.invert.op(x, None), None, False, False),
        (lambda x, p: a.rotate.op(x, p, **warp), lambda m: np.float32(3 * m), True, False),
        (a.posterize.op, posterize, False, True),
        (a.solarize.op, solarize, False, True),
        (a.solarize_add.op, lambda m: np.uint8(min(128, int(11 * m))), False, True),
        (a.color.op, enhance, negate, False),
        (a.contrast.op, enhance, negate, False),
        (a.brightness.op, enhance, negate, False),
        (lambda x, p: fn.filter(x, p), lambda m: _sharpness_kernel(enhance(m)), negate, True),
        (lambda x, p: a.shear_x.op(x, p, **warp), lambda m: np.float32([0.03 * m, 0]), True, False),
        (lambda x, p: a.shear_y.op(x, p, **warp), lambda m: np.float32([0, 0.03 * m]), True, False),
        (lambda x, p: a.translate_x.op(x, p, (size, size), **warp), lambda m: np.float32([0.045 * m, 0]), True, False),
        (lambda x, p: a.translate_y.op(x, p, (size, size), **warp), lambda m: np.float32([0, 0.045 * m]), True, False),
        (lambda x: x, None, False, False),
    ]


def _param_table(to_param, negate):
    """Row 2 * b + s: the parameter at magnitude b / 10, negated where s = 1 (and `negate`)."""
    return np.stack([to_param((-1 if negate and sign else 1) * b / 10) for b in range(NUM_BINS) for sign in (0, 1)])


def _apply_op(apply, table, param_on_data_device, images, index):
    from nvidia.dali import types
    if table is None:
        return apply(images)
    param = types.Constant(table, device=images.device if param_on_data_device else 'cpu')[index]
    return apply(images, param)


def rand_augment(images, params, size):
    """timm's RandAugment on a DALI batch: `n` layers, each picks one of the 15 ops uniformly (with
    replacement), applies it with probability `p` at magnitude N(m, mstd) clipped to [0, 10], in
    steps of 0.1, negated with probability 1/2 where timm negates it."""
    from nvidia.dali import fn, types
    from nvidia.dali import math as dmath
    from nvidia.dali.auto_aug.core import select
    from nvidia.dali.pipeline import do_not_convert
    # Only `select` branches on data; the ops are called as they are (through DALI's AutoGraph,
    # building a pipeline took many seconds), with their parameter tables computed here once.
    ops = [do_not_convert(functools.partial(_apply_op, apply, None if to_param is None else
                                            _param_table(to_param, negate), on_data_device))
           for apply, to_param, negate, on_data_device in _timm_ops(bool(params['inc']), size)]
    identity = len(ops) - 1
    for _ in range(params['n']):
        op = fn.random.uniform(values=list(range(identity)), dtype=types.INT32)
        if params['p'] < 1:
            applied = fn.random.coin_flip(probability=params['p'], dtype=types.INT32)
            op = op * applied + identity * (1 - applied)
        if params['mstd'] == float('inf'):
            magnitude = fn.random.uniform(range=[0.0, params['m']])
        elif params['mstd'] > 0:
            magnitude = fn.random.normal(mean=params['m'], stddev=params['mstd'])
        else:
            magnitude = None
        if magnitude is None:
            magnitude_bin = round(params['m'] * 10)
        else:
            magnitude_bin = fn.cast(dmath.clamp(magnitude, 0.0, 10.0) * 10.0, dtype=types.INT32)  # rounds
        sign = fn.random.uniform(values=[0, 1], dtype=types.INT32)
        images = select(ops, op, images, index=magnitude_bin * 2 + sign)
    return images


def _color_jitter(images, strength):
    """torchvision's ColorJitter(strength, strength, strength) in a fixed order (torchvision shuffles
    it): brightness, contrast around the mean grey (as PIL), saturation."""
    from nvidia.dali import fn
    from nvidia.dali.auto_aug import augmentations as a

    def factor():
        return fn.random.uniform(range=[max(0.0, 1 - strength), 1 + strength])
    images = a.brightness.op(images, factor())
    images = a.contrast.op(images, factor())
    return a.color.op(images, factor())


# --- the pipelines ---------------------------------------------------------------------------------
def _interp(name):
    from nvidia.dali import types
    return {'bicubic': types.INTERP_CUBIC, 'bilinear': types.INTERP_LINEAR, 'nearest': types.INTERP_NN,
            'random': types.INTERP_CUBIC}[name]


def _normalize(images, mirror=0):
    from nvidia.dali import fn, types
    return fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout='CHW', mirror=mirror,
                                    mean=[255 * m for m in IMAGENET_DEFAULT_MEAN],
                                    std=[255 * s for s in IMAGENET_DEFAULT_STD])


def _train_graph(source, settings, gpu):
    """timm's training transform: RandomResizedCrop (decoded with the crop), flip, RandAugment (or
    colour jitter), normalisation. Random erasing follows on the torch batch."""
    from nvidia.dali import fn, types
    files, labels = fn.external_source(source=source, num_outputs=2, batch=True, cycle='raise',
                                       dtype=[types.UINT8, types.INT64])
    images = fn.decoders.image_random_crop(files, device='mixed' if gpu else 'cpu', output_type=types.RGB,
                                           random_area=list(settings['scale']), random_aspect_ratio=list(RRC_RATIO),
                                           num_attempts=10, adjust_orientation=False)
    size = settings['size']
    if settings['interpolation'] == 'random':  # timm: bilinear or bicubic, per image
        interp = fn.random.choice([types.INTERP_LINEAR, types.INTERP_CUBIC])
    else:
        interp = _interp(settings['interpolation'])
    images = fn.resize(images, size=[size, size], interp_type=interp, antialias=True)
    if settings['rand_augment'] is not None:
        images = rand_augment(images, settings['rand_augment'], size)
    elif settings['color_jitter'] > 0:  # timm turns colour jitter off when RandAugment is on
        images = _color_jitter(images, settings['color_jitter'])
    # flipping last instead of before RandAugment: its geometric ops are symmetric in distribution
    mirror = fn.random.coin_flip(probability=settings['hflip']) if settings['hflip'] > 0 else 0
    return _normalize(images, mirror), labels


def _centre(length, size):
    """torchvision's CenterCrop offset, int(round((length - size) / 2)) with Python's rounding of
    halves to even, in DALI integer arithmetic."""
    half = (length - size) // 2
    return half + ((length - size) & 1) * (half & 1)


def _val_graph(source, settings, gpu):
    """The default loader's validation transform: the shorter side resized to 256/224 of IMG_SIZE
    (the longer one as torchvision rounds it), the centre crop; or a plain resize to IMG_SIZE."""
    from nvidia.dali import fn, types
    from nvidia.dali import math as dmath
    files, labels = fn.external_source(source=source, num_outputs=2, batch=True, cycle='raise',
                                       dtype=[types.UINT8, types.INT64])
    images = fn.decoders.image(files, device='mixed' if gpu else 'cpu', output_type=types.RGB,
                               adjust_orientation=False)
    size, interp = settings['size'], _interp(settings['interpolation'])
    if settings['test_crop']:
        resize = int(256 / 224 * size)  # as build_transform computes it
        shape = fn.peek_image_shape(files, dtype=types.INT32, adjust_orientation=False)  # H, W, C
        height, width = shape[0], shape[1]
        shorter = dmath.min(height, width)
        out_h, out_w = (resize * height) // shorter, (resize * width) // shorter
        images = fn.resize(images, resize_x=fn.cast(out_w, dtype=types.FLOAT),
                           resize_y=fn.cast(out_h, dtype=types.FLOAT), interp_type=interp, antialias=True)
        start = fn.stack(_centre(out_h, size), _centre(out_w, size))
        images = fn.slice(images, start=start, shape=[size, size], axis_names='HW')
    else:
        images = fn.resize(images, size=[size, size], interp_type=interp, antialias=True)
    return _normalize(images), labels


def settings_from_config(config):
    """What the pipelines read from the config, checked: a DataError for what DALI cannot do."""
    aug = config.AUG
    return {'size': config.DATA.IMG_SIZE, 'interpolation': config.DATA.INTERPOLATION,
            'test_crop': config.TEST.CROP, 'scale': tuple(aug.SCALE), 'hflip': aug.HFLIP,
            'rand_augment': parse_rand_augment(aug.AUTO_AUGMENT), 'color_jitter': aug.COLOR_JITTER}


def build_pipeline(graph, source, settings, batch_size, num_threads, device, seed):
    """A built DALI pipeline running `graph` on `device` (cpu: CPU operators, device_id None)."""
    from nvidia.dali import pipeline_def
    gpu = device.type == 'cuda'

    @pipeline_def(enable_conditionals=True)
    def pipeline():
        return graph(source, settings, gpu)
    pipe = pipeline(batch_size=batch_size, num_threads=num_threads, device_id=device.index if gpu else None,
                    seed=seed % 2 ** 31, prefetch_queue_depth=2)
    pipe.build()
    return pipe


# --- images DALI cannot decode -------------------------------------------------------------------------
_SIGNATURES = ((b'\xff\xd8\xff', 'JPEG'), (b'\x89PNG\r\n\x1a\n', 'PNG'), (b'BM', 'BMP'), (b'II*\x00', 'TIFF'),
               (b'MM\x00*', 'TIFF'), (b'\x00\x00\x00\x0cjP  ', 'JPEG 2000'), (b'\xff\x4f\xff\x51', 'JPEG 2000'),
               (b'GIF8', 'GIF')) + tuple((f'P{i}'.encode(), 'PNM') for i in range(1, 7))
DALI_FORMATS = ('JPEG', 'PNG', 'BMP', 'TIFF', 'JPEG 2000', 'PNM', 'WebP')


def file_format(head):
    """The image format of a file from its first 16 bytes, or None."""
    if head[:4] == b'RIFF' and head[8:12] == b'WEBP':
        return 'WebP'
    return next((name for signature, name in _SIGNATURES if head.startswith(signature)), None)


def _scan(path):
    """(format, whether a JPEG lacks its end-of-image marker in its last 64 bytes)."""
    with open(path, 'rb') as f:
        head = f.read(16)
        f.seek(max(0, os.path.getsize(path) - 64))
        tail = f.read()
    fmt = file_format(head)
    return fmt, fmt == 'JPEG' and b'\xff\xd9' not in tail


@contextlib.contextmanager
def _captured_stderr():
    """Native writes to file descriptor 2 (DALI's decoders print their errors there) go to the
    yielded list's one string instead of the terminal, so that a bad file is reported once."""
    captured = ['']
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode='w+b') as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured[0] = tmp.read().decode(errors='replace')


def decode_error(path):
    """Why DALI's CPU decoder cannot decode `path`, or None when it can."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1)
    def decode():
        return fn.decoders.image(fn.external_source(name='file', dtype=types.UINT8), device='cpu',
                                 output_type=types.RGB, adjust_orientation=False)
    with _captured_stderr() as native:
        pipe = decode()
        pipe.build()
        pipe.feed_input('file', [np.fromfile(path, dtype=np.uint8)])
        try:
            pipe.run()
            return None
        except RuntimeError as e:
            error = e
        finally:
            del pipe
    lines = [re.sub(r'\x1b\[[0-9;]*m', '', line).strip() for line in native[0].splitlines()]
    lines = [line.rsplit('] ', 1)[-1] for line in lines if line]
    return lines[-1] if lines else _first_reason(error)


def _first_reason(error):
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reasons = [line for line in lines if 'decode' in line.lower() or 'nvimagecodec' in line.lower()]
    return (reasons or lines or ['unknown DALI error'])[-1]


def check_images(dataset, skip_bad_images, num_threads=None):
    """Find the images of `dataset` (a CheckedImageFolder) that DALI cannot decode: formats it does
    not read, and JPEGs cut short (no end marker, and DALI's decoder fails on them). Raises a
    DataError listing them, or with `skip_bad_images` flags them in `dataset.failed` (the next
    image takes each one's place) with a warning."""
    paths = [path for path, _ in dataset.samples]
    num_threads = num_threads or min(32, 4 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(num_threads) as pool:  # file reads: the threads overlap their latency
        scans = list(pool.map(_scan, paths, chunksize=256))
    bad = {}
    for index, (path, (fmt, no_end_marker)) in enumerate(zip(paths, scans)):
        if fmt not in DALI_FORMATS:
            bad[index] = f"{fmt or 'unknown'} format, which DALI does not decode (it reads {', '.join(DALI_FORMATS)})"
        elif no_end_marker:
            reason = decode_error(path)  # a complete JPEG may carry data after its end marker
            if reason is not None:
                bad[index] = f'JPEG cut short (no end-of-image marker): {reason}'
    if not bad:
        return
    listing = short_list(f"'{paths[i]}' ({reason})" for i, reason in bad.items())
    if not skip_bad_images:
        raise DataError(f'{len(bad)} image file(s) in {dataset.root} cannot be decoded by DALI: {listing}; fix or '
                        'remove them, set DATA.SKIP_BAD_IMAGES True to skip them, or use DATA.LOADER torch')
    logger.warning('skipping %d image file(s) in %s that DALI cannot decode (DATA.SKIP_BAD_IMAGES; the next image '
                   'takes the place of each): %s', len(bad), dataset.root, listing)
    for index in bad:
        dataset.failed[index] = 1
    if bool(dataset.failed.all()):
        raise DataError(f"no image in '{dataset.root}' can be decoded by DALI")


# --- the loader ----------------------------------------------------------------------------------------
class DecodeFailure(RuntimeError):
    """DALI could not decode the file at dataset index `index` (None: not found); the message names it."""

    def __init__(self, index, message):
        super().__init__(message)
        self.index = index


class _Feed:
    """A pipeline's fn.external_source: every pass over it (DALI starts the next one when a pass
    ends: cycle='raise') reads the files of `batches` as they are when DALI asks for the first."""

    def __init__(self, loader):
        self.loader = loader
        self.batches = []  # lists of dataset indices
        self.in_flight = deque()  # the batches DALI has taken and not returned yet

    def __iter__(self):
        return self._read()

    def _read(self):
        for batch in self.batches:
            files, labels = [], []
            for index in batch:
                path, target = self.loader.dataset.samples[self.loader.replacement(index)]
                files.append(np.fromfile(path, dtype=np.uint8))
                labels.append(np.array(target, dtype=np.int64))
            self.in_flight.append(batch)
            yield files, labels


class DaliLoader:
    """Batches of (images, targets) from a DALI pipeline, in the order of `sampler` (see the module
    docstring). `training`: the training transform, full batches only (drop_last), random erasing;
    else the validation transform, every batch of the sampler including a last partial one.
    `device`: 'cuda[:i]' or 'cpu' (default: the current CUDA device where there is one, else cpu);
    `num_threads`: DALI's CPU threads (default DATA.NUM_WORKERS, at least 1).

    The pipeline is built on the first pass (a second or so: the RandAugment graph has some 700
    operators) and kept for the next ones; a pass left before its end, or stopped by a file that
    cannot be decoded, builds a new one.
    """

    def __init__(self, dataset, sampler, config, training, device=None, num_threads=None):
        import_dali()
        if device is None:
            device = torch.device('cuda', torch.cuda.current_device()) if torch.cuda.is_available() else 'cpu'
        self.device = torch.device(device)
        if self.device.type == 'cuda' and self.device.index is None:
            self.device = torch.device('cuda', torch.cuda.current_device())
        self.dataset, self.sampler, self.training = dataset, sampler, training
        self.batch_size = config.DATA.BATCH_SIZE
        self.num_threads = num_threads or max(1, config.DATA.NUM_WORKERS)
        self.seed = config.SEED
        self.settings = settings_from_config(config)
        self.skip_bad_images = config.DATA.SKIP_BAD_IMAGES
        aug = config.AUG
        self.erasing = (RandomErasing(aug.REPROB, mode=aug.REMODE, max_count=aug.RECOUNT, device=str(self.device))
                        if training and aug.REPROB > 0 else None)
        self._cached = None  # (pipeline, feed) after a pass that reached its end

    def __len__(self):
        if self.training:
            return self.sampler.num_samples // self.batch_size  # the whole epoch, as the default loader's
        return -(-len(self.sampler) // self.batch_size)

    def _batches(self):
        """This pass's batches (from the sampler's start_batch on) as lists of dataset indices."""
        indices = [i[0] if isinstance(i, tuple) else i for i in self.sampler]  # (index, copy): repeated aug
        count = len(indices) // self.batch_size if self.training else -(-len(indices) // self.batch_size)
        return [indices[k * self.batch_size:(k + 1) * self.batch_size] for k in range(count)]

    def replacement(self, index):
        """The dataset index read for `index`: itself, or with DATA.SKIP_BAD_IMAGES the next image of
        the split that has not failed (as CheckedImageFolder.__getitem__)."""
        failed = getattr(self.dataset, 'failed', None)
        if failed is None or not failed[index]:
            return index
        n = len(self.dataset.samples)
        for offset in range(1, n):
            if not failed[(index + offset) % n]:
                return (index + offset) % n
        raise DataError(f"no image in '{self.dataset.root}' can be decoded")

    def __iter__(self):
        epoch = getattr(self.sampler, 'epoch', 0)
        start = getattr(self.sampler, 'start_batch', 0)
        rank = getattr(self.sampler, 'rank', 0)
        batches = self._batches()
        done = 0
        while done < len(batches):
            try:
                for images, targets in self._run(batches[done:], epoch, rank, start + done):
                    if self.erasing is not None:
                        images = self._erase(images, epoch, start + done)
                    done += 1
                    yield images, targets
            except DecodeFailure as failure:
                if not self.skip_bad_images or failure.index is None:
                    raise DataError(str(failure)) from None
                logger.warning('%s; skipped (DATA.SKIP_BAD_IMAGES): the next image takes its place', failure)
                self.dataset.failed[failure.index] = 1  # then a new pipeline from the batch that failed

    def _run(self, batches, epoch, rank, first_batch):
        cached, self._cached = self._cached, None  # this pass's alone until it ends
        if cached is None:
            feed = _Feed(self)
            feed.batches = batches
            graph = _train_graph if self.training else _val_graph
            pipe = build_pipeline(graph, feed, self.settings, self.batch_size, self.num_threads, self.device,
                                  sample_seed(self.seed, epoch, rank, copy=first_batch))
        else:
            pipe, feed = cached
            feed.batches = batches
            pipe.reset()
        feed.in_flight.clear()
        for _ in batches:
            try:
                images, targets = pipe.run()
            except RuntimeError as e:
                raise self._failure(e, feed) from None
            feed.in_flight.popleft()
            yield self._to_torch(images), torch.from_numpy(targets.as_array())
        try:
            pipe.run()
        except StopIteration:  # the pass's end, seen by DALI: the next pass can reuse the pipeline
            self._cached = pipe, feed

    def _to_torch(self, images):
        if self.device.type == 'cpu':
            return torch.from_numpy(images.as_array())  # as_array copies: DALI reuses its buffers
        from nvidia.dali.plugin.pytorch import feed_ndarray
        tensor = images.as_tensor()
        out = torch.empty(tensor.shape(), dtype=torch.float32, device=self.device)
        feed_ndarray(tensor, out, cuda_stream=torch.cuda.current_stream(self.device))
        return out

    def _erase(self, images, epoch, batch):
        """timm's RandomErasing on the device batch, seeded by (SEED, epoch, batch, rank); the
        training process's own RNG states are left as they were."""
        rank, world = getattr(self.sampler, 'rank', 0), getattr(self.sampler, 'num_replicas', 1)
        seed = sample_seed(self.seed, epoch, batch * world + rank)
        state = random.getstate()
        cuda = self.device.type == 'cuda'
        with torch.random.fork_rng(devices=[self.device.index] if cuda else []):
            random.seed(seed)
            if cuda:
                torch.cuda.default_generators[self.device.index].manual_seed(seed)
            else:
                torch.default_generator.manual_seed(seed)
            try:
                return self.erasing(images)
            finally:
                random.setstate(state)

    def _failure(self, error, feed):
        """A DecodeFailure naming the file DALI failed on (a RuntimeError that is not about decoding
        is returned as it is)."""
        text = str(error)
        if 'decode' not in text.lower():
            return error
        match = re.search(r'sample #(\d+)', text)
        batches = list(feed.in_flight)
        candidates = ([batch[int(match.group(1))] for batch in batches if int(match.group(1)) < len(batch)]
                      if match else [index for batch in batches for index in batch])
        for index in candidates:
            index = self.replacement(index)
            path = self.dataset.samples[index][0]
            reason = decode_error(path)
            if reason is not None:
                return DecodeFailure(index, f"cannot decode image '{path}' with DALI: {reason}")
        paths = [self.dataset.samples[self.replacement(i)][0] for i in candidates]
        return DecodeFailure(None, f'DALI failed to decode one of {short_list(paths)}: {_first_reason(error)}')
