"""Same names, same meanings as the original code: every output file of a tiny run checked field by
field (name, type, shape, meaning), and resuming from a checkpoint laid out as the original saved it.

The original checkpoint is built here from the facts of its layout (issue 12), not from its code:
groups `layer_<id>_<decay|no_decay>` in order of first appearance along model.named_parameters(),
layer 0 for cls_token / mask_token / pos_embed / patch_embed.*, i + 1 for blocks.<i>.*, depth + 1 for
the rest; no weight decay for 1-D tensors, `.bias`, pos_embed and cls_token; state ids numbering the
parameters group by group; keys model, optimizer, lr_scheduler (timm's), max_accuracy, epoch, a
pickled yacs config and apex's amp.
"""
import argparse
import json
import math
import os

import numpy as np
import pytest
import torch
import yaml
from timm.scheduler import CosineLRScheduler

import image_patches
import patch_distribution
import sweep_drop
from config import get_config
from lr_scheduler import build_scheduler, lr_at
from models import build_model
from optimizer import build_optimizer
from patch_scheduler import patch_drop_ratio_at
from tests.helpers import make_image_folder
from tests.test_finetune import TINY, launch, read_jsonl, train_args

EPOCHS, STEPS, BATCH = 2, 6, 4  # 24 training images in batches of 4
NUM_VAL, VAL_BATCHES = 7, 2  # 3 + 3 + 1 validation images: a full and a partial batch
NUM_CLASSES, GRID, NUM_TOKENS = 3, 4, 17  # 16 px images, 4 px patches, CLS counted
CFG = 'configs/demo/magnitude_cyclic.yaml'
SCHEDULE = ('cyclic', 0.8, -0.1)  # configs/demo/magnitude_cyclic.yaml
GRID_DROP_RATIOS = [0.0, 0.2, 0.4, 0.6, 0.8]


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('data'), num_train=8, num_val=[3, 3, 1])


@pytest.fixture(scope='module')
def tiny_run(dataset, tmp_path_factory):
    """A finished 2-epoch run and the outputs of the three experiment scripts on its checkpoint."""
    out = tmp_path_factory.mktemp('run')
    launch(train_args(dataset, out, epochs=EPOCHS))
    run_dir = out / 'demo' / 'magnitude_cyclic'
    checkpoint = run_dir / 'checkpoint.pth'
    for script in (sweep_drop, image_patches, patch_distribution):
        argv = ['--cfg', CFG, '--data-path', dataset, '--pretrained', str(checkpoint), '--output', str(out),
                '--tag', 'experiments', '--batch-size', str(BATCH), '--opts', *TINY]
        assert script.run(argv) == 0
    return run_dir, out / 'demo' / 'experiments'


def is_number(value):
    return type(value) in (int, float)


@pytest.mark.slow
def test_train_log_fields_and_meanings(tiny_run):
    run_dir, _ = tiny_run
    train = read_jsonl(run_dir / 'train_log.json')
    assert len(train) == EPOCHS * STEPS
    for i, record in enumerate(train):
        epoch, k = divmod(i, STEPS)
        assert type(record['epoch']) is int and record['epoch'] == epoch
        assert type(record['iteration']) is int and record['iteration'] == i  # global iteration
        assert type(record['step_loss']) is float and math.isfinite(record['step_loss']) and record['step_loss'] > 0
        # the original's `loss`: the running mean of the epoch's losses so far, recomputed here
        epoch_steps = [r['step_loss'] for r in train[epoch * STEPS:i + 1]]
        assert len(epoch_steps) == k + 1
        assert record['loss'] == pytest.approx(np.mean(epoch_steps), rel=1e-12)
        assert all(is_number(record[f]) for f in ('lr', 'time', 'cpu_time', 'gpu_time', 'memory'))
        assert record['lr'] > 0 and record['time'] > 0 and record['cpu_time'] >= 0 and record['memory'] > 0
        assert record['gpu_time'] == pytest.approx(record['time'] - record['cpu_time'])
        assert record['patch_drop_ratio'] == patch_drop_ratio_at(i, *SCHEDULE, STEPS, EPOCHS)
    # `lr`: the step's own, of the head's group (lr_scale 1), from the config's schedule
    config = train_config()
    scheduler = build_scheduler(config, build_optimizer(config, build_model(config)), STEPS, world_size=1)
    assert [r['lr'] for r in train] == pytest.approx([lr_at(scheduler, i) for i in range(len(train))], rel=1e-9)
    assert train[0]['loss'] == train[0]['step_loss'] and train[STEPS]['loss'] == train[STEPS]['step_loss']
    assert any(r['loss'] != r['step_loss'] for r in train)  # not the same field twice


