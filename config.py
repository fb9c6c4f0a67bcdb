"""Configuration: yacs defaults, YAML files with ``BASE:`` inheritance, command-line overrides.

    config = get_config(args)   # args: argparse.Namespace with at least `cfg` and `opts`

The keys are those of the SimMIM / PSS research code, so existing YAML files load unchanged.
Note that the patch scheduler stores *drop* ratios (1 - rho), as the original configs do.
"""
import difflib
import json
import math
import os

import yaml
from yacs.config import CfgNode as CN

from models import MODEL_TYPES
from models.patch_selection import PATCH_SCORE_FUNCS, num_kept_tokens
from patch_scheduler import PATCH_SCHEDULES


class ConfigError(ValueError):
    """A config file, key or value that cannot be used; the message says which and why."""


LR_SCHEDULERS = ('cosine', 'linear', 'step', 'multistep')
OPTIMIZERS = ('adamw', 'sgd')
AMP_OPT_LEVELS = ('O0', 'O1', 'O2')
AMP_DTYPES = ('auto', 'bfloat16', 'float16')

_C = CN()
_C.BASE = ['']  # YAML files this one inherits from, relative to it (list or single string)

# -----------------------------------------------------------------------------
# Data
# -----------------------------------------------------------------------------
_C.DATA = CN()
_C.DATA.BATCH_SIZE = 128  # batch size per process (per GPU)
_C.DATA.DATA_PATH = ''  # dataset root holding train/ and val/ ImageFolders (fashion_mnist: the IDX files)
_C.DATA.DATASET = 'imagenet'  # 'imagenet' (any ImageFolder), 'digits' (bundled demo) or 'fashion_mnist'
_C.DATA.IMG_SIZE = 224  # input resolution
_C.DATA.INTERPOLATION = 'bicubic'  # resize interpolation: random, bilinear or bicubic
_C.DATA.PIN_MEMORY = True  # pin CPU memory in the data loaders (faster copies to the GPU)
_C.DATA.NUM_WORKERS = 8  # data-loading worker processes per training process
_C.DATA.SKIP_BAD_IMAGES = False  # skip images that cannot be decoded (with a warning) instead of failing
# input pipeline: 'torch' (DataLoader workers, timm's transforms) or 'dali' (NVIDIA DALI, requirements-dali.txt:
# decoded and augmented on the GPU, with CPU operators where there is none; NUM_WORKERS is its CPU threads;
# data/dali.py, README "Fast input on GPUs")
_C.DATA.LOADER = 'torch'
# Train (fine-tune, or pre-train with main_simmim.py) on this many training images only (0: all): the
# same ones for every SEED, as equal a number per class as possible (data.folder.class_balanced_subset);
# validation always uses every image.
_C.DATA.TRAIN_SUBSET = 0
_C.DATA.MASK_PATCH_SIZE = 32  # [SimMIM] side in pixels of the square blocks the pre-training mask is drawn on
_C.DATA.MASK_RATIO = 0.6  # [SimMIM] fraction of those blocks masked (rounded up) in every image

# -----------------------------------------------------------------------------
# Model
# -----------------------------------------------------------------------------
_C.MODEL = CN()
_C.MODEL.TYPE = 'pss_vit'  # 'pss_vit' or 'vit' (the original's names): both build the same network
_C.MODEL.NAME = 'pss'  # run name: the first level of the output folder
_C.MODEL.RESUME = ''  # checkpoint to resume training (or to evaluate with --eval)
_C.MODEL.NUM_CLASSES = 1000  # classifier outputs; set from the dataset's class folders at run time
_C.MODEL.DROP_RATE = 0.0  # dropout after the MLP and attention projections
_C.MODEL.DROP_PATH_RATE = 0.1  # stochastic depth of the last block (rises linearly from 0)
_C.MODEL.LABEL_SMOOTHING = 0.1  # label smoothing of the cross-entropy loss

