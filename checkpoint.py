"""Checkpoint files: atomic saving, safe loading, finding and pruning, and state-dict checks.

    save_checkpoint(state, os.path.join(output_dir, 'checkpoint.pth'))
    for path in find_checkpoints(output_dir):            # auto-resume: newest first
        try:
            state = load_checkpoint_file(path)            # weights_only=True unless trusted
            break
        except CheckpointError as e:
            logger.warning(f'{e}; trying an older checkpoint')
    check_state_dict(model, state['model'], path)          # --resume / --eval: same architecture?
    load_model_weights(path, model)          # evaluate a checkpoint: every weight must fit exactly
    check_finite(path, state['model'], state['optimizer'])   # NaN / inf: NonFiniteWeightsError
    state_dict = read_model_weights(path)    # the same weights, not loaded (export.py)

Every failure is a CheckpointError naming the file and the reason. Checkpoints are read with
`torch.load(weights_only=True)`; one that pickles Python objects (old releases hold a yacs config)
loads only with the explicit trust flag (`--trust-checkpoint`, config TRUST_CHECKPOINT). A
`.safetensors` file (the suffix in any case) is read with the safetensors library.
--pretrained (format conversion, resizing) is pretrained.py's, which builds on this module.
"""
import os
import pickle
import re
import uuid

import torch

from utils import first_n

CHECKPOINT_NAME = 'checkpoint.pth'  # always the newest complete checkpoint of a run
_EPOCH_RE = re.compile(r'ckpt_epoch_(\d+)\.pth')  # the epoch checkpoints kept beside it
_MAX_LISTED = 10  # keys listed per kind in an error message


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the reason."""


class NonFiniteWeightsError(CheckpointError):
    """A checkpoint whose weights or optimizer state hold NaN or inf (a diverged run); names the tensors."""


# --- files ---------------------------------------------------------------------------------------
def save_checkpoint(state, path):
    """Write `state` to `path` atomically: a hidden temporary file in the same folder, flushed and
    fsynced, then renamed onto `path`. A crash leaves the previous `path` intact and at most a stray
    `.<name>.<id>.tmp` file, which find_checkpoints ignores."""
    folder = os.path.dirname(os.path.abspath(path))
    # Our own name (not tempfile.mkstemp) so the file gets the usual umask permissions, not 0600.
    tmp_path = os.path.join(folder, f'.{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp')
    try:
        with open(tmp_path, 'xb') as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):  # torch.save or the rename failed: leave no partial file behind
            os.remove(tmp_path)
    if os.name == 'posix':  # make the rename itself durable (directories cannot be opened on Windows)
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def has_suffix(path, *suffixes):
    """Whether `path` ends with one of `suffixes`, in any case (`W.SAFETENSORS`, `model.PTH`)."""
    return path.lower().endswith(tuple(s.lower() for s in suffixes))


def read_safetensors(path):
    """(state dict, metadata) of a .safetensors file: no pickle at all."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint '{path}' not found")
    try:
        with safe_open(path, 'pt') as f:
            metadata = f.metadata() or {}
        return load_file(path, device='cpu'), metadata
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"checkpoint '{path}' cannot be read as safetensors: {e}") from None


def load_checkpoint_file(path, trusted=False):
    """torch.load(path) onto the CPU with weights_only=True (weights_only=False when `trusted`);
    the state dict of a .safetensors file.

    Raises CheckpointError when the file is missing, unreadable, truncated or not a PyTorch file,
    or, without `trusted`, when it pickles Python objects.
    """
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint '{path}' not found")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint '{path}' is not a file")
    if has_suffix(path, '.safetensors'):  # torch.load knows the suffix only in lower case
        return read_safetensors(path)[0]
    try:
        return torch.load(path, map_location='cpu', weights_only=not trusted)
    except Exception as e:
        # Deliberately broad: on truncated or foreign bytes torch.load raises whatever the bytes
        # trigger (RuntimeError for a cut zip, EOFError, KeyError, IndexError, UnpicklingError...).
        # The cause stays chained for debugging; the message is what the user sees.
        unsupported = re.search(r'Unsupported global: GLOBAL (\S+)', str(e))
        if isinstance(e, pickle.UnpicklingError) and unsupported and not trusted:
            raise CheckpointError(
                f"checkpoint '{path}' pickles Python objects ({unsupported.group(1)}), which could run "
                'code when loaded; if you trust the file, load it with --trust-checkpoint '
                '(config TRUST_CHECKPOINT True)') from None
        if trusted and isinstance(e, (ImportError, AttributeError)):  # a pickled class that is gone
            raise CheckpointError(f"checkpoint '{path}' pickles an object that cannot be rebuilt here: "
                                  f'{type(e).__name__}: {e}') from e
        raise CheckpointError(f"checkpoint '{path}' cannot be read: {_reason(e)}") from e


