import logging

import pytest
import torch

from checkpoint import load_checkpoint_file, save_checkpoint

from lr_scheduler import build_scheduler, lr_at, scaled_lrs
from optimizer import (OptimizerStateError, build_optimizer, clip_and_step, folds_clip_into_step, get_layer_id,
                       load_optimizer_state, param_groups_layer_decay, resume_optimizer)
from tests.helpers import tiny_config, tiny_model

# The tiny model has depth 2, so layers are 0 (embedding), 1, 2 (blocks) and 3 (the rest).
EXPECTED_LAYER = {'cls_token': 0, 'pos_embed': 0, 'patch_embed': 0, 'blocks.0': 1, 'blocks.1': 2,
                  'rel_pos_bias': 3, 'norm': 3, 'fc_norm': 3, 'head': 3}
SCALE_BY_LAYER = {0: 0.274625, 1: 0.4225, 2: 0.65, 3: 1.0}  # 0.65 ** (3 - layer), by hand
APE_SHARED = ['MODEL.VIT.USE_APE', 'True', 'MODEL.VIT.USE_RPB', 'False', 'MODEL.VIT.USE_SHARED_RPB', 'True',
              'MODEL.VIT.USE_MEAN_POOLING', 'False']


def expected_layer(name):
    matches = [layer for prefix, layer in EXPECTED_LAYER.items() if name == prefix or name.startswith(prefix + '.')]
    assert len(matches) == 1, name
    return matches[0]


def groups_by_param(optimizer):
    """id(param) -> (group, name) for every parameter, failing on a parameter in two groups."""
    found = {}
    for group in optimizer.param_groups:
        for name, param in zip(group['param_names'], group['params']):
            assert id(param) not in found, f'{name} is in two groups'
            found[id(param)] = (group, name)
    return found


@pytest.mark.parametrize('opts', [[], APE_SHARED], ids=['per_block_rpb', 'ape_shared_rpb'])
def test_layer_decay_groups(opts):
    config = tiny_config(opts=opts)
    model = tiny_model(opts=opts)
    assert config.TRAIN.LAYER_DECAY == 0.65 and config.TRAIN.WEIGHT_DECAY == 0.05
    optimizer = build_optimizer(config, model)
    base_lr = scaled_lrs(config, 1)[0]
    found = groups_by_param(optimizer)
    named = dict(model.named_parameters())
    assert set(found) == {id(p) for p in named.values()}
    layers_seen = set()
    for group, name in found.values():
        param = named[name]
        layer = expected_layer(name)
        layers_seen.add(layer)
        assert group['lr_scale'] == pytest.approx(SCALE_BY_LAYER[layer]), name
        assert group['lr'] == pytest.approx(base_lr * SCALE_BY_LAYER[layer]), name
        assert group['initial_lr'] == base_lr
        no_decay = param.ndim == 1 or name.endswith('.bias') or name in ('cls_token', 'pos_embed')
        assert group['weight_decay'] == (0.0 if no_decay else 0.05), name
        assert group['name'] == f"layer_{layer}_{'no_decay' if no_decay else 'decay'}"
    assert layers_seen == {0, 1, 2, 3}


def test_weight_decay_of_named_parameters():
    optimizer = build_optimizer(tiny_config(opts=APE_SHARED), tiny_model(opts=APE_SHARED))
    decay = {name: group['weight_decay'] for group, name in groups_by_param(optimizer).values()}
    for name in ('cls_token', 'pos_embed', 'blocks.0.attn.q_bias', 'blocks.0.attn.v_bias', 'blocks.1.gamma_2',
                 'blocks.0.norm1.weight', 'patch_embed.proj.bias', 'head.bias', 'norm.weight'):
        assert decay[name] == 0.0, name
    for name in ('patch_embed.proj.weight', 'blocks.0.attn.qkv.weight', 'blocks.1.mlp.fc2.weight',
                 'rel_pos_bias.relative_position_bias_table', 'head.weight'):
        assert decay[name] == 0.05, name


def test_layer_ids_of_a_deep_model():
    assert get_layer_id('blocks.11.mlp.fc1.weight', 12) == 12
    assert get_layer_id('blocks.0.attn.qkv.weight', 12) == 1
    assert get_layer_id('patch_embed.proj.weight', 12) == 0
    assert get_layer_id('mask_token', 12) == 0  # SimMIM's, layer 0 as in the original
    assert get_layer_id('rel_pos_bias.relative_position_bias_table', 12) == 13
    assert get_layer_id('fc_norm.weight', 12) == 13


