"""What a --pretrained checkpoint is, and its weights in this model's state-dict names.

    weights = read_pretrained(spec, trusted=False)   # a .pth / .safetensors path, a Hugging Face folder, timm:<name>
    weights.state_dict, weights.format, weights.dropped
    check_family(weights, model, spec)                # CheckpointError when the parts differ

    missing, unexpected = load_pretrained(spec, model, logger)   # all of it, for --pretrained

load_pretrained reads and checks, then resizes position terms and loads. Formats, recognised from
the keys (and from the `{'model': ...}` wrapper around them):

| format | recognised by | conversion |
|---|---|---|
| SimMIM pre-training | `encoder.*` keys | prefix stripped; the decoder ignored |
| MAE pre-training | `decoder_*` keys | `decoder_*` and `mask_token` dropped |
| DeiT, distilled | `dist_token` | `dist_token`, `head_dist.*` and the distillation token's `pos_embed` row dropped |
| MAE fine-tuned | wrapped, `attn.qkv.bias`, `fc_norm` | none (timm's ViT names) |
| DeiT | wrapped, `attn.qkv.bias`, no `fc_norm` | none |
| timm vision_transformer | bare, `attn.qkv.bias`, or `timm:<name>` | `ls1.gamma`, `ls2.gamma` to `gamma_1`, `gamma_2` |
| (any, `pos_embed` without a CLS row) | patch rows a square number | a zero CLS row prepended |
| BEiT (unilm) | wrapped, `attn.q_bias` | `lm_head.*` and `mask_token` dropped |
| PSS / SimMIM fine-tuned | wrapped with a `config` (either family) | none |
| timm beit | bare, `attn.q_bias`, or `timm:<name>` | none |
| PSS state dict | `.safetensors` with metadata `format: pss` (export.py --state-dict) | none |

`.safetensors` files (the suffix in any case) are read with the safetensors library (no pickle at
all); a Hugging Face model folder by its model.safetensors (or pytorch_model.bin). `timm:<model_name>`
asks timm for its pretrained weights (a download from the Hugging Face Hub, so it needs internet).
"""
import logging
import math
import os
import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from checkpoint import (CheckpointError, check_finite, encoder_weights, extract_state_dict, has_suffix, is_rebuilt,
                        listing, load_checkpoint_file, read_safetensors, shape_mismatches)
from utils import first_n

TIMM_PREFIX = 'timm:'
SHARED_TABLE = 'rel_pos_bias.relative_position_bias_table'
PSS_STATE_DICT = 'PSS state dict (export.py --state-dict)'  # our names; metadata format 'pss'
HUB_WEIGHTS = ('model.safetensors', 'pytorch_model.bin')  # a Hugging Face model folder's weights, preferred first
_FIRST_KEYS = 8  # keys listed in a message (the first of a file that is not a known format, ...)
_logger = logging.getLogger(__name__)
# timm ViT parts this model does not have: loading around them would silently change the network.
_FOREIGN_PARTS = re.compile(r'^(norm_pre\.|reg_token|attn_pool\.)|\.(q_norm|k_norm|norm)\.|\.ls\d\.')


@dataclass
class Pretrained:
    """A checkpoint's weights in our names, the format recognised, what was dropped from it, and
    what else was converted (one line each)."""
    state_dict: dict
    format: str
    dropped: list = field(default_factory=list)
    converted: list = field(default_factory=list)


# --- reading -------------------------------------------------------------------------------------
def timm_state_dict(model_name, **create_kwargs):
    """timm's pretrained weights of `model_name` -> (state dict, 'vision_transformer' or 'beit').

    `create_kwargs` go to timm.create_model (tests pass `pretrained_cfg_overlay=dict(file=...)`, timm's
    local-file override, instead of a download).
    """
    import timm
    from timm.models.beit import Beit
    from timm.models.vision_transformer import VisionTransformer

    try:
        model = timm.create_model(model_name, pretrained=True, **create_kwargs)
    except Exception as e:
        # Deliberately broad: an unknown name, no network, a hub error or a bad file each raise
        # their own exception types; the message names the model and the first line of the reason.
        reason = str(e).strip().split('\n')[0]
        raise CheckpointError(f"timm could not create '{model_name}' with pretrained weights "
                              f'({type(e).__name__}: {reason}); timm downloads them from the Hugging Face '
                              'Hub, which needs internet') from e
    for cls, kind in ((VisionTransformer, 'vision_transformer'), (Beit, 'beit')):
        if isinstance(model, cls):  # VisionTransformerDistilled too: its distillation token is dropped
            return model.state_dict(), kind
    raise CheckpointError(f"timm model '{model_name}' is a {type(model).__name__}; timm:<name> takes "
                          'vision_transformer and beit models')


