"""Checkpoint files: atomic saving, safe loading, finding and pruning, and pretrained-weight surgery.

    save_checkpoint(state, os.path.join(output_dir, 'checkpoint.pth'))
    for path in find_checkpoints(output_dir):            # auto-resume: newest first
        try:
            state = load_checkpoint_file(path)            # weights_only=True unless trusted
            break
        except CheckpointError as e:
            logger.warning(f'{e}; trying an older checkpoint')
    check_state_dict(model, state['model'], path)          # --resume / --eval: same architecture?
    missing, unexpected = load_pretrained(config.PRETRAINED, model, logger)   # --pretrained
    load_model_weights(path, model)          # evaluate a checkpoint: every weight must fit exactly
    state_dict = read_model_weights(path)    # the same weights, not loaded (export.py)

Every failure is a CheckpointError naming the file and the reason. Checkpoints are read with
`torch.load(weights_only=True)`; one that pickles Python objects (old releases hold a yacs config)
loads only with the explicit trust flag (`--trust-checkpoint`, config TRUST_CHECKPOINT).
"""
import logging
import math
import os
import pickle
import re
import uuid

import torch
import torch.nn.functional as F

CHECKPOINT_NAME = 'checkpoint.pth'  # always the newest complete checkpoint of a run
_EPOCH_RE = re.compile(r'ckpt_epoch_(\d+)\.pth')  # the epoch checkpoints kept beside it
_MAX_LISTED = 10  # keys listed per kind in an error message

_logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the reason."""


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


def load_checkpoint_file(path, trusted=False):
    """torch.load(path) onto the CPU with weights_only=True (weights_only=False when `trusted`).

    Raises CheckpointError when the file is missing, unreadable, truncated or not a PyTorch file,
    or, without `trusted`, when it pickles Python objects.
    """
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint '{path}' not found")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint '{path}' is not a file")
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
def _is_rebuilt(key):
    """relative_position_index buffers are recomputed from the patch grid, never loaded."""
    return key.endswith('relative_position_index')


def _listing(kind, items):
    shown = ', '.join(items[:_MAX_LISTED])
    more = f' (+{len(items) - _MAX_LISTED} more)' if len(items) > _MAX_LISTED else ''
    return f'{len(items)} {kind}: {shown}{more}'


def _shape_mismatches(model_state, state_dict):
    return [f'{key} {tuple(value.shape)} in the checkpoint, {tuple(model_state[key].shape)} in the model'
            for key, value in state_dict.items()
            if key in model_state and tuple(getattr(value, 'shape', ())) != tuple(model_state[key].shape)]


def check_state_dict(model, state_dict, path):
    """Raise CheckpointError when `state_dict` (from the file `path`) is not for `model`'s architecture.

    The message lists missing keys, unexpected keys and shape mismatches (at most ten of each).
    `relative_position_index` buffers are ignored (rebuilt from the grid), so after this passes,
    `model.load_state_dict(state_dict, strict=False)` sets every weight of the model.
    """
    model_state = {k: v for k, v in model.state_dict().items() if not _is_rebuilt(k)}
    state_dict = {k: v for k, v in state_dict.items() if not _is_rebuilt(k)}
    missing = sorted(set(model_state) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(model_state))
    mismatched = _shape_mismatches(model_state, state_dict)
    if missing or unexpected or mismatched:
        problems = [_listing(kind, items) for kind, items in
                    (('missing keys', missing), ('unexpected keys', unexpected), ('shape mismatches', mismatched))
                    if items]
        raise CheckpointError(f"checkpoint '{path}' does not fit the model (another architecture or "
                              f"config?): {'; '.join(problems)}")


# --- resizing position terms ---------------------------------------------------------------------
def _geometric_positions(src_half, dst_half):
    """Where the source offsets -src_half..src_half sit on the destination axis -dst_half..dst_half.

    BEiT's geometric rule: offsets 0 and +-1 stay where they are and the gap between neighbouring
    offsets changes by a constant ratio q, chosen so the outermost offset lands on +-dst_half. Near
    offsets, which carry most of the bias, keep their meaning; far ones stretch (or shrink). Where
    the rule cannot apply (fewer than two offsets a side) the axis is scaled uniformly.
    """
    if src_half == dst_half:
        steps = [1.0] * src_half
    elif src_half < 2 or dst_half < 2:
        steps = [dst_half / max(src_half, 1)] * src_half
    else:
        def reach(q):  # 1 + q + ... + q^(src_half - 1): increasing in q
            return sum(q ** i for i in range(src_half))
        low, high = 0.0, 2.0
        while reach(high) < dst_half:
            high *= 2
        for _ in range(100):
            mid = (low + high) / 2
            low, high = (mid, high) if reach(mid) < dst_half else (low, mid)
        q = (low + high) / 2
        steps = [q ** i for i in range(src_half)]
    right = [sum(steps[:i + 1]) for i in range(src_half)]
    if right:
        right[-1] = float(dst_half)  # exactly on the edge: the spline is never asked to extrapolate
    return [-x for x in reversed(right)] + [0.0] + right


def resize_rel_pos_bias_table(table, src_grid, dst_grid):
    """A relative position bias table for patch grid `src_grid` (h, w) resized to `dst_grid`.

    table: [(2h-1)(2w-1) + 3, heads] -> [(2H-1)(2W-1) + 3, heads]. The (2h-1) x (2w-1) offset part
    of each head is resampled with BEiT's geometric placement (see _geometric_positions) and an
    interpolating bicubic spline (scipy's RectBivariateSpline: scipy.interpolate.interp2d, which BEiT
    used, no longer exists); the last three rows (cls-to-token, token-to-cls, cls-to-cls) are kept.
    Offsets 0 and +-1 keep their values exactly; a constant table stays constant.
    """
    from scipy.interpolate import RectBivariateSpline  # only needed when a grid differs

    (h, w), (dst_h, dst_w) = src_grid, dst_grid
    if min(h, w, dst_h, dst_w) < 2:
        raise ValueError(f'cannot resize a relative position bias table from a {h}x{w} to a '
                         f'{dst_h}x{dst_w} grid: every side needs at least 2 patches')
    num_heads = table.shape[1]
    if table.shape[0] != (2 * h - 1) * (2 * w - 1) + 3:
        raise ValueError(f'a table of {table.shape[0]} rows does not belong to a {h}x{w} grid')
    offsets = table[:-3].detach().cpu().double().reshape(2 * h - 1, 2 * w - 1, num_heads).numpy()  # [dy, dx, heads]
    ys, xs = _geometric_positions(h - 1, dst_h - 1), _geometric_positions(w - 1, dst_w - 1)
    new_ys = torch.arange(-(dst_h - 1), dst_h, dtype=torch.float64).numpy()
    new_xs = torch.arange(-(dst_w - 1), dst_w, dtype=torch.float64).numpy()
    ky, kx = min(3, len(ys) - 1), min(3, len(xs) - 1)  # cubic where there are enough points (a 2-patch side has 3)
    heads = [torch.from_numpy(RectBivariateSpline(ys, xs, offsets[:, :, head], kx=kx, ky=ky, s=0)(new_ys, new_xs))
             .reshape(-1) for head in range(num_heads)]  # each [(2H-1)(2W-1)]
    resized = torch.stack(heads, dim=1).to(table.dtype)  # [(2H-1)(2W-1), heads]
    return torch.cat([resized, table[-3:].detach().cpu()], dim=0)


def resize_pos_embed(pos_embed, src_grid, dst_grid, num_prefix_tokens=1):
    """An absolute position embedding [1, prefix + h*w, D] resized to [1, prefix + H*W, D].

    The patch part is resampled bicubically (as MAE's interpolate_pos_embed); the CLS part is kept.
    """
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = pos_embed.shape[-1]
    patches = patches.reshape(1, src_grid[0], src_grid[1], dim).permute(0, 3, 1, 2)  # [1, D, h, w]
    patches = F.interpolate(patches.float(), size=tuple(dst_grid), mode='bicubic', align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, dst_grid[0] * dst_grid[1], dim).to(pos_embed.dtype)
    return torch.cat([prefix, patches], dim=1)


def _square_grid(num_patches, what, path):
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise CheckpointError(f"checkpoint '{path}': {what} does not fit a square patch grid "
                              f'({num_patches} patches), so it cannot be resized')
    return side, side


# --- pretrained weights ----------------------------------------------------------------------------
SHARED_TABLE = 'rel_pos_bias.relative_position_bias_table'


def _extract_state_dict(checkpoint, path):
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get('model'), dict):
        return dict(checkpoint['model'])
    if isinstance(checkpoint, dict) and checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return dict(checkpoint)
    keys = list(checkpoint)[:_MAX_LISTED] if isinstance(checkpoint, dict) else type(checkpoint).__name__
    raise CheckpointError(f"checkpoint '{path}' holds no model weights: expected {{'model': state_dict}} "
                          f'or a bare state dict, found {keys}')


def read_model_weights(path, trusted=False):
    """The model weights a checkpoint file holds: {'model': state_dict} or a bare state dict; keys
    starting with `encoder.` are stripped of it (the other keys of such a file, a SimMIM decoder,
    are left out). CheckpointError when the file holds no weights."""
    state_dict = _extract_state_dict(load_checkpoint_file(path, trusted), path)
    if any(k.startswith('encoder.') for k in state_dict):
        state_dict = {k[len('encoder.'):]: v for k, v in state_dict.items() if k.startswith('encoder.')}
    return state_dict


def load_model_weights(path, model, trusted=False, state_dict=None):
    """Load a trained model's weights from `path` into `model`, for evaluation: all or nothing.

    The weights are read_model_weights(path) unless `state_dict` (already read from `path`) is
    given. Unlike load_pretrained nothing is resized or left initialised: check_state_dict raises
    CheckpointError listing missing keys, unexpected keys and shape mismatches, and only then are
    the weights loaded (strict=False only because relative_position_index buffers are rebuilt, not
    loaded). Returns the state dict loaded.
    """
    if state_dict is None:
        state_dict = read_model_weights(path, trusted)
    check_state_dict(model, state_dict, path)
    model.load_state_dict(state_dict, strict=False)
    return state_dict


def load_pretrained(path, model, logger=None, trusted=False):
    """Initialise `model` from a pretrained or fine-tuned checkpoint (--pretrained).

    `path` is a .pth or .safetensors file or timm:<model_name>; pretrained.py recognises its format
    (SimMIM, BEiT, MAE, DeiT, timm vision_transformer / beit, PSS), converts it to our names, drops
    the parts fine-tuning does not use (decoders, mask tokens, distillation token), and checks that
    the checkpoint's family (qkv bias, layer scale, relative position bias) is the model's.
    `relative_position_index` buffers are dropped (rebuilt); a shared `rel_pos_bias` table is copied
    into every block when the model has per-block tables instead; relative position tables and an
    absolute `pos_embed` are resized when the patch grid differs; `head.*` is dropped when its shape
    differs (another number of classes) and `fc_norm.*` / `norm.*` when theirs does, so those stay
    initialised. Any other shape mismatch raises CheckpointError. Loads with strict=False, logs the
    format recognised and what is dropped, missing and unexpected, and returns (missing_keys,
    unexpected_keys), relative_position_index buffers not counted.
    """
    from pretrained import check_family, format_report, read_pretrained  # pretrained.py imports this module

    logger = logger or _logger
    weights = read_pretrained(path, trusted)
    logger.info(f"loading pretrained weights from '{path}'")
    for line in format_report(weights):
        logger.info(f'pretrained: {line}')
    check_family(weights, model, path)
    state_dict = {k: v for k, v in weights.state_dict.items() if not _is_rebuilt(k)}
    model_state = model.state_dict()

    block_tables = [k for k in model_state if re.fullmatch(r'blocks\.\d+\.attn\.relative_position_bias_table', k)]
    if SHARED_TABLE in state_dict and SHARED_TABLE not in model_state and block_tables:
        shared = state_dict.pop(SHARED_TABLE)
        for key in block_tables:
            state_dict.setdefault(key, shared.clone())
        logger.info(f'copied the shared relative position bias table into {len(block_tables)} blocks')

    grid = tuple(model.patch_embed.grid_size)
    for key in [k for k in state_dict if k.endswith('relative_position_bias_table')]:
        source, target = state_dict[key], model_state.get(key)
        if target is None or source.shape == target.shape or source.shape[1:] != target.shape[1:]:
            continue  # unexpected, already right, or another number of heads (reported below)
        src_side = math.isqrt(source.shape[0] - 3)
        if src_side * src_side != source.shape[0] - 3 or src_side % 2 == 0:
            raise CheckpointError(f"checkpoint '{path}': {key} has {source.shape[0]} rows, which is not "
                                  '(2s-1)^2 + 3 for a square grid of side s, so it cannot be resized')
        src_grid = ((src_side + 1) // 2,) * 2
        state_dict[key] = resize_rel_pos_bias_table(source, src_grid, grid)
        logger.info(f'{key}: resized from a {src_grid[0]}x{src_grid[1]} to a {grid[0]}x{grid[1]} patch grid')

    if 'pos_embed' in state_dict and 'pos_embed' in model_state:
        source, target = state_dict['pos_embed'], model_state['pos_embed']
        if source.shape != target.shape and source.shape[-1] == target.shape[-1]:
            src_grid = _square_grid(source.shape[1] - 1, 'pos_embed', path)
            state_dict['pos_embed'] = resize_pos_embed(source, src_grid, grid)
            logger.info(f'pos_embed: resized from a {src_grid[0]}x{src_grid[1]} to a {grid[0]}x{grid[1]} grid')

    for prefix in ('head.', 'fc_norm.', 'norm.'):
        keys = [k for k in state_dict if k.startswith(prefix)]
        differs = [k for k in keys if k in model_state and state_dict[k].shape != model_state[k].shape]
        if prefix == 'head.' and any(k not in model_state for k in keys):
            differs = keys  # the model has no classifier of this form (e.g. num_classes 0)
        if differs:
            for key in keys:
                del state_dict[key]
            logger.info(f'not loading {prefix}* (shape differs from the model): left as initialised')

    mismatched = _shape_mismatches(model_state, state_dict)
    if mismatched:
        raise CheckpointError(f"checkpoint '{path}' does not fit the model: {_listing('shape mismatches', mismatched)}")
    # Only the classifier, its norm and position terms may stay initialised; a checkpoint missing
    # any of the backbone (patch embedding, blocks) is for another architecture.
    optional = ('head.', 'fc_norm.', 'norm.', 'pos_embed', 'rel_pos_bias.')
    missing_backbone = sorted(k for k in model_state if k not in state_dict and not _is_rebuilt(k)
                              and not k.startswith(optional))
    if missing_backbone:
        unexpected = sorted(set(state_dict) - set(model_state))
        problems = [_listing(kind, items) for kind, items in
                    (('missing keys', missing_backbone), ('unexpected keys', unexpected)) if items]
        raise CheckpointError(f"checkpoint '{path}' is not a pretrained encoder of this model (another "
                              f"architecture?): {'; '.join(problems)}")

    result = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in result.missing_keys if not _is_rebuilt(k)]
    unexpected = list(result.unexpected_keys)
    if missing:
        logger.warning(f'pretrained: {_listing("missing keys (left as initialised)", missing)}')
    if unexpected:
        logger.warning(f'pretrained: {_listing("unexpected keys (ignored)", unexpected)}')
    logger.info(f"loaded pretrained weights from '{path}'")
    return missing, unexpected