_C.MODEL.VIT = CN()
_C.MODEL.VIT.PATCH_SIZE = 16  # side of a square patch in pixels
_C.MODEL.VIT.IN_CHANS = 3  # input image channels
_C.MODEL.VIT.EMBED_DIM = 768  # token width
_C.MODEL.VIT.DEPTH = 12  # number of transformer blocks
_C.MODEL.VIT.NUM_HEADS = 12  # attention heads per block
_C.MODEL.VIT.MLP_RATIO = 4.0  # MLP hidden width / token width
_C.MODEL.VIT.QKV_BIAS = True  # learn q and v biases (the key bias is always zero)
_C.MODEL.VIT.FULL_QKV_BIAS = False  # with QKV_BIAS: a key bias too, one `qkv.bias` (timm ViT, DeiT, MAE)
_C.MODEL.VIT.INIT_VALUES = 0.1  # initial layer-scale gamma; 0 disables layer scale
_C.MODEL.VIT.USE_APE = False  # add a learned absolute position embedding
_C.MODEL.VIT.USE_RPB = False  # a relative position bias table in every block
_C.MODEL.VIT.USE_SHARED_RPB = False  # one relative position bias table shared by all blocks
_C.MODEL.VIT.USE_MEAN_POOLING = False  # classify the normed mean of patch tokens instead of CLS

# -----------------------------------------------------------------------------
# Training
# -----------------------------------------------------------------------------
_C.TRAIN = CN()
_C.TRAIN.START_EPOCH = 0  # first epoch of a run that resumes no training checkpoint (one that does continues its own)
_C.TRAIN.EPOCHS = 300  # total training epochs
_C.TRAIN.WARMUP_EPOCHS = 20  # linear learning-rate warm-up epochs
_C.TRAIN.WEIGHT_DECAY = 0.05  # AdamW weight decay
_C.TRAIN.BASE_LR = 5e-4  # learning rate at a total batch of 512 (scaled linearly)
_C.TRAIN.WARMUP_LR = 5e-7  # learning rate at the start of warm-up (scaled likewise)
_C.TRAIN.MIN_LR = 5e-6  # final learning rate (scaled likewise)
_C.TRAIN.CLIP_GRAD = 5.0  # clip the gradient norm to this value; 0 disables clipping
_C.TRAIN.AUTO_RESUME = True  # resume from the newest checkpoint in the output folder
_C.TRAIN.ACCUMULATION_STEPS = 0  # micro-batches per optimizer step (0 or 1: no accumulation)
_C.TRAIN.USE_CHECKPOINT = False  # activation checkpointing in the blocks (saves memory)
_C.TRAIN.LAYER_DECAY = 1.0  # layer-wise learning-rate decay (1.0: none)
_C.TRAIN.COMPILE = False  # torch.compile the model (at most five sequence lengths on the 0.2 grid)
_C.TRAIN.CUDA_GRAPHS = False  # capture each training step as a CUDA graph, one per kept-token count (fast_step.py)
_C.TRAIN.CHECKPOINT_EVERY_STEPS = 0  # also checkpoint every this many iterations mid-epoch (0: off)
_C.TRAIN.KEEP_CHECKPOINTS = 0  # keep at most this many older ckpt_epoch_*.pth files (0: keep all)
# resume a checkpoint whose config or world size differs in keys that change the run (else exit 2)
_C.TRAIN.ALLOW_CONFIG_CHANGE = False

_C.TRAIN.LR_SCHEDULER = CN()
_C.TRAIN.LR_SCHEDULER.NAME = 'cosine'  # cosine, linear, step or multistep
_C.TRAIN.LR_SCHEDULER.DECAY_EPOCHS = 30  # step: epochs between decays
_C.TRAIN.LR_SCHEDULER.DECAY_RATE = 0.1  # step / multistep: factor at each decay
_C.TRAIN.LR_SCHEDULER.GAMMA = 0.1  # multistep: factor at each milestone
_C.TRAIN.LR_SCHEDULER.MULTISTEPS = []  # multistep: milestone epochs

