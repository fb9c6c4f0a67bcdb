"""What a --pretrained checkpoint is, and its weights in this model's state-dict names.

    weights = read_pretrained(spec, trusted=False)   # a .pth / .safetensors path, or timm:<model_name>
    weights.state_dict, weights.format, weights.dropped
    check_family(weights, model, spec)                # CheckpointError when the parts differ

checkpoint.load_pretrained calls both, then resizes position terms and loads. Formats, recognised
from the keys (and from the `{'model': ...}` wrapper around them):

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

`.safetensors` files are read with the safetensors library (no pickle at all). `timm:<model_name>`
asks timm for its pretrained weights (a download from the Hugging Face Hub, so it needs internet).
"""
import math
import os
import re
from dataclasses import dataclass, field

import torch

from checkpoint import CheckpointError, load_checkpoint_file

TIMM_PREFIX = 'timm:'
PSS_STATE_DICT = 'PSS state dict (export.py --state-dict)'  # our names; metadata format 'pss'
_WRAPPERS = ('model', 'module', 'state_dict')  # where MAE / DeiT / BEiT / SimMIM keep the weights
_FIRST_KEYS = 8  # keys listed in a message (the first of a file that is not a known format, ...)
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


def _read_safetensors(path):
    """(state dict, metadata) of a .safetensors file."""
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


def _unwrap(checkpoint, path):
    """(state dict, the wrapper dict or None) from what torch.load returned."""
    if isinstance(checkpoint, dict):
        for key in _WRAPPERS:
            if isinstance(checkpoint.get(key), dict):
                return dict(checkpoint[key]), checkpoint
        if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            return dict(checkpoint), None
    keys = list(checkpoint)[:_FIRST_KEYS] if isinstance(checkpoint, dict) else type(checkpoint).__name__
    raise CheckpointError(f"checkpoint '{path}' holds no model weights: expected {{'model': state_dict}} "
                          f'or a bare state dict, found {keys}')


# --- recognising and converting --------------------------------------------------------------------
def _drop(state_dict, dropped, test):
    for key in [k for k in state_dict if test(k)]:
        dropped.append(key)
        del state_dict[key]


def _convert(state_dict, wrapper, source, path):
    """Pretrained(...) in our names; `source` is 'timm vision_transformer' / 'timm beit' or None."""
    sd, dropped = dict(state_dict), []
    if any(k.startswith('encoder.') for k in sd):
        # The rest (the SimMIM decoder) is dropped; encoder.mask_token stays an unexpected key.
        _drop(sd, dropped, lambda k: not k.startswith('encoder.'))
        sd = {k[len('encoder.'):]: v for k, v in sd.items()}
        return Pretrained(sd, 'SimMIM pre-training', dropped)
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


def read_pretrained(spec, trusted=False):
    """The weights of --pretrained `spec` (a .pth / .safetensors path or timm:<model_name>) in our names."""
    if spec.startswith(TIMM_PREFIX):
        state_dict, kind = timm_state_dict(spec[len(TIMM_PREFIX):])
        return _convert(state_dict, None, f'timm {kind}', spec)
    if spec.endswith('.safetensors'):
        state_dict, metadata = _read_safetensors(spec)
        return _convert(state_dict, None, PSS_STATE_DICT if metadata.get('format') == 'pss' else None, spec)
    state_dict, wrapper = _unwrap(load_checkpoint_file(spec, trusted), spec)
    return _convert(state_dict, wrapper, None, spec)


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
        more = f' (+{len(weights.dropped) - _FIRST_KEYS} more)' if len(weights.dropped) > _FIRST_KEYS else ''
        lines.append(f'dropped {len(weights.dropped)} keys not used for fine-tuning: '
                     f"{', '.join(weights.dropped[:_FIRST_KEYS])}{more}")
    return lines + weights.converted
