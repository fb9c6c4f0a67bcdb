"""The optimizer: AdamW or SGD over parameter groups with layer-wise LR decay (BEiT / SimMIM fine-tuning).

    optimizer = build_optimizer(config, unwrap_model(model), world_size)
    scheduler = build_scheduler(config, optimizer, n_iter_per_epoch)   # lr_scheduler.py

Layer ids: 0 for `cls_token`, `mask_token`, `pos_embed` and `patch_embed.*`; i + 1 for `blocks.i.*`;
depth + 1 for everything else (`rel_pos_bias`, `norm`, `fc_norm`, `head`). A group's learning rate is the
scheduled one times its `lr_scale` = LAYER_DECAY ** (depth + 1 - layer_id), so the head trains at the
full rate and the patch embedding at the smallest. Weight decay is off for 1-D parameters (norms,
q/v biases, layer-scale gammas), every `.bias`, and the model's `no_weight_decay()` names.

The groups are named `layer_<id>_<decay|no_decay>` and created in order of first appearance along
`model.named_parameters()`, as the original code did, so an optimizer state saved by the original
`main_finetune.py` has the same layout.
"""
import logging

import torch

from lr_scheduler import scaled_lrs


def get_layer_id(name, depth):
    """Layer id of the parameter `name` in a model with `depth` blocks (see the module docstring)."""
    if name in ('cls_token', 'mask_token', 'pos_embed') or name.startswith('patch_embed.'):
        return 0
    if name.startswith('blocks.'):
        return int(name.split('.')[1]) + 1
    return depth + 1


def param_groups_layer_decay(model, weight_decay, layer_decay, base_lr):
    """Parameter groups of the bare `model`, one per (layer id, decay or not) that has parameters,
    in order of first appearance along model.named_parameters() (the original's order).

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
    return list(groups.values())  # dicts keep insertion order: first appearance


def build_optimizer(config, model, world_size=1):
    """AdamW or SGD (TRAIN.OPTIMIZER.NAME, any case) for the bare `model` at the scaled base LR.
    Unwrap DDP / torch.compile first (utils.unwrap_model): the group rules match bare names. AdamW
    is the fused kernel where it can be: on CPU several times faster than the default (benchmarks/RESULTS.md)."""
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


def folds_clip_into_step(optimizer, scaler):
    """Whether `clip_and_step` can leave the clip's rescale to the optimizer: a fused Adam / AdamW
    (its kernel divides every gradient by `optimizer.grad_scale`) and no enabled GradScaler (whose
    unscale and inf check keep the plain clip)."""
    return (isinstance(optimizer, torch.optim.Adam) and not scaler.is_enabled()
            and all(group['fused'] for group in optimizer.param_groups))


def clip_and_step(optimizer, scaler, params, max_norm):
    """Unscale, clip the gradients of `params` to total norm `max_norm` (inf: no clip), step, update
    the scaler; -> the norm before clipping, a device tensor. No host sync.

    Where `folds_clip_into_step`, the gradients are not rescaled in place (a pass over every
    gradient, run even when the norm is below the clip): the fused kernel divides them by
    `optimizer.grad_scale` = max((norm + 1e-6) / max_norm, 1), clip_grad_norm_'s factor inverted,
    which is set for this one step only (it is no optimizer state: checkpoints never see it).
    """
    scaler.unscale_(optimizer)
    if not folds_clip_into_step(optimizer, scaler):
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        scaler.step(optimizer)  # skipped by the scaler if fp16 gradients overflowed
        scaler.update()
        return grad_norm
    # the very norm clip_grad_norm_ computes
    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    if max_norm < float('inf'):
        # fp32: the kernel reads the scale as a float; dividing by 1 below the clip changes no bit
        optimizer.grad_scale = torch.clamp((grad_norm.float() + 1e-6) / max_norm, min=1.0)
    try:
        optimizer.step()
    finally:
        optimizer.__dict__.pop('grad_scale', None)
    return grad_norm


class OptimizerStateError(ValueError):
    """A saved optimizer state that cannot be matched to this optimizer's parameters; says why."""


def _saved_names(saved, optimizer):
    """The parameter name of every integer id of the saved state dict `saved`, and how they were
    found: 'exact' (recorded in it: 'param_names', this project's checkpoints), 'original' (the
    original's layout, which is ours) or 'simmim' (SimMIM's own pre-training layout)."""
    groups = saved['param_groups']
    if all(len(g.get('param_names', ())) == len(g['params']) for g in groups):
        return {i: n for g in groups for i, n in zip(g['params'], g['param_names'])}, 'exact'
    # No names (the original's checkpoints): the ids number the parameters group by group in the
    # original's layout, which is ours, so the layouts must agree group for group.
    ours = optimizer.param_groups
    sizes, our_sizes = [len(g['params']) for g in groups], [len(g['params']) for g in ours]
    simmim = _simmim_groups(groups, ours)
    if simmim is not None:
        return {i: n for g, our in zip(groups, simmim) for i, n in zip(g['params'], our['param_names'])}, 'simmim'
    if sizes != our_sizes:
        raise OptimizerStateError(f'it has {len(groups)} parameter groups of sizes {sizes}, this model '
                                  f'{len(ours)} of sizes {our_sizes}, and it records no parameter names')
    for g, our in zip(groups, ours):
        label = g.get('group_name', g.get('name'))
        if label is not None and label != our['name']:
            raise OptimizerStateError(f"its group '{label}' is '{our['name']}' here")
    return {i: n for g, our in zip(groups, ours) for i, n in zip(g['params'], our['param_names'])}, 'original'