# --- recognising and converting --------------------------------------------------------------------
def _drop(state_dict, dropped, test):
    for key in [k for k in state_dict if test(k)]:
        dropped.append(key)
        del state_dict[key]


def _convert(state_dict, wrapper, source, path):
    """Pretrained(...) in our names; `source` is 'timm vision_transformer' / 'timm beit' or None."""
    sd, dropped = dict(state_dict), []
    encoder = encoder_weights(sd)
    if encoder is not None:  # the decoder is dropped; encoder.mask_token stays an unexpected key
        return Pretrained(encoder, 'SimMIM pre-training', [k for k in sd if not k.startswith('encoder.')])
    if 'patch_embed.proj.weight' not in sd or 'blocks.0.attn.qkv.weight' not in sd:
        keys = ', '.join(list(state_dict)[:_FIRST_KEYS])
        raise CheckpointError(f"checkpoint '{path}' is not a ViT checkpoint --pretrained knows (SimMIM, BEiT, MAE, "
                              f'DeiT, timm vision_transformer / beit); its first keys: {keys}')
    full_qkv_bias = 'blocks.0.attn.qkv.bias' in sd
    if any(k.startswith('decoder_') for k in sd):
        _drop(sd, dropped, lambda k: k.startswith('decoder_') or k == 'mask_token')
        fmt = 'MAE pre-training'
    elif 'dist_token' in sd:
        _drop(sd, dropped, lambda k: k == 'dist_token' or k.startswith('head_dist.'))
        if 'pos_embed' in sd:  # [1, 2 + patches, D]: CLS, then the distillation token's row
            sd['pos_embed'] = torch.cat([sd['pos_embed'][:, :1], sd['pos_embed'][:, 2:]], dim=1)
            dropped.append('pos_embed[:, 1] (the distillation token)')
        fmt = 'DeiT (distilled)'
    elif source:
        fmt = source
    elif wrapper is None:
        fmt = 'timm vision_transformer' if full_qkv_bias else 'timm beit'
    elif 'config' in wrapper:  # our training checkpoints (and SimMIM's) store their config
        fmt = 'PSS / SimMIM fine-tuned'
    elif full_qkv_bias:
        fmt = 'MAE fine-tuned' if 'fc_norm.weight' in sd else 'DeiT'
    else:
        _drop(sd, dropped, lambda k: k.startswith('lm_head.') or k == 'mask_token')
        fmt = 'BEiT (unilm)'
    # timm's ViT layer scale is a module of its own; ours (BEiT's) is a parameter of the block.
    sd = {re.sub(r'^(blocks\.\d+)\.ls([12])\.gamma$', r'\1.gamma_\2', k): v for k, v in sd.items()}
    converted = []
    pos = sd.get('pos_embed')
    if pos is not None and math.isqrt(pos.shape[1]) ** 2 == pos.shape[1]:
        # Patch rows only (timm's no_embed_class: DeiT III, ...): CLS gets no position, a zero row.
        sd['pos_embed'] = torch.cat([pos.new_zeros(1, 1, pos.shape[2]), pos], dim=1)
        converted.append('pos_embed has no CLS row (no_embed_class): a zero row added for CLS')
    return Pretrained(sd, fmt, dropped, converted)