@pytest.mark.slow
def test_val_log_fields_and_meanings(tiny_run):
    run_dir, experiments = tiny_run
    val = read_jsonl(run_dir / 'val_log.json')
    assert [r['epoch'] for r in val] == list(range(EPOCHS))
    for record in val:
        assert all(is_number(record[f]) for f in ('loss', 'acc1', 'acc5', 'time', 'total_time', 'memory'))
        assert 0 <= record['acc1'] <= record['acc5'] <= 100
        # `time` is the original's mean time per batch; `total_time` the whole pass (2 batches here)
        assert 0 < record['time'] * VAL_BATCHES <= record['total_time']
        assert record['time'] * VAL_BATCHES == pytest.approx(record['total_time'], rel=0.5)
        for acc in ('acc1', 'acc5'):  # a whole number of the 7 images
            assert record[acc] * NUM_VAL / 100 == pytest.approx(round(record[acc] * NUM_VAL / 100))
    # the last epoch's numbers are those of the final checkpoint at rho = 1
    sweep = {r['drop_ratio']: r for r in read_jsonl(experiments / 'sweep_drop.json')}
    for field in ('acc1', 'acc5', 'loss'):
        assert val[-1][field] == pytest.approx(sweep[0.0][field], rel=1e-9)


@pytest.mark.slow
def test_config_json_is_the_config_the_run_used(tiny_run):
    run_dir, _ = tiny_run
    with open(run_dir / 'config.json') as f:
        saved = json.load(f)
    with open(run_dir / 'config.json') as f:
        assert yaml.safe_load(f) == saved  # readers of the original's config.json (YAML text) read it too
    with open(run_dir / 'config.yaml') as f:
        resolved = yaml.safe_load(f)
    # the number of classes the model was built with (3 class folders), not the default 1000
    assert saved['MODEL']['NUM_CLASSES'] == resolved['MODEL']['NUM_CLASSES'] == NUM_CLASSES
    state = torch.load(run_dir / 'checkpoint.pth', map_location='cpu', weights_only=True)
    assert yaml.safe_load(state['config'])['MODEL']['NUM_CLASSES'] == NUM_CLASSES
    assert state['model']['head.weight'].shape[0] == NUM_CLASSES
    # the learning rates after the linear scaling (batch 4 x 1 process / 512), as the original saved them
    scale = BATCH / 512
    for key in ('BASE_LR', 'WARMUP_LR', 'MIN_LR'):
        assert saved['TRAIN'][key] == pytest.approx(resolved['TRAIN'][key] * scale, rel=1e-12)
    # everything else is the resolved config (tuples become lists in both files)
    for config in (saved, resolved):
        for key in ('BASE_LR', 'WARMUP_LR', 'MIN_LR'):
            del config['TRAIN'][key]
    assert saved == resolved
    assert saved['MODEL']['VIT']['DEPTH'] == 2 and saved['DATA']['IMG_SIZE'] == 16


@pytest.mark.slow
def test_sweep_drop_json_fields(tiny_run):
    _, experiments = tiny_run
    sweep = read_jsonl(experiments / 'sweep_drop.json')
    assert [r['drop_ratio'] for r in sweep] == [round(0.1 * i, 1) for i in range(9)]  # the original's defaults
    for r in sweep:
        assert all(is_number(r[f]) for f in ('drop_ratio', 'acc1', 'time', 'throughput'))
        assert 0 <= r['acc1'] <= 100 and r['time'] > 0
        assert r['throughput'] == pytest.approx(NUM_VAL / r['time'])  # images / s of the whole pass


@pytest.mark.slow
def test_image_patches_json_fields(tiny_run):
    _, experiments = tiny_run
    with open(experiments / 'image_patches.json') as f:
        data = json.load(f)
    assert data['drop_ratios'] == GRID_DROP_RATIOS
    images = np.asarray(data['images'])
    num_images = images.shape[0]
    assert images.shape == (num_images, 3, 16, 16) and images.dtype == float
    assert len(data['targets']) == num_images and all(type(t) is int and 0 <= t < NUM_CLASSES
                                                      for t in data['targets'])
    assert sorted(data['class_to_idx'].values()) == list(range(NUM_CLASSES))
    assert len(data['kept_patches']) == len(data['logits']) == len(GRID_DROP_RATIOS)
    for d, (batch, tokens), logits in zip(GRID_DROP_RATIOS, data['kept_patches'], data['logits']):
        kept = round((1 - d) * NUM_TOKENS)
        assert len(batch) == len(tokens) == num_images * kept  # one entry per kept token
        for b in range(num_images):
            mine = [t for i, t in zip(batch, tokens) if i == b]
            assert mine[0] == 0 and len(set(mine)) == kept and all(0 <= t < NUM_TOKENS for t in mine)
        assert np.asarray(logits).shape == (num_images, NUM_CLASSES)