def test_frozen_parameters_are_left_out():
    model = tiny_model()
    for p in model.patch_embed.parameters():
        p.requires_grad_(False)
    optimizer = build_optimizer(tiny_config(), model)
    names = {name for group in optimizer.param_groups for name in group['param_names']}
    assert not any(name.startswith('patch_embed.') for name in names)
    assert 'cls_token' in names


def test_adamw_and_sgd_settings():
    adamw = build_optimizer(tiny_config(opts=['TRAIN.OPTIMIZER.BETAS', '(0.9, 0.95)', 'TRAIN.OPTIMIZER.EPS', '1e-6']),
                            tiny_model())
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.defaults['betas'] == (0.9, 0.95) and adamw.defaults['eps'] == 1e-6
    assert adamw.defaults['fused']  # the fused kernel, on the CPU too
    sgd = build_optimizer(tiny_config(opts=['TRAIN.OPTIMIZER.NAME', 'SGD', 'TRAIN.OPTIMIZER.MOMENTUM', '0.8']),
                          tiny_model())
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults['nesterov'] and sgd.defaults['momentum'] == 0.8


def test_unknown_optimizer_name():
    config = tiny_config().clone()
    config.defrost()
    config.TRAIN.OPTIMIZER.NAME = 'lamb'
    with pytest.raises(ValueError, match="'lamb'.*adamw, sgd"):
        build_optimizer(config, tiny_model())


def test_lr_scaling():
    # 128 per process x 4 processes x 2 accumulation steps = 1024 = 2 x 512
    config = tiny_config(opts=['DATA.BATCH_SIZE', '128', 'TRAIN.ACCUMULATION_STEPS', '2'])
    base, warmup, minimum = scaled_lrs(config, world_size=4)
    assert base == pytest.approx(2 * 1.25e-3)
    assert warmup == pytest.approx(2 * 2.5e-7) and minimum == pytest.approx(2 * 2.5e-7)
    for steps in ('0', '1'):  # no accumulation
        config = tiny_config(opts=['DATA.BATCH_SIZE', '64', 'TRAIN.ACCUMULATION_STEPS', steps])
        assert scaled_lrs(config, world_size=1)[0] == pytest.approx(1.25e-3 / 8)
    optimizer = build_optimizer(tiny_config(opts=['DATA.BATCH_SIZE', '128', 'TRAIN.ACCUMULATION_STEPS', '2']),
                                tiny_model(), world_size=4)
    head_group = next(g for g in optimizer.param_groups if g['name'] == 'layer_3_decay')
    assert head_group['lr'] == pytest.approx(2 * 1.25e-3)


def test_scheduler_applies_layer_scale_once():
    config = tiny_config(opts=['DATA.BATCH_SIZE', '512'])
    optimizer = build_optimizer(config, tiny_model())
    scheduler = build_scheduler(config, optimizer, n_iter_per_epoch=10, world_size=1)
    for num_updates in (0, 150, 600):
        scheduler.step_update(num_updates)
        for group in optimizer.param_groups:
            assert group['lr'] == pytest.approx(lr_at(scheduler, num_updates) * group['lr_scale'])
    assert lr_at(scheduler, 150) == pytest.approx(2.5e-7 + 150 * (1.25e-3 - 2.5e-7) / 200)  # warm-up: 20 x 10


def test_optimizer_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    config = tiny_config()
    model = tiny_model()
    optimizer = build_optimizer(config, model)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    save_checkpoint({'optimizer': optimizer.state_dict()}, str(tmp_path / 'checkpoint.pth'))
    state = load_checkpoint_file(str(tmp_path / 'checkpoint.pth'))  # weights_only=True
    resumed = build_optimizer(config, model)
    resumed.load_state_dict(state['optimizer'])
    for before, after in zip(optimizer.param_groups, resumed.param_groups):
        assert {k: v for k, v in before.items() if k != 'params'} == {k: v for k, v in after.items() if k != 'params'}
    param = model.head.weight
    assert torch.equal(resumed.state[param]['exp_avg'], optimizer.state[param]['exp_avg'])


