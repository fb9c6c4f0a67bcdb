"""The optimizer: AdamW or SGD over parameter groups with layer-wise LR decay (BEiT / SimMIM fine-tuning).

    optimizer = build_optimizer(config, unwrap_model(model), world_size)
    scheduler = build_scheduler(config, optimizer, n_iter_per_epoch)   # lr_scheduler.py

Layer ids: 0 for `cls_token`, `pos_embed` and `patch_embed.*`; i + 1 for `blocks.i.*`; depth + 1
for everything else (`rel_pos_bias`, `norm`, `fc_norm`, `head`). A group's learning rate is the
scheduled one times its `lr_scale` = LAYER_DECAY ** (depth + 1 - layer_id), so the head trains at the
full rate and the patch embedding at the smallest. Weight decay is off for 1-D parameters (norms,
q/v biases, layer-scale gammas), every `.bias`, and the model's `no_weight_decay()` names.
"""
import torch

from lr_scheduler import scaled_lrs


def get_layer_id(name, depth):
    """Layer id of the parameter `name` in a model with `depth` blocks (see the module docstring)."""
    if name in ('cls_token', 'pos_embed') or name.startswith('patch_embed.'):
        return 0
    if name.startswith('blocks.'):
        return int(name.split('.')[1]) + 1
    return depth + 1


def param_groups_layer_decay(model, weight_decay, layer_decay, base_lr):
    """Parameter groups of the bare `model`, one per (layer id, decay or not) that has parameters.

    Each group holds named parameters (so the optimizer records `param_names`), a readable `name`,
    `weight_decay`, `lr_scale`, and `lr` = base_lr * lr_scale (right for an optimizer used on its
    own). `initial_lr` = base_lr is what timm's schedulers start from: they multiply every value
    they set by `lr_scale` themselves, so starting from `lr` would apply the scale twice.
    Parameters with requires_grad False are left out.
    """
    depth = model.get_num_layers()
    skip = set(model.no_weight_decay()) if hasattr(model, 'no_weight_decay') else set()
    groups = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer_id = get_layer_id(name, depth)
        no_decay = param.ndim <= 1 or name.endswith('.bias') or name in skip
        key = (layer_id, no_decay)
        if key not in groups:
            lr_scale = layer_decay ** (depth + 1 - layer_id)
            groups[key] = {
                'name': f"layer_{layer_id}_{'no_decay' if no_decay else 'decay'}",
                'params': [],
                'weight_decay': 0.0 if no_decay else weight_decay,
                'lr_scale': lr_scale,
                'lr': base_lr * lr_scale,
                'initial_lr': base_lr,
            }
        groups[key]['params'].append((name, param))
    return [groups[key] for key in sorted(groups)]


def build_optimizer(config, model, world_size=1):
    """AdamW or SGD (TRAIN.OPTIMIZER.NAME, any case) for the bare `model` at the scaled base LR.

    Unwrap DDP / torch.compile first (utils.unwrap_model): the group rules match bare names.
    AdamW uses the fused kernel when every parameter is on a CUDA or CPU device (on CPU it took
    0.12 s per ViT-B step against 0.87 s for the default implementation, benchmarks/RESULTS.md).
    """
    base_lr, _, _ = scaled_lrs(config, world_size)
    opt = config.TRAIN.OPTIMIZER
    groups = param_groups_layer_decay(model, config.TRAIN.WEIGHT_DECAY, config.TRAIN.LAYER_DECAY, base_lr)
    if not groups:
        raise ValueError('build_optimizer: the model has no parameters with requires_grad=True')
    name = opt.NAME.lower()
    if name == 'adamw':
        fusable = all(p.device.type in ('cuda', 'cpu') for group in groups for _, p in group['params'])
        return torch.optim.AdamW(groups, lr=base_lr, betas=tuple(opt.BETAS), eps=opt.EPS,
                                 weight_decay=config.TRAIN.WEIGHT_DECAY, fused=True if fusable else None)
    if name == 'sgd':
        return torch.optim.SGD(groups, lr=base_lr, momentum=opt.MOMENTUM, nesterov=True,
                               weight_decay=config.TRAIN.WEIGHT_DECAY)
    raise ValueError(f"TRAIN.OPTIMIZER.NAME '{opt.NAME}' is not known; valid values: adamw, sgd")