_C.TRAIN.OPTIMIZER = CN()
_C.TRAIN.OPTIMIZER.NAME = 'adamw'  # adamw or sgd
_C.TRAIN.OPTIMIZER.EPS = 1e-8  # AdamW epsilon
_C.TRAIN.OPTIMIZER.BETAS = (0.9, 0.999)  # AdamW betas
_C.TRAIN.OPTIMIZER.MOMENTUM = 0.9  # SGD momentum

_C.TRAIN.PATCH_SCHEDULER = CN()
_C.TRAIN.PATCH_SCHEDULER.NAME = 'none'  # none, linear, cosine or cyclic
_C.TRAIN.PATCH_SCHEDULER.START_PATCH_DROP_RATIO = 0.0  # drop ratio (1 - rho) at the start
_C.TRAIN.PATCH_SCHEDULER.END_PATCH_DROP_RATIO = 0.0  # drop ratio at the end (cyclic: mid-epoch)
_C.TRAIN.PATCH_SCHEDULER.COOLDOWN_EPOCHS = 0  # last epochs trained with all patches
_C.TRAIN.PATCH_SCHEDULER.ROUND_TO = 0.2  # round drop ratios to this grid (0: no rounding)
_C.TRAIN.PATCH_DROP_FUNC = 'magnitude'  # patch selection: magnitude, l2_magnitude or random

# -----------------------------------------------------------------------------
# Augmentation (timm)
# -----------------------------------------------------------------------------
_C.AUG = CN()
_C.AUG.COLOR_JITTER = 0.4  # colour jitter factor
_C.AUG.AUTO_AUGMENT = 'rand-m9-mstd0.5-inc1'  # timm auto-augment policy ('none' to disable)
_C.AUG.REPROB = 0.25  # random erasing probability
_C.AUG.REMODE = 'pixel'  # random erasing fill mode
_C.AUG.RECOUNT = 1  # random erasing count
_C.AUG.MIXUP = 0.8  # mixup alpha (0: off)
_C.AUG.CUTMIX = 1.0  # cutmix alpha (0: off)
_C.AUG.CUTMIX_MINMAX = None  # cutmix min/max area ratio (overrides alpha when set)
_C.AUG.MIXUP_PROB = 1.0  # probability of applying mixup or cutmix to a batch
_C.AUG.MIXUP_SWITCH_PROB = 0.5  # probability of cutmix instead of mixup when both are on
_C.AUG.MIXUP_MODE = 'batch'  # batch, pair or elem
_C.AUG.HFLIP = 0.5  # horizontal flip probability (0 for digits and text)
_C.AUG.SCALE = (0.08, 1.0)  # random-resized-crop area range
_C.AUG.NUM_REPEATS = 1  # repeated augmentation (DeiT): each image this many times per epoch, each copy
# augmented differently, the epoch as long as without (1: off)

# -----------------------------------------------------------------------------
# Testing
# -----------------------------------------------------------------------------
_C.TEST = CN()
_C.TEST.CROP = True  # resize to 256/224 of IMG_SIZE, then centre crop (else plain resize)