@pytest.mark.slow
def test_patch_distribution_json_is_the_originals_form(tiny_run):
    _, experiments = tiny_run
    with open(experiments / 'patch_distribution.json') as f:
        data = json.load(f)
    assert data['drop_ratios'] == GRID_DROP_RATIOS  # the original script's defaults, 0.0 first
    assert data['grid_shape'] == [GRID, GRID] and data['num_images'] == NUM_VAL
    assert len(data['counts']) == len(GRID_DROP_RATIOS)
    for counts, d in zip(data['counts'], data['drop_ratios']):
        assert len(counts) == GRID * GRID and all(type(c) is int for c in counts)  # one flat list per ratio
        assert sum(counts) == NUM_VAL * (round((1 - d) * NUM_TOKENS) - 1)
        # what the original's viz/patch_distribution.py does with it: a square from the list's length
        side = int(np.sqrt(np.asarray(counts).shape[0]))
        assert np.asarray(counts).reshape(side, side).shape == (GRID, GRID)
    assert data['counts'][0] == [NUM_VAL] * GRID * GRID


# ----------------------------------------------------------------------------- the original's checkpoint
def original_layer_id(name, depth):
    if name in ('cls_token', 'mask_token', 'pos_embed') or name.startswith('patch_embed.'):
        return 0
    if name.startswith('blocks.'):
        return int(name.split('.')[1]) + 1
    return depth + 1


def original_param_groups(model, base_lr, weight_decay, layer_decay):
    """The original's groups, from the facts: dicts of plain tensors (no names), first-appearance order."""
    depth = len(model.blocks)
    groups = {}
    for name, param in model.named_parameters():
        no_decay = param.ndim == 1 or name.endswith('.bias') or name in ('pos_embed', 'cls_token')
        layer = original_layer_id(name, depth)
        group_name = f"layer_{layer}_{'no_decay' if no_decay else 'decay'}"
        scale = layer_decay ** (depth + 1 - layer)
        group = groups.setdefault(group_name, {'group_name': group_name, 'weight_decay': 0.0 if no_decay else
                                               weight_decay, 'params': [], 'lr': base_lr * scale, 'lr_scale': scale})
        group['params'].append(param)
    return list(groups.values())


def write_original_checkpoint(path, steps=STEPS):
    """A checkpoint as the original main_finetune.py saved it after epoch 0 of the tiny run."""
    config = train_config()  # a yacs CfgNode, as the original pickled
    torch.manual_seed(1)
    model = build_model(config)
    groups = original_param_groups(model, 1e-3, 0.05, 0.75)
    optimizer = torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.05)
    scheduler = CosineLRScheduler(optimizer, t_initial=EPOCHS * STEPS, lr_min=1e-6, warmup_t=STEPS,
                                  warmup_lr_init=1e-6, t_in_epochs=False)
    for step in range(steps):
        model(torch.randn(2, 3, 16, 16)).logsumexp(dim=1).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step_update(step)
    saved = optimizer.state_dict()
    for values in saved['state'].values():
        values['step'] = int(values['step'])  # the torch of 2022 kept the step count as a number
    state = {'model': model.state_dict(), 'optimizer': saved, 'lr_scheduler': scheduler.state_dict(),
             'max_accuracy': 12.5, 'epoch': 0, 'config': config,
             'amp': {'loss_scaler0': {'loss_scale': 65536.0, 'unskipped': 0}}}
    torch.save(state, path)  # pickles the yacs CfgNode, as the original did
    return model, saved


def test_the_original_layout_is_ours(tmp_path):
    """Our parameter groups are the original's, group for group and parameter for parameter."""
    model, saved = write_original_checkpoint(tmp_path / 'ckpt_epoch_0.pth', steps=1)
    ours = build_optimizer(train_config(), model)
    assert [g['group_name'] for g in saved['param_groups']] == [g['name'] for g in ours.param_groups]
    names = [n for n, _ in model.named_parameters()]
    ids = [i for g in saved['param_groups'] for i in g['params']]
    assert ids == list(range(len(names)))  # state ids number the parameters group by group
    order = [n for g in ours.param_groups for n in g['param_names']]
    by_group = {}
    for name in names:  # the original's order, rebuilt
        no_decay = dict(model.named_parameters())[name].ndim == 1 or name.endswith('.bias') or \
            name in ('pos_embed', 'cls_token')
        by_group.setdefault((original_layer_id(name, 2), no_decay), []).append(name)
    assert order == [n for group in by_group.values() for n in group]