def _simmim_groups(groups, ours):
    """Our groups in the order of the saved `groups` when these are SimMIM's own pre-training layout,
    else None. SimMIM builds two unnamed groups, [decay, no_decay] (weight decay 0 in the second), by
    the rules of our one-layer SimMIM groups, with the parameters in the same (named_parameters) order;
    ours come in order of first appearance, [no_decay, decay], as cls_token comes first."""
    if len(groups) != 2 or len(ours) != 2 or any('group_name' in g or 'name' in g for g in groups):
        return None
    by_kind = {g['name'].endswith('_no_decay'): g for g in ours}
    if len(by_kind) != 2 or groups[1].get('weight_decay') != 0.0 or not groups[0].get('weight_decay'):
        return None
    layout = [by_kind[False], by_kind[True]]
    if [len(g['params']) for g in groups] != [len(g['params']) for g in layout]:
        return None
    return layout


def load_optimizer_state(optimizer, saved):
    """Load the optimizer state dict `saved` into `optimizer` (from build_optimizer). Returns how:
    'exact' (this project's state: torch's own load, group settings included), 'original' (the
    original's, without parameter names: mapped through its layout, which is ours) or 'simmim'
    (SimMIM's own pre-training state: its [decay, no_decay] groups mapped onto ours). Without names
    the group settings stay as built, so the caller sets the learning rates from its LR scheduler.

    Raises OptimizerStateError when the state is malformed or does not fit: other parameters, another
    group layout, or a moment whose shape differs from its parameter's.
    """
    if not isinstance(saved, dict) or not isinstance(saved.get('state'), dict) or \
            not isinstance(saved.get('param_groups'), list) or \
            not all(isinstance(g, dict) and isinstance(g.get('params'), list) for g in saved['param_groups']):
        raise OptimizerStateError("it is not an optimizer state dict (expected 'state' and 'param_groups')")
    names, how = _saved_names(saved, optimizer)
    current = optimizer.state_dict()
    our_ids = {n: i for g in current['param_groups'] for i, n in zip(g['params'], g['param_names'])}
    params = {n: p for g in optimizer.param_groups for n, p in zip(g['param_names'], g['params'])}
    if set(names.values()) != set(our_ids):
        missing, unexpected = sorted(set(our_ids) - set(names.values())), sorted(set(names.values()) - set(our_ids))
        raise OptimizerStateError(f'its parameters differ from the model\'s: missing {missing[:5]}, '
                                  f'unexpected {unexpected[:5]}')
    if how == 'exact':
        saved_layout = [g.get('param_names') for g in saved['param_groups']]
        if saved_layout != [g['param_names'] for g in current['param_groups']]:
            raise OptimizerStateError(f"its parameter groups are not this optimizer's ({len(saved_layout)} "
                                      f"groups, here {len(current['param_groups'])}, or another order)")
        optimizer.load_state_dict(saved)
        return 'exact'

    state = {}
    for saved_id, values in saved['state'].items():
        if saved_id not in names:
            raise OptimizerStateError(f'its state holds id {saved_id}, which no parameter group lists')
        name = names[saved_id]
        values = dict(values)
        for key, value in values.items():
            if key != 'step' and isinstance(value, torch.Tensor) and value.shape != params[name].shape:
                raise OptimizerStateError(f'{key} of {name} has shape {tuple(value.shape)}, the parameter '
                                          f'{tuple(params[name].shape)}')
        if 'step' in values and not isinstance(values['step'], torch.Tensor):
            values['step'] = torch.tensor(float(values['step']), dtype=torch.float32)  # old torch: a number
        state[our_ids[name]] = values
    optimizer.load_state_dict({'state': state, 'param_groups': current['param_groups']})
    return how


def resume_optimizer(optimizer, lr_scheduler, state, num_updates):
    """Restore the optimizer and the LR scheduler from the training checkpoint `state` (a dict with
    'optimizer' and, from this project, 'lr_scheduler') so that update `num_updates` comes next.
    Returns [(logging level, message)] saying what was done, for the run's log.

    Never raises: a state that cannot be used gives a warning and training continues from a fresh
    optimizer. The timm scheduler state of the original's or SimMIM's checkpoints is not loaded (timm
    changed its fields, and the LR is a pure function of the update anyway); every group's LR is set
    from the schedule.
    """
    notes = []
    try:
        how = load_optimizer_state(optimizer, state['optimizer'])
    except OptimizerStateError as e:
        how = 'fresh'
        notes.append((logging.WARNING, f'the optimizer state of the checkpoint cannot be used ({e}): starting '
                                       'from a fresh optimizer (AdamW moments reset)'))
    if how == 'original':
        notes.append((logging.INFO, 'optimizer state of the original code: mapped through its parameter-group '
                                    'layout; the LR schedule is recomputed from the config'))
    if how == 'simmim':
        notes.append((logging.INFO, "optimizer state of SimMIM's own code: its [decay, no_decay] parameter groups "
                                    "mapped onto this optimizer's; the LR schedule is recomputed from the config"))
    if how == 'exact' and isinstance(state.get('lr_scheduler'), dict):
        lr_scheduler.load_state_dict(state['lr_scheduler'])
    lr_scheduler.step_update(num_updates)  # the LR of the next update (what the saved groups held)
    if 'amp' in state:
        notes.append((logging.INFO, "the checkpoint's apex 'amp' state is not used: native mixed precision "
                                    'starts its grad scaler afresh'))
    return notes