def hub_folder_weights(folder):
    """The weights file of a Hugging Face model folder (timm's save_for_hf, export.py, a Hub
    download): model.safetensors, else pytorch_model.bin; CheckpointError when it holds neither."""
    for name in HUB_WEIGHTS:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise CheckpointError(f"checkpoint '{folder}' is a folder without {' or '.join(HUB_WEIGHTS)} (the weights "
                          'of a Hugging Face model folder): pass the weights file itself')


def read_pretrained(spec, trusted=False):
    """The weights of --pretrained `spec` (a .pth / .safetensors path, a Hugging Face model folder
    or timm:<model_name>) in our names."""
    if spec.startswith(TIMM_PREFIX):
        state_dict, kind = timm_state_dict(spec[len(TIMM_PREFIX):])
        return _convert(state_dict, None, f'timm {kind}', spec)
    path = hub_folder_weights(spec) if os.path.isdir(spec) else spec
    if has_suffix(path, '.safetensors'):
        state_dict, metadata = read_safetensors(path)
        return _convert(extract_state_dict(state_dict, path)[0], None,
                        PSS_STATE_DICT if metadata.get('format') == 'pss' else None, path)
    state_dict, wrapper = extract_state_dict(load_checkpoint_file(path, trusted), path)
    return _convert(state_dict, wrapper, None, path)


# --- the family check ----------------------------------------------------------------------------
def _parts(keys):
    """The architecture's parts that a state dict's `keys` show (qkv bias, layer scale, position terms)."""
    keys = set(keys)
    qkv = ('full qkv bias' if 'blocks.0.attn.qkv.bias' in keys else
           'q and v biases' if 'blocks.0.attn.q_bias' in keys else 'no qkv bias')
    return {'qkv': qkv,
            'layer scale': 'blocks.0.gamma_1' in keys,
            'relative position bias': any(k.endswith('relative_position_bias_table') for k in keys),
            'absolute position embedding': 'pos_embed' in keys}


def _describe(parts):
    return ', '.join([parts['qkv']] + [name if parts[name] else f'no {name}' for name in list(parts)[1:]])


_CONFIG_KEYS = {  # the config setting that gives a model each part
    ('qkv', 'full qkv bias'): 'MODEL.VIT.FULL_QKV_BIAS True',
    ('qkv', 'q and v biases'): 'MODEL.VIT.QKV_BIAS True, MODEL.VIT.FULL_QKV_BIAS False',
    ('qkv', 'no qkv bias'): 'MODEL.VIT.QKV_BIAS False',
    ('layer scale', True): 'MODEL.VIT.INIT_VALUES > 0',
    ('layer scale', False): 'MODEL.VIT.INIT_VALUES 0',
    ('relative position bias', True): 'MODEL.VIT.USE_RPB or USE_SHARED_RPB True',
    ('relative position bias', False): 'MODEL.VIT.USE_RPB and USE_SHARED_RPB False',
    ('absolute position embedding', True): 'MODEL.VIT.USE_APE True',
}


def check_family(weights, model, spec):
    """Raise CheckpointError (one line) when the checkpoint has other parts than the model.

    The qkv bias and layer scale must match, and a relative position bias must be in both or
    neither: loading around any of them would change what the pretrained network computes. An
    absolute position embedding the checkpoint lacks is left as initialised; one the model lacks is
    an error. Foreign timm parts (a pre-norm, register tokens, qk-norm) are errors too.
    """
    foreign = sorted(k for k in weights.state_dict if _FOREIGN_PARTS.search(k))
    if foreign:
        raise CheckpointError(f"checkpoint '{spec}' ({weights.format}) has parts this model does not: "
                              f"{', '.join(foreign[:_FIRST_KEYS])}")
    have, want = _parts(weights.state_dict), _parts(model.state_dict())
    differ = [name for name in have if have[name] != want[name]
              and not (name == 'absolute position embedding' and want[name])]
    if differ:
        settings = '; '.join(_CONFIG_KEYS[name, have[name]] for name in differ)
        raise CheckpointError(f"checkpoint '{spec}' is {weights.format} ({_describe(have)}), but the config "
                              f'builds a model with {_describe(want)}; for this checkpoint set {settings}')