# -----------------------------------------------------------------------------
# Misc
# -----------------------------------------------------------------------------
_C.AMP_OPT_LEVEL = 'O1'  # O0: fp32; O1 / O2: native mixed precision (bf16 where supported)
_C.AMP_DTYPE = 'auto'  # O1 / O2 on CUDA: auto (bf16 where supported, else fp16), bfloat16, or float16 (+ GradScaler)
_C.OUTPUT = ''  # output folder: <output>/<MODEL.NAME>/<TAG>
_C.TAG = 'default'  # run tag: the second level of the output folder
_C.SAVE_FREQ = 1  # checkpoint every this many epochs (and at the last)
_C.PRINT_FREQ = 10  # log every this many iterations
_C.SEED = 0  # random seed (each process adds its rank)
_C.EVAL_MODE = False  # only validate the --resume checkpoint
_C.THROUGHPUT_MODE = False  # only measure model throughput
_C.PRETRAINED = ''  # checkpoint to initialise from: .pth, .safetensors, a Hugging Face model folder, timm:<name>
_C.TRUST_CHECKPOINT = False  # allow checkpoints that pickle Python objects (old releases)
_C.LOCAL_RANK = 0  # set from the environment, kept for old scripts
# TensorBoard events of the JSON logs' scalars go to <LOG_DIR>/<MODEL.NAME>/<TAG>/train and /val ('': none;
# MAE's --log_dir); `tensorboard --logdir <LOG_DIR>` then shows every run by name and tag
_C.LOG_DIR = ''

_C.WANDB = CN()
_C.WANDB.PROJECT = ''  # Weights & Biases project to log the same scalars to ('': no W&B; needs `pip install wandb`)
_C.WANDB.ENTITY = ''  # W&B user or team of the project ('': the account's default)


def _all_keys(node, prefix=''):
    for key, value in node.items():
        full = f'{prefix}{key}'
        yield full
        if isinstance(value, CN):
            yield from _all_keys(value, full + '.')


def _int_as_float(value, default):
    """`value` with ints turned into floats where `default` (the key's current value) is a float, or a
    list / tuple of floats: YAML reads `MLP_RATIO: 4` as an int, and the original's defaults held ints
    (MLP_RATIO 4) where ours hold floats; yacs itself accepts no int for a float."""
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    if isinstance(default, float) and is_int(value):
        return float(value)
    if isinstance(default, (list, tuple)) and default and all(isinstance(d, float) for d in default) \
            and isinstance(value, (list, tuple)):
        return type(value)(float(v) if is_int(v) else v for v in value)
    return value


def _coerce_ints(config, data):
    """`data` (nested dicts from a YAML file) with _int_as_float applied against `config`'s values."""
    coerced = {}
    for key, value in data.items():
        default = config.get(key) if isinstance(config, dict) else None
        if isinstance(value, dict) and isinstance(default, dict):
            coerced[key] = _coerce_ints(default, value)
        else:
            coerced[key] = _int_as_float(value, default)
    return coerced


def _merge(config, other, source):
    """Merge `other` (a CfgNode) into `config`, turning yacs errors into ConfigError."""
    try:
        config.merge_from_other_cfg(CN(_coerce_ints(config, other)))
    except KeyError as e:
        # yacs says "Non-existent config key: X.Y"; name the closest valid key too.
        key = str(e).strip('"\'').split(':')[-1].strip()
        raise ConfigError(f"{source}: unknown config key '{key}'{_closest_key_hint(key)}") from None
    except ValueError as e:
        raise ConfigError(f'{source}: {e}') from None