# ----------------------------------------------------------------------------- saved states of other layouts
def first_appearance_groups(model):
    """The original's group names in order of first appearance along named_parameters(), by hand."""
    names = []
    for name, param in model.named_parameters():
        no_decay = param.ndim == 1 or name.endswith('.bias') or name in ('cls_token', 'pos_embed')
        group = f"layer_{expected_layer(name)}_{'no_decay' if no_decay else 'decay'}"
        if group not in names:
            names.append(group)
    return names


@pytest.mark.parametrize('opts', [[], APE_SHARED], ids=['per_block_rpb', 'ape_shared_rpb'])
def test_groups_are_in_the_originals_order(opts):
    model = tiny_model(opts=opts)
    optimizer = build_optimizer(tiny_config(opts=opts), model)
    assert [g['name'] for g in optimizer.param_groups] == first_appearance_groups(model)
    order = [n for g in optimizer.param_groups for n in g['param_names']]
    assert sorted(order) == sorted(n for n, _ in model.named_parameters())


def stepped(optimizer, model, steps=2):
    for _ in range(steps):
        model(torch.randn(2, 3, 32, 32)).logsumexp(dim=1).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return optimizer


def test_state_of_another_group_order_is_refused_and_our_own_loads_exactly():
    """A named state in another group order (this project's checkpoints before the groups took the
    original's order) is no longer mapped by name (issue 19): it is refused, with the reason."""
    config, model = tiny_config(), tiny_model()
    groups = param_groups_layer_decay(model, 0.05, 0.65, 1e-3)
    earlier = sorted(groups, key=lambda g: (int(g['name'].split('_')[1]), g['name'].endswith('no_decay')))
    assert [g['name'] for g in earlier] != [g['name'] for g in groups]  # the layouts do differ
    old = stepped(torch.optim.AdamW(earlier, lr=1e-3), model)
    with pytest.raises(OptimizerStateError, match="parameter groups are not this optimizer's"):
        load_optimizer_state(build_optimizer(config, model), old.state_dict())
    # our own current layout loads exactly, group settings included
    resumed = stepped(build_optimizer(config, model), model)
    resumed.param_groups[0]['lr'] = 0.123
    again = build_optimizer(config, model)
    assert load_optimizer_state(again, resumed.state_dict()) == 'exact'
    assert [g['lr'] for g in again.param_groups] == [g['lr'] for g in resumed.param_groups]
    assert again.param_groups[0]['lr'] == 0.123
    for group in again.param_groups:
        for name, param in zip(group['param_names'], group['params']):
            for key in ('exp_avg', 'exp_avg_sq', 'step'):
                assert torch.equal(again.state[param][key], resumed.state[param][key]), (name, key)


def original_state(model, steps=3):
    """An optimizer state as the original saved it, from the facts: no parameter names, ids numbering the
    parameters group by group in first-appearance order, 'group_name' labels, the step a plain number;
    each parameter's moments filled with its id, so a wrong mapping shows."""
    names = first_appearance_groups(model)
    members = {g: [] for g in names}
    for name, param in model.named_parameters():
        no_decay = param.ndim == 1 or name.endswith('.bias') or name in ('cls_token', 'pos_embed')
        members[f"layer_{expected_layer(name)}_{'no_decay' if no_decay else 'decay'}"].append((name, param))
    state, groups, ids = {}, [], {}
    for group in names:
        groups.append({'group_name': group, 'lr': 1.0, 'initial_lr': 1.0, 'lr_scale': 1.0, 'weight_decay': 0.0,
                       'betas': (0.9, 0.999), 'eps': 1e-8, 'amsgrad': False, 'params': []})
        for name, param in members[group]:
            i = len(ids)
            ids[name] = i
            groups[-1]['params'].append(i)
            state[i] = {'step': steps, 'exp_avg': torch.full_like(param, float(i)),
                        'exp_avg_sq': torch.full_like(param, float(i) ** 2)}
    return {'state': state, 'param_groups': groups}, ids


def test_original_state_is_mapped_through_its_layout():
    config, model = tiny_config(opts=APE_SHARED), tiny_model(opts=APE_SHARED)
    saved, ids = original_state(model)
    optimizer = build_optimizer(config, model)
    built = [{k: v for k, v in g.items() if k != 'params'} for g in optimizer.param_groups]
    assert load_optimizer_state(optimizer, saved) == 'original'
    named = dict(model.named_parameters())
    for name, i in ids.items():
        assert torch.equal(optimizer.state[named[name]]['exp_avg'], torch.full_like(named[name], float(i))), name
        assert optimizer.state[named[name]]['step'].item() == 3.0
    # the group settings stay as built here (the original's lr / initial_lr meant another thing)
    assert [{k: v for k, v in g.items() if k != 'params'} for g in optimizer.param_groups] == built
    stepped(optimizer, model, steps=1)  # and the optimizer steps on from it
    assert {optimizer.state[p]['step'].item() for p in named.values()} == {4.0}