def _reason(error):
    """A one-line reason from a torch.load error (torch's messages run to several paragraphs)."""
    first = str(error).strip().split('\n')[0]
    first = first.split('. ')[0] if len(first) > 200 else first
    kind = type(error).__name__
    if isinstance(error, EOFError) or not first:
        return f'{kind}: the file ends early (truncated or empty)'
    return f'{kind}: {first} (truncated, corrupt, or not a PyTorch checkpoint?)'


def find_checkpoints(output_dir):
    """Checkpoint files in `output_dir`, newest first: `checkpoint.pth`, then `ckpt_epoch_<E>.pth`
    by E descending. Temporary files of an interrupted save and other files are ignored; a missing
    folder has none."""
    if not os.path.isdir(output_dir):
        return []
    names = os.listdir(output_dir)
    epochs = sorted((int(m.group(1)) for m in map(_EPOCH_RE.fullmatch, names) if m), reverse=True)
    found = [os.path.join(output_dir, CHECKPOINT_NAME)] if CHECKPOINT_NAME in names else []
    return found + [os.path.join(output_dir, f'ckpt_epoch_{epoch}.pth') for epoch in epochs]


def prune_checkpoints(output_dir, keep):
    """Delete all but the `keep` newest `ckpt_epoch_<E>.pth` files (keep 0: delete none).
    `checkpoint.pth` is never touched. Returns the deleted paths."""
    if keep <= 0:
        return []
    epoch_files = [p for p in find_checkpoints(output_dir) if os.path.basename(p) != CHECKPOINT_NAME]
    removed = epoch_files[keep:]
    for path in removed:
        os.remove(path)
    return removed


# --- state dicts ---------------------------------------------------------------------------------
def is_rebuilt(key):
    """relative_position_index buffers are recomputed from the patch grid, never loaded."""
    return key.endswith('relative_position_index')


def listing(kind, items):
    """'3 missing keys: a, b, c', at most _MAX_LISTED of them named."""
    return f'{len(items)} {kind}: {first_n(items, _MAX_LISTED)}'


def shape_mismatches(model_state, state_dict):
    return [f'{key} {tuple(value.shape)} in the checkpoint, {tuple(model_state[key].shape)} in the model'
            for key, value in state_dict.items()
            if key in model_state and tuple(getattr(value, 'shape', ())) != tuple(model_state[key].shape)]


def check_state_dict(model, state_dict, path):
    """Raise CheckpointError when `state_dict` (from the file `path`) is not for `model`'s architecture.

    The message lists missing keys, unexpected keys and shape mismatches (at most ten of each).
    `relative_position_index` buffers are ignored (rebuilt from the grid), so after this passes,
    `model.load_state_dict(state_dict, strict=False)` sets every weight of the model.
    """
    model_state = {k: v for k, v in model.state_dict().items() if not is_rebuilt(k)}
    state_dict = {k: v for k, v in state_dict.items() if not is_rebuilt(k)}
    missing = sorted(set(model_state) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(model_state))
    mismatched = shape_mismatches(model_state, state_dict)
    if (missing or unexpected or mismatched) and _is_pretraining(state_dict, model_state):
        raise CheckpointError(f"checkpoint '{path}' is a pre-training checkpoint (encoder weights with a mask_token, "
                              'no classifier), not a trained model of this config: to fine-tune from it, pass it '
                              'to main_finetune.py as --pretrained')
    if missing or unexpected or mismatched:
        problems = [listing(kind, items) for kind, items in
                    (('missing keys', missing), ('unexpected keys', unexpected), ('shape mismatches', mismatched))
                    if items]
        raise CheckpointError(f"checkpoint '{path}' does not fit the model (another architecture or "
                              f"config?): {'; '.join(problems)}")


def _is_pretraining(state_dict, model_state):
    """A SimMIM (or MAE, BEiT) pre-training state dict, raw (`encoder.*`) or its encoder, for a model
    without a mask token: what --pretrained reads, not --resume or --eval."""
    return any(k in state_dict for k in ('mask_token', 'encoder.mask_token')) and \
        not any(k in model_state for k in ('mask_token', 'encoder.mask_token'))