def format_report(weights):
    """Log lines: the format recognised, and what was dropped."""
    lines = [f'recognised the format: {weights.format}']
    if weights.dropped:
        lines.append(f'dropped {len(weights.dropped)} keys not used for fine-tuning: '
                     f'{first_n(weights.dropped, _FIRST_KEYS)}')
    return lines + weights.converted


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
    Offsets 0 and +-1 keep their values exactly; a constant table stays constant. A side of one
    patch has the single offset 0: to it, only that offset's bias is kept (exact); from it, every
    offset along that side gets that bias (all there is to go on).
    """
    from scipy.interpolate import RectBivariateSpline  # only needed when a grid differs

    (h, w), (dst_h, dst_w) = src_grid, dst_grid
    num_heads = table.shape[1]
    if table.shape[0] != (2 * h - 1) * (2 * w - 1) + 3:
        raise ValueError(f'a table of {table.shape[0]} rows does not belong to a {h}x{w} grid')
    offsets = table[:-3].detach().cpu().double().reshape(2 * h - 1, 2 * w - 1, num_heads)  # [dy, dx, heads]
    for axis, (src, dst) in enumerate(((h, dst_h), (w, dst_w))):
        if dst == 1 and src > 1:
            offsets = offsets.narrow(axis, src - 1, 1)  # offset 0 alone
        elif src == 1 and dst > 1:
            offsets = offsets.repeat_interleave(2 * dst - 1, dim=axis)
    h, w = offsets.shape[0] // 2 + 1, offsets.shape[1] // 2 + 1
    if (h, w) == (dst_h, dst_w):
        return torch.cat([offsets.reshape(-1, num_heads).to(table.dtype), table[-3:].detach().cpu()], dim=0)
    offsets = offsets.numpy()
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


# --- loading ----------------------------------------------------------------------------------------
def load_pretrained(path, model, logger=None, trusted=False):
    """Initialise `model` from --pretrained `path` (read_pretrained, check_family), its position
    terms resized to the model's grid and a shared bias table copied into per-block ones; a classifier
    or final norm of another shape stays initialised, any other mismatch, or a NaN or inf in what
    would be loaded, is a CheckpointError.
    Logs what it did; returns (missing_keys, unexpected_keys), relative_position_index not counted."""
    logger = logger or _logger
    weights = read_pretrained(path, trusted)
    logger.info(f"loading pretrained weights from '{path}'")
    for line in format_report(weights):
        logger.info(f'pretrained: {line}')
    check_family(weights, model, path)
    state_dict = {k: v for k, v in weights.state_dict.items() if not is_rebuilt(k)}
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

    mismatched = shape_mismatches(model_state, state_dict)
    if mismatched:
        raise CheckpointError(f"checkpoint '{path}' does not fit the model: {listing('shape mismatches', mismatched)}")
    # Only the classifier, its norm and position terms may stay initialised; a checkpoint missing
    # any of the backbone (patch embedding, blocks) is for another architecture.
    optional = ('head.', 'fc_norm.', 'norm.', 'pos_embed', 'rel_pos_bias.')
    missing_backbone = sorted(k for k in model_state if k not in state_dict and not is_rebuilt(k)
                              and not k.startswith(optional))
    if missing_backbone:
        unexpected = sorted(set(state_dict) - set(model_state))
        problems = [listing(kind, items) for kind, items in
                    (('missing keys', missing_backbone), ('unexpected keys', unexpected)) if items]
        raise CheckpointError(f"checkpoint '{path}' is not a pretrained encoder of this model (another "
                              f"architecture?): {'; '.join(problems)}")

    check_finite(path, state_dict)  # what would be loaded; NaN in a part left out does no harm
    result = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in result.missing_keys if not is_rebuilt(k)]
    unexpected = list(result.unexpected_keys)
    if missing:
        logger.warning(f'pretrained: {listing("missing keys (left as initialised)", missing)}')
    if unexpected:
        logger.warning(f'pretrained: {listing("unexpected keys (ignored)", unexpected)}')
    logger.info(f"loaded pretrained weights from '{path}'")
    return missing, unexpected