def test_unusable_states_are_refused_with_the_reason():
    config, model = tiny_config(), tiny_model()
    saved, ids = original_state(model)
    short = {**saved, 'param_groups': saved['param_groups'][:-1]}
    with pytest.raises(OptimizerStateError, match='parameter groups of sizes'):
        load_optimizer_state(build_optimizer(config, model), short)
    wrong_shape = {**saved, 'state': dict(saved['state'])}
    wrong_shape['state'][ids['head.weight']] = {'step': 3, 'exp_avg': torch.zeros(2, 2)}
    with pytest.raises(OptimizerStateError, match=r'exp_avg of head.weight has shape \(2, 2\)'):
        load_optimizer_state(build_optimizer(config, model), wrong_shape)
    relabelled = {**saved, 'param_groups': [dict(g) for g in saved['param_groups']]}
    relabelled['param_groups'][0]['group_name'] = 'layer_9_decay'
    with pytest.raises(OptimizerStateError, match="group 'layer_9_decay'"):
        load_optimizer_state(build_optimizer(config, model), relabelled)
    with pytest.raises(OptimizerStateError, match='not an optimizer state dict'):
        load_optimizer_state(build_optimizer(config, model), {'state': []})
    other = build_optimizer(tiny_config(opts=APE_SHARED), tiny_model(opts=APE_SHARED)).state_dict()
    with pytest.raises(OptimizerStateError, match='differ from the model'):
        load_optimizer_state(build_optimizer(config, model), other)


def test_resume_optimizer_falls_back_to_a_fresh_optimizer_and_sets_the_lr():
    config, model = tiny_config(), tiny_model()
    saved, _ = original_state(model)
    optimizer = build_optimizer(config, model)
    scheduler = build_scheduler(config, optimizer, n_iter_per_epoch=10, world_size=1)
    notes = resume_optimizer(optimizer, scheduler, {'optimizer': {**saved, 'param_groups': []}, 'amp': {}}, 35)
    levels = [level for level, _ in notes]
    assert levels.count(logging.WARNING) == 1 and 'starting from a fresh optimizer' in notes[0][1]
    assert any("apex 'amp'" in text for _, text in notes)
    assert not optimizer.state  # fresh: no moments
    for group in optimizer.param_groups:  # the LR of update 35 from this config's schedule
        assert group['lr'] == pytest.approx(lr_at(scheduler, 35) * group['lr_scale'])
    notes = resume_optimizer(optimizer, scheduler, {'optimizer': saved}, 35)
    assert [level for level, _ in notes] == [logging.INFO] and 'original code' in notes[0][1]
    assert optimizer.state


# ----------------------------------------------------------------------------- the gradient clip
def reference_clip_and_step(optimizer, scaler, params, max_norm):
    """The clip as a pass of its own (clip_grad_norm_ rescales in place), then the step."""
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    scaler.step(optimizer)
    scaler.update()
    return grad_norm


def fused_adam(model):
    return torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=0.05, fused=True)


def clipped_run(clip_and_step_func, max_norm, make_optimizer=None, scaler_on=False, steps=3):
    """The tiny model after `steps` steps: (model, optimizer, the last step's gradients as the step
    left them, [steps] gradient norms). The steps check that no grad_scale outlives them."""
    model = tiny_model(opts=['MODEL.DROP_PATH_RATE', '0.0']).train()
    optimizer = make_optimizer(model) if make_optimizer else build_optimizer(tiny_config(), model)
    scaler = torch.amp.GradScaler('cpu', enabled=scaler_on, init_scale=2.0 ** 10)
    params = list(model.parameters())
    g = torch.Generator().manual_seed(1)
    norms = []
    for _ in range(steps):
        images, targets = torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 5, (4,), generator=g)
        scaler.scale(torch.nn.functional.cross_entropy(model(images), targets)).backward()
        norms.append(clip_and_step_func(optimizer, scaler, params, max_norm))
        grads = [p.grad.clone() for p in params]
        optimizer.zero_grad(set_to_none=True)
        assert not hasattr(optimizer, 'grad_scale') and 'grad_scale' not in repr(optimizer.state_dict())
    return model, optimizer, grads, torch.stack(norms)