def _read_text(path):
    """The file's text, decoded as UTF-8 (a leading byte-order mark dropped)."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: '{path}'")
    try:
        with open(path, 'rb') as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file '{path}': {e.strerror or e}") from None
    try:
        text = raw.decode('utf-8')
    except UnicodeDecodeError as e:
        line = raw.count(b'\n', 0, e.start) + 1
        raise ConfigError(f"config file '{path}' is not UTF-8 text: byte 0x{raw[e.start]:02x} at offset {e.start} "
                          f'(line {line}) cannot be decoded; save the file as UTF-8') from None
    return text.removeprefix('\ufeff')


def _check_no_duplicate_keys(node, path, prefix='', seen_nodes=None):
    """Raise ConfigError for a key given twice in one mapping: YAML would keep the last in silence."""
    seen_nodes = set() if seen_nodes is None else seen_nodes
    if id(node) in seen_nodes:  # an alias of a node already checked
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key, line = key_node.value, key_node.start_mark.line + 1
            if key in lines:
                raise ConfigError(f"config file '{path}': key '{prefix}{key}' is given twice, at lines {lines[key]} "
                                  f'and {line} (YAML would keep only the last): merge them into one')
            lines[key] = line
            _check_no_duplicate_keys(value_node, path, f'{prefix}{key}.', seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_no_duplicate_keys(item, path, prefix, seen_nodes)


def _load_yaml(path):
    loader = yaml.SafeLoader(_read_text(path))
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_no_duplicate_keys(node, path)
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, 'problem_mark', None)
        where = f' at line {mark.line + 1}, column {mark.column + 1}' if mark else ''
        problem = getattr(e, 'problem', None) or str(e).splitlines()[0]
        raise ConfigError(f"config file '{path}' is not valid YAML{where}: {problem}") from None
    finally:
        loader.dispose()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of keys, not {type(data).__name__}")
    return data


def _check_sections(config, data, path, prefix=''):
    """Raise ConfigError where `data` gives a section of the defaults (a CfgNode) something other than
    keys, such as YAML null when every key under it is commented out (yacs would print the whole node)."""
    for key, value in data.items():
        default = config.get(key) if isinstance(config, dict) else None
        if not isinstance(default, CN):
            continue
        if isinstance(value, dict):
            _check_sections(default, value, path, f'{prefix}{key}.')
        elif value is None:
            raise ConfigError(f"config file '{path}': section '{prefix}{key}' has no keys (all commented out?): "
                              'remove the section or give it keys')
        else:
            raise ConfigError(f"config file '{path}': section '{prefix}{key}' must hold keys, not {value!r}")


def _update_config_from_file(config, cfg_file, chain=()):
    """Merge `cfg_file` into `config`, its BASE: files first. `chain`: the files that include it."""
    here = os.path.realpath(cfg_file)
    if here in chain:
        cycle = ' -> '.join(os.path.relpath(path) for path in chain[chain.index(here):] + (here,))
        raise ConfigError(f"config file '{cfg_file}': its BASE: files form a cycle: {cycle}")
    data = _load_yaml(cfg_file)
    bases = data.pop('BASE', None) or []
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(base, str) for base in bases):
        raise ConfigError(f"config file '{cfg_file}': BASE must be a file name or a list of them, not {bases!r}")
    for base in bases:
        if base:
            base_file = os.path.join(os.path.dirname(cfg_file), base)
            if not os.path.isfile(base_file):
                raise ConfigError(f"config file not found: '{base_file}', in the BASE: list of '{cfg_file}'")
            _update_config_from_file(config, base_file, chain + (here,))
    _check_sections(config, data, cfg_file)
    config.defrost()
    _merge(config, CN(data), cfg_file)
    config.freeze()


def _closest_key_hint(key):
    close = difflib.get_close_matches(key, list(_all_keys(_C)), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ''


def _merge_opts(config, opts):
    """Merge --opts KEY VALUE pairs (values parsed as Python literals, as yacs does)."""
    if len(opts) % 2:
        raise ConfigError(f'--opts takes KEY VALUE pairs, got an odd number of items: {opts}')
    for key, value in zip(opts[0::2], opts[1::2]):
        node = config
        for part in key.split('.'):
            node = node.get(part) if isinstance(node, dict) else None
        value = _int_as_float(CN._decode_cfg_value(value), node)  # the literal yacs would parse
        try:
            config.merge_from_list([key, value])
        except AssertionError:
            raise ConfigError(f"--opts: unknown config key '{key}'{_closest_key_hint(key)}") from None
        except ValueError as e:
            raise ConfigError(f'--opts: {e}') from None


def validate_config(config):
    """Check names and ranges that yacs cannot: raise ConfigError listing the valid values."""
    def one_of(key, value, valid):
        if value not in valid:
            raise ConfigError(f"{key} '{value}' is not known; valid values: {', '.join(valid)}")

    one_of('MODEL.TYPE', config.MODEL.TYPE, MODEL_TYPES)
    one_of('TRAIN.PATCH_SCHEDULER.NAME', config.TRAIN.PATCH_SCHEDULER.NAME.lower(), PATCH_SCHEDULES)
    one_of('TRAIN.PATCH_DROP_FUNC', config.TRAIN.PATCH_DROP_FUNC, tuple(PATCH_SCORE_FUNCS))
    one_of('TRAIN.LR_SCHEDULER.NAME', config.TRAIN.LR_SCHEDULER.NAME, LR_SCHEDULERS)
    one_of('TRAIN.OPTIMIZER.NAME', config.TRAIN.OPTIMIZER.NAME.lower(), OPTIMIZERS)
    one_of('AMP_OPT_LEVEL', config.AMP_OPT_LEVEL, AMP_OPT_LEVELS)
    one_of('AMP_DTYPE', config.AMP_DTYPE, AMP_DTYPES)
    ps = config.TRAIN.PATCH_SCHEDULER
    for key in ('START_PATCH_DROP_RATIO', 'END_PATCH_DROP_RATIO'):
        if not -1.0 <= ps[key] <= 1.0:
            raise ConfigError(f'TRAIN.PATCH_SCHEDULER.{key} = {ps[key]} is outside [-1, 1]')
    if ps.NAME.lower() != 'none' and min(ps.START_PATCH_DROP_RATIO, ps.END_PATCH_DROP_RATIO) >= 1.0:
        raise ConfigError('TRAIN.PATCH_SCHEDULER drops every token (both drop ratios are 1.0): '
                          'at least one must be below 1')
    if not 0.0 <= ps.ROUND_TO <= 1.0:
        raise ConfigError(f'TRAIN.PATCH_SCHEDULER.ROUND_TO = {ps.ROUND_TO} is outside [0, 1]')
    for key, value in _leaves(config):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f'{key} = {value} must be a finite number')
    for key, low in _MINIMUMS.items():
        value = _get(config, key)
        if value < low:
            raise ConfigError(f'{key} = {value} must be at least {low}')
    if config.MODEL.VIT.PATCH_SIZE > config.DATA.IMG_SIZE:
        raise ConfigError(f'MODEL.VIT.PATCH_SIZE {config.MODEL.VIT.PATCH_SIZE} is larger than '
                          f'DATA.IMG_SIZE {config.DATA.IMG_SIZE}')
    if config.DATA.IMG_SIZE % config.MODEL.VIT.PATCH_SIZE:
        raise ConfigError(f'DATA.IMG_SIZE {config.DATA.IMG_SIZE} is not a multiple of '
                          f'MODEL.VIT.PATCH_SIZE {config.MODEL.VIT.PATCH_SIZE}')
    if config.AUG.NUM_REPEATS < 1:
        raise ConfigError(f'AUG.NUM_REPEATS = {config.AUG.NUM_REPEATS} must be at least 1 (1: no repetition)')
    if config.MODEL.VIT.FULL_QKV_BIAS and not config.MODEL.VIT.QKV_BIAS:
        raise ConfigError('MODEL.VIT.FULL_QKV_BIAS True needs MODEL.VIT.QKV_BIAS True (no bias at all otherwise)')
    if config.MODEL.VIT.EMBED_DIM % config.MODEL.VIT.NUM_HEADS:
        raise ConfigError(f'MODEL.VIT.EMBED_DIM {config.MODEL.VIT.EMBED_DIM} is not divisible by '
                          f'MODEL.VIT.NUM_HEADS {config.MODEL.VIT.NUM_HEADS}')


# The smallest value each numeric key accepts (smaller ones crash or train nonsense later).
_MINIMUMS = {
    'DATA.BATCH_SIZE': 1, 'DATA.IMG_SIZE': 1, 'DATA.NUM_WORKERS': 0, 'DATA.TRAIN_SUBSET': 0,
    'MODEL.VIT.PATCH_SIZE': 1, 'MODEL.VIT.IN_CHANS': 1, 'MODEL.VIT.EMBED_DIM': 1, 'MODEL.VIT.DEPTH': 1,
    'MODEL.VIT.NUM_HEADS': 1, 'MODEL.VIT.MLP_RATIO': 0.0, 'MODEL.DROP_RATE': 0.0, 'MODEL.DROP_PATH_RATE': 0.0,
    'MODEL.LABEL_SMOOTHING': 0.0,
    'TRAIN.EPOCHS': 0, 'TRAIN.WARMUP_EPOCHS': 0, 'TRAIN.START_EPOCH': 0, 'TRAIN.ACCUMULATION_STEPS': 0,
    'TRAIN.BASE_LR': 0.0, 'TRAIN.WARMUP_LR': 0.0, 'TRAIN.MIN_LR': 0.0, 'TRAIN.WEIGHT_DECAY': 0.0,
    'TRAIN.CLIP_GRAD': 0.0, 'TRAIN.LAYER_DECAY': 0.0, 'TRAIN.CHECKPOINT_EVERY_STEPS': 0,
    'TRAIN.KEEP_CHECKPOINTS': 0, 'TRAIN.PATCH_SCHEDULER.COOLDOWN_EPOCHS': 0,
    'SAVE_FREQ': 1, 'PRINT_FREQ': 1, 'SEED': 0,
}


def _get(config, key):
    node = config
    for name in key.split('.'):
        node = node[name]
    return node


def _leaves(node, prefix=''):
    for key, value in node.items():
        if isinstance(value, CN):
            yield from _leaves(value, f'{prefix}{key}.')
        else:
            yield f'{prefix}{key}', value


def check_patch_schedule(config, patch_scheduler):
    """Raise ConfigError when the schedule's largest drop ratio over the whole run (rounding
    included) keeps no patch token, only CLS: the mean over kept patches would be NaN."""
    num_tokens = (config.DATA.IMG_SIZE // config.MODEL.VIT.PATCH_SIZE) ** 2 + 1
    drop_ratio = patch_scheduler.max_drop_ratio()
    if num_kept_tokens(num_tokens, drop_ratio) < 2:
        ps = config.TRAIN.PATCH_SCHEDULER
        raise ConfigError(
            f'TRAIN.PATCH_SCHEDULER keeps no patch at its largest drop ratio {drop_ratio:g} (after rounding '
            f'to ROUND_TO {ps.ROUND_TO:g}; START_PATCH_DROP_RATIO {ps.START_PATCH_DROP_RATIO:g}, '
            f'END_PATCH_DROP_RATIO {ps.END_PATCH_DROP_RATIO:g}): {num_tokens} tokens keep only CLS; '
            'lower the drop ratios or the rounding step')


def config_warnings(config, args=None):
    """Settings that are allowed but probably not meant, as messages for the log."""
    warnings = []
    train = config.TRAIN
    if not (config.EVAL_MODE or config.THROUGHPUT_MODE):
        if train.EPOCHS == 0:
            warnings.append('TRAIN.EPOCHS is 0: nothing will be trained')
        elif train.WARMUP_EPOCHS >= train.EPOCHS:
            warnings.append(f'TRAIN.WARMUP_EPOCHS {train.WARMUP_EPOCHS} is at least TRAIN.EPOCHS {train.EPOCHS}: '
                            'the learning rate never leaves its warm-up')
    level = getattr(args, 'amp_opt_level', None)
    if level in ('O1', 'O2'):
        import torch
        if not torch.cuda.is_available():
            warnings.append(f'--amp-opt-level {level} has no effect without CUDA: this run computes in fp32')
    return warnings


# Command-line shortcuts: argparse attribute -> config key. Each one overrides --cfg and --opts.
_SHORTCUTS = {
    'batch_size': 'DATA.BATCH_SIZE',
    'data_path': 'DATA.DATA_PATH',
    'pretrained': 'PRETRAINED',
    'resume': 'MODEL.RESUME',
    'accumulation_steps': 'TRAIN.ACCUMULATION_STEPS',
    'use_checkpoint': 'TRAIN.USE_CHECKPOINT',
    'amp_opt_level': 'AMP_OPT_LEVEL',
    'output': 'OUTPUT',
    'tag': 'TAG',
    'eval': 'EVAL_MODE',
    'throughput': 'THROUGHPUT_MODE',
    'trust_checkpoint': 'TRUST_CHECKPOINT',
    'log_dir': 'LOG_DIR',
    'wandb': 'WANDB.PROJECT',
}


def _check_run_folder(output, name, tag):
    """The run folder <output>/<MODEL.NAME>/<TAG> must lie inside --output."""
    inside = os.path.normpath(os.path.join(name, tag))
    if os.path.isabs(name) or os.path.isabs(tag) or inside == '..' or inside.startswith('..' + os.sep):
        raise ConfigError(f"the run folder '{os.path.join(output, name, tag)}' (MODEL.NAME '{name}', --tag / TAG "
                          f"'{tag}') lies outside the output folder '{output}': use a relative tag without '..'")


def update_config(config, args):
    accumulation = getattr(args, 'accumulation_steps', None)
    if accumulation is not None and accumulation < 1:
        raise ConfigError(f'--accumulation-steps {accumulation} must be at least 1')
    config.defrost()
    if getattr(args, 'cfg', None):
        config.freeze()
        _update_config_from_file(config, args.cfg)
        config.defrost()
    opts = getattr(args, 'opts', None)
    if opts:
        _merge_opts(config, opts)
    for attr, key in _SHORTCUTS.items():
        value = getattr(args, attr, None)
        if value is None or value is False or value == '':
            continue  # not given on the command line: keep the config's value
        node = config
        *parents, leaf = key.split('.')
        for name in parents:
            node = node[name]
        node[leaf] = value
    config.LOCAL_RANK = int(os.environ.get('LOCAL_RANK', getattr(args, 'local_rank', None) or 0))
    _check_run_folder(config.OUTPUT, config.MODEL.NAME, config.TAG)
    config.OUTPUT = os.path.join(config.OUTPUT, config.MODEL.NAME, config.TAG)
    validate_config(config)
    config.freeze()


def with_values(config, values):
    """A frozen copy of `config` with {dotted key: value} set: values resolved at run time, such as
    MODEL.NUM_CLASSES from the dataset's class folders, so the saved config says what was built."""
    config = config.clone()
    config.defrost()
    for key, value in values.items():
        node = config
        *parents, leaf = key.split('.')
        for name in parents:
            node = node[name]
        node[leaf] = value
    config.freeze()
    return config


def config_json(config):
    """`config` as JSON text (sorted keys, indented) that YAML readers read the same: every float keeps
    a decimal point (5.0e-06, where json.dumps writes 5e-06, which YAML 1.1 takes for a string)."""
    def text(value, indent):
        inner = indent + '  '
        if isinstance(value, dict):
            items = [f'{inner}{json.dumps(str(k))}: {text(v, inner)}' for k, v in sorted(value.items())]
            return '{\n' + ',\n'.join(items) + '\n' + indent + '}' if items else '{}'
        if isinstance(value, (list, tuple)):
            return '[' + ', '.join(text(v, inner) for v in value) + ']'
        if isinstance(value, float) and math.isfinite(value):
            mantissa, e, exponent = repr(value).partition('e')
            return mantissa + ('' if '.' in mantissa else '.0') + e + exponent
        return json.dumps(value)
    return text(config, '') + '\n'


def get_default_config():
    """A copy of the defaults, unfrozen."""
    return _C.clone()


def get_config(args):
    """Defaults, then --cfg (with its BASE files), then --opts, then the command-line shortcuts."""
    config = _C.clone()
    update_config(config, args)
    return config