def non_finite_tensors(named_tensors):
    """The names, in order, of the floating-point tensors among `named_tensors` ((name, value) pairs;
    other values are skipped) that hold a NaN or an infinity. One read back per device."""
    flags = {}  # device -> [(name, all finite: a 0-d device tensor)]
    for name, value in named_tensors:
        if isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex()):
            flags.setdefault(value.device, []).append((name, torch.isfinite(value).all()))
    finite = {name: ok for pairs in flags.values()
              for name, ok in zip([n for n, _ in pairs], torch.stack([f for _, f in pairs]).tolist())}
    return [name for name, _ in named_tensors if finite.get(name) is False]


def optimizer_tensors(optimizer_state):
    """(name, tensor) for every tensor of an optimizer state dict, named `optimizer[<parameter>].<key>`
    where the state records parameter names (`param_names`), else by the parameter's id."""
    if not isinstance(optimizer_state, dict):
        return []
    names = {}
    for group in optimizer_state.get('param_groups', ()):
        names.update(zip(group.get('params', ()), group.get('param_names', ())))
    return [(f'optimizer[{names.get(pid, pid)}].{key}', value)
            for pid, values in optimizer_state.get('state', {}).items() if isinstance(values, dict)
            for key, value in values.items()]


def non_finite_message(names):
    """'NaN or infinite values in 2 tensors: a, b', at most _MAX_LISTED of them named."""
    plural = '' if len(names) == 1 else 's'
    return f'NaN or infinite values in {len(names)} tensor{plural}: {first_n(names, _MAX_LISTED)}'


def non_finite_weights(state_dict, optimizer_state=None):
    """The names of the tensors of `state_dict` and of `optimizer_state` (an optimizer state dict)
    that hold NaN or inf."""
    return non_finite_tensors(list(state_dict.items()) + optimizer_tensors(optimizer_state))


def check_finite(path, state_dict, optimizer_state=None):
    """Raise NonFiniteWeightsError when a tensor of `state_dict` (or of `optimizer_state`, an optimizer
    state dict) from the file `path` holds NaN or inf: such weights only spread NaN through a run."""
    bad = non_finite_weights(state_dict, optimizer_state)
    if bad:
        raise NonFiniteWeightsError(f"checkpoint '{path}' holds {non_finite_message(bad)}")


_WRAPPERS = ('model', 'module', 'state_dict')  # where ours, MAE, DeiT, BEiT and SimMIM keep the weights
_DDP_PREFIX = 'module.'


def strip_ddp_prefix(state_dict):
    """A state dict saved from a DistributedDataParallel wrapper has every key under 'module.':
    the prefix removed (as timm's clean_state_dict does); any other state dict as it is."""
    if state_dict and all(k.startswith(_DDP_PREFIX) for k in state_dict):
        return {k[len(_DDP_PREFIX):]: v for k, v in state_dict.items()}
    return state_dict


def extract_state_dict(checkpoint, path):
    """(state dict, the wrapper dict or None) from what torch.load returned: {'model': ...} (or
    'module', 'state_dict') or a bare state dict; a DDP 'module.' prefix is stripped."""
    if isinstance(checkpoint, dict):
        for key in _WRAPPERS:
            if isinstance(checkpoint.get(key), dict):
                return strip_ddp_prefix(dict(checkpoint[key])), checkpoint
        if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            return strip_ddp_prefix(dict(checkpoint)), None
    keys = list(checkpoint)[:_MAX_LISTED] if isinstance(checkpoint, dict) else type(checkpoint).__name__
    raise CheckpointError(f"checkpoint '{path}' holds no model weights: expected {{'model': state_dict}} "
                          f'or a bare state dict, found {keys}')


def encoder_weights(state_dict):
    """The `encoder.*` weights of a SimMIM checkpoint, prefix stripped; None when it has none."""
    if not any(k.startswith('encoder.') for k in state_dict):
        return None
    return {k[len('encoder.'):]: v for k, v in state_dict.items() if k.startswith('encoder.')}


def read_model_weights(path, trusted=False):
    """The model weights a checkpoint file holds (of a SimMIM checkpoint, the encoder's)."""
    state_dict, _ = extract_state_dict(load_checkpoint_file(path, trusted), path)
    return encoder_weights(state_dict) or state_dict


def load_model_weights(path, model, trusted=False, state_dict=None):
    """Load a trained model's weights from `path` (or `state_dict`, already read from it) into `model`,
    for evaluation: all or nothing (check_state_dict and check_finite first; nothing resized or left initialised,
    unlike --pretrained). Returns the state dict loaded."""
    if state_dict is None:
        state_dict = read_model_weights(path, trusted)
    check_state_dict(model, state_dict, path)
    check_finite(path, state_dict)
    model.load_state_dict(state_dict, strict=False)
    return state_dict