def run_values(run):
    """Every tensor of a clipped_run that the clip reaches: weights, Adam moments, gradients."""
    model, optimizer, grads, _ = run
    moments = [optimizer.state[p][k] for p in model.parameters() for k in ('exp_avg', 'exp_avg_sq')]
    return [*model.parameters(), *moments, *grads]


@pytest.mark.parametrize('make_optimizer', [None, fused_adam], ids=['fused_adamw', 'fused_adam'])
@pytest.mark.parametrize('max_norm', [1e-2, 1e3, float('inf')], ids=['above_clip', 'below_clip', 'no_clip'])
def test_clip_folded_into_the_fused_step_equals_clip_grad_norm(make_optimizer, max_norm):
    ours = clipped_run(clip_and_step, max_norm, make_optimizer)
    reference = clipped_run(reference_clip_and_step, max_norm, make_optimizer)
    assert folds_clip_into_step(ours[1], torch.amp.GradScaler('cpu', enabled=False))
    norms, reference_norms = ours[3], reference[3]
    assert torch.equal(norms[0], reference_norms[0])  # the same gradients: the same logged norm
    if max_norm > 1:  # every norm below the clip: dividing by 1 changes no bit
        assert (norms < max_norm).all()
        assert torch.equal(norms, reference_norms)
        assert all(torch.equal(a, b) for a, b in zip(run_values(ours), run_values(reference)))
        return
    assert (norms > 10 * max_norm).all()
    # Dividing by (norm + 1e-6) / max_norm instead of multiplying by its float32 inverse rounds a
    # gradient differently by at most an ulp or two: after one step, 2 ulp (rtol 2^-22). Later
    # steps start from weights that differ by such ulps, and the difference spreads through the
    # network: after 3 steps it was at most 1.5e-6 of each tensor's largest entry (weights, moments,
    # gradients); we allow 1e-5 of it, while a wrong clip factor would move the moments by O(1).
    one_step = clipped_run(clip_and_step, max_norm, make_optimizer, steps=1)
    one_step_reference = clipped_run(reference_clip_and_step, max_norm, make_optimizer, steps=1)
    for a, b in zip(one_step[2], one_step_reference[2]):
        torch.testing.assert_close(a, b, rtol=2.0 ** -22, atol=0)
    torch.testing.assert_close(norms, reference_norms, rtol=1e-6, atol=0)
    for a, b in zip(run_values(ours), run_values(reference)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
    unclipped = clipped_run(reference_clip_and_step, float('inf'), make_optimizer)
    assert not torch.allclose(ours[1].state[ours[0].head.weight]['exp_avg'],
                              unclipped[1].state[unclipped[0].head.weight]['exp_avg'])  # the clip acted


def test_fp16_grad_scaler_keeps_the_plain_clip():
    # the GradScaler unscales, checks for inf and skips steps itself: the same operators as before, bit for bit
    optimizer = build_optimizer(tiny_config(), tiny_model())
    assert not folds_clip_into_step(optimizer, torch.amp.GradScaler('cpu', enabled=True))
    ours = clipped_run(clip_and_step, 1e-2, scaler_on=True)
    reference = clipped_run(reference_clip_and_step, 1e-2, scaler_on=True)
    assert torch.equal(ours[3], reference[3])
    assert all(torch.equal(a, b) for a, b in zip(run_values(ours), run_values(reference)))


def test_only_a_fused_adam_folds_the_clip():
    model, scaler = tiny_model(), torch.amp.GradScaler('cpu', enabled=False)
    assert folds_clip_into_step(torch.optim.AdamW(model.parameters(), fused=True), scaler)
    assert not folds_clip_into_step(torch.optim.AdamW(model.parameters(), fused=False), scaler)
    assert not folds_clip_into_step(torch.optim.AdamW(model.parameters()), scaler)  # for-each on CPU
    assert not folds_clip_into_step(build_optimizer(tiny_config(opts=['TRAIN.OPTIMIZER.NAME', 'sgd']), model), scaler)


# ----------------------------------------------------------------------------- SimMIM's own checkpoints
def simmim_code_optimizer(config, model):
    """AdamW as SimMIM's own main_simmim.py builds it, from the facts: two groups, [decay, no_decay]
    (weight decay 0 in the second), no decay for 1-D parameters, biases, cls_token and pos_embed,
    each group's parameters in named_parameters() order, no names recorded."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        skip = param.ndim == 1 or name.endswith('.bias') or name in ('encoder.cls_token', 'encoder.pos_embed')
        (no_decay if skip else decay).append(param)
    opt = config.TRAIN.OPTIMIZER
    return torch.optim.AdamW([{'params': decay}, {'params': no_decay, 'weight_decay': 0.0}], lr=1e-3,
                             betas=tuple(opt.BETAS), eps=opt.EPS, weight_decay=config.TRAIN.WEIGHT_DECAY, fused=True)


def simmim_step(model, optimizer, seed):
    g = torch.Generator().manual_seed(seed)
    images, mask = torch.randn(2, 3, 16, 16, generator=g), torch.randint(0, 2, (2, 4, 4), generator=g)
    model(images, mask).backward()
    optimizer.step()
    optimizer.zero_grad()


def test_simmim_code_state_is_mapped_onto_our_groups_and_resumes_exactly(tmp_path):
    """SimMIM orders its pre-training groups [decay, no_decay]; ours come in order of first appearance
    ([no_decay, decay]: cls_token first). Its AdamW state maps onto the same parameters, and the next
    step equals the one SimMIM's optimizer takes."""
    from models import build_simmim
    from tests.test_simmim import simmim_config, tiny_simmim

    config = simmim_config()
    model = tiny_simmim().train()
    theirs = simmim_code_optimizer(config, model)
    for seed in range(2):
        simmim_step(model, theirs, seed)
    path = str(tmp_path / 'simmim_code.pth')
    save_checkpoint({'model': model.state_dict(), 'optimizer': theirs.state_dict(), 'epoch': 4}, path)
    state = load_checkpoint_file(path)
    assert 'param_names' not in state['optimizer']['param_groups'][0]

    resumed = build_simmim(config).train()
    resumed.load_state_dict(state['model'])
    ours = build_optimizer(config, resumed)
    assert [g['name'] for g in ours.param_groups] == ['layer_3_no_decay', 'layer_3_decay']  # SimMIM's reversed
    scheduler = build_scheduler(config, ours, n_iter_per_epoch=6, world_size=1)
    notes = resume_optimizer(ours, scheduler, state, 30)
    assert notes == [(logging.INFO, "optimizer state of SimMIM's own code: its [decay, no_decay] parameter groups "
                                    "mapped onto this optimizer's; the LR schedule is recomputed from the config")]
    theirs_params, ours_params = dict(model.named_parameters()), dict(resumed.named_parameters())

    def assert_same_state():
        for name, param in theirs_params.items():
            for key in ('exp_avg', 'exp_avg_sq', 'step'):
                assert torch.equal(ours.state[ours_params[name]][key], theirs.state[param][key]), (name, key)

    assert_same_state()
    for group in ours.param_groups:  # the schedule's LR; for the comparison below, SimMIM's
        assert group['lr'] == pytest.approx(lr_at(scheduler, 30) * group['lr_scale'])
        group['lr'] = 1e-3
    simmim_step(model, theirs, seed=2)  # one more step in each: the same weights and moments, bit for bit
    simmim_step(resumed, ours, seed=2)
    assert_same_state()
    for name, param in ours_params.items():
        assert torch.equal(param, theirs_params[name]), name


def test_simmim_code_layout_needs_the_same_groups():
    from tests.test_simmim import simmim_config, tiny_simmim

    config = simmim_config()
    model = tiny_simmim().train()
    theirs = simmim_code_optimizer(config, model)
    simmim_step(model, theirs, 0)
    saved = theirs.state_dict()
    moved = {**saved, 'param_groups': [dict(g) for g in saved['param_groups']]}  # one parameter in the other group
    moved['param_groups'][0]['params'] = saved['param_groups'][0]['params'][:-1]
    moved['param_groups'][1]['params'] = saved['param_groups'][0]['params'][-1:] + saved['param_groups'][1]['params']
    with pytest.raises(OptimizerStateError, match='parameter groups of sizes'):
        load_optimizer_state(build_optimizer(config, model), moved)
    # a fine-tuning model's many layer groups are never read as SimMIM's two
    with pytest.raises(OptimizerStateError, match='parameter groups of sizes'):
        load_optimizer_state(build_optimizer(tiny_config(), tiny_model()), saved)