def train_config():
    """The resolved config of the tiny run (the model the checkpoint must fit)."""
    opts = TINY + ['MODEL.NUM_CLASSES', str(NUM_CLASSES), 'TRAIN.EPOCHS', str(EPOCHS)]
    return get_config(argparse.Namespace(cfg=CFG, opts=opts, batch_size=BATCH))


@pytest.mark.slow
def test_resume_from_an_original_checkpoint(dataset, tmp_path):
    checkpoint = tmp_path / 'ckpt_epoch_0.pth'
    write_original_checkpoint(checkpoint)
    out = tmp_path / 'out'
    args = train_args(dataset, out, epochs=EPOCHS) + ['--resume', str(checkpoint)]

    refused = launch(args, check=False)  # the pickled config needs the trust flag
    assert refused.returncode == 2 and refused.stderr.count('\n') == 1
    assert refused.stderr.startswith('error: ') and '--trust-checkpoint' in refused.stderr

    result = launch(args + ['--trust-checkpoint'])
    assert 'Traceback' not in result.stderr
    run_dir = out / 'demo' / 'magnitude_cyclic'
    log = (run_dir / 'log_rank0.txt').read_text()
    assert 'optimizer state of the original code' in log and "apex 'amp' state is not used" in log
    assert 'cannot be used' not in log  # the moments were used, not replaced by a fresh optimizer
    train = read_jsonl(run_dir / 'train_log.json')
    # epoch 0 came from the checkpoint; epoch 1 is trained, on the patch schedule derived from the epoch
    assert [r['iteration'] for r in train] == list(range(STEPS, EPOCHS * STEPS))
    assert [r['patch_drop_ratio'] for r in train] == [patch_drop_ratio_at(i, *SCHEDULE, STEPS, EPOCHS)
                                                      for i in range(STEPS, EPOCHS * STEPS)]
    # the LR is this config's schedule at update 6 (the head's group has lr_scale 1)
    config = train_config()
    scheduler = build_scheduler(config, build_optimizer(config, build_model(config)), STEPS, world_size=1)
    assert train[0]['lr'] == pytest.approx(lr_at(scheduler, STEPS), rel=1e-9)
    assert [r['epoch'] for r in read_jsonl(run_dir / 'val_log.json')] == [1]
    state = torch.load(run_dir / 'checkpoint.pth', map_location='cpu', weights_only=True)
    assert state['epoch'] == EPOCHS - 1 and state['max_accuracy'] >= 12.5
    # AdamW continued the original's moments: 6 steps there, 6 here
    assert {float(v['step']) for v in state['optimizer']['state'].values()} == {2.0 * STEPS}


@pytest.mark.slow
def test_resume_with_an_unusable_optimizer_state_warns_and_trains_on(dataset, tmp_path):
    checkpoint = tmp_path / 'ckpt_epoch_0.pth'
    write_original_checkpoint(checkpoint, steps=1)
    state = torch.load(checkpoint, map_location='cpu', weights_only=False)
    state['optimizer']['param_groups'] = state['optimizer']['param_groups'][:-1]  # a group short
    torch.save(state, checkpoint)
    out = tmp_path / 'out'
    result = launch(train_args(dataset, out, epochs=EPOCHS) + ['--resume', str(checkpoint), '--trust-checkpoint'])
    assert 'Traceback' not in result.stderr
    log = (out / 'demo' / 'magnitude_cyclic' / 'log_rank0.txt').read_text()
    assert 'cannot be used' in log and 'starting from a fresh optimizer' in log
    final = torch.load(out / 'demo' / 'magnitude_cyclic' / 'checkpoint.pth', map_location='cpu', weights_only=True)
    assert {float(v['step']) for v in final['optimizer']['state'].values()} == {float(STEPS)}
    assert os.path.exists(out / 'demo' / 'magnitude_cyclic' / 'val_log.json')


def test_readme_lists_the_differences_from_the_original():
    """The section sits just before ## Layout and names every deliberate change the issue lists."""
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'README.md')) as f:
        readme = f.read()
    sections = [line for line in readme.splitlines() if line.startswith('## ')]
    assert sections[sections.index('## Layout') - 1] == '## Differences from the original code'
    section = readme.split('## Differences from the original code')[1].split('## Layout')[0]
    for phrase in ('logged `patch_drop_ratio` is the one the step used', 'two iterations ahead',
                   'first\n  iteration with all patches', 'During cooldown every schedule keeps all patches',
                   "`image_patches.py` follows the config's selection rule", 'Default images',
                   '`checkpoint.pth` is written after every epoch', 'config is stored as YAML text',
                   "text log's line format", '`step_loss`', '`total_time`', '`config.json` is JSON',
                   'NUM_CLASSES'):
        assert phrase in section, phrase
    bullets = [line for line in section.splitlines() if line.startswith('- **')]
    assert len(bullets) >= 10
