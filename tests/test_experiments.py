"""sweep_drop.py, image_patches.py and patch_distribution.py end to end on a tiny model and ImageFolder,
checked against the model's own computation; and the helpers they use (build_val_loader,
load_model_weights)."""
import argparse
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import image_patches
import patch_distribution
import sweep_drop
from checkpoint import CheckpointError, load_model_weights
from config import get_config
from data import build_dataset, build_loader, build_val_loader
from models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = os.path.join(ROOT, 'configs', 'vit-b', 'magnitude_cyclic_80_0.yaml')
# 32 px, 8 px patches: a 4 x 4 grid, N = 17 tokens with CLS. Mixup off so any batch size is allowed.
TINY = ['DATA.IMG_SIZE', '32', 'MODEL.VIT.PATCH_SIZE', '8', 'MODEL.VIT.EMBED_DIM', '32', 'MODEL.VIT.DEPTH', '2',
        'MODEL.VIT.NUM_HEADS', '2', 'DATA.NUM_WORKERS', '0', 'DATA.PIN_MEMORY', 'False', 'TEST.CROP', 'False',
        'AUG.MIXUP', '0.0', 'AUG.CUTMIX', '0.0']
VAL_COUNTS = (4, 4, 3)  # 11 validation images in 3 classes: batches of 4 leave a partial one
NUM_TOKENS = 17
BATCH = 4
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
SWEEP_FIELDS = {'drop_ratio', 'num_tokens', 'acc1', 'acc5', 'loss', 'num_images', 'time', 'throughput',
                'model_time', 'model_throughput'}


def make_config(data_path, *opts):
    return get_config(argparse.Namespace(cfg=CFG, opts=TINY + list(opts), data_path=str(data_path),
                                         batch_size=BATCH))


def noise_folder(root, counts, seed=0, size=32):
    """One ImageFolder split of random-noise PNGs (noise gives every patch a different magnitude)."""
    rng = np.random.default_rng(seed)
    for name, count in zip('abc', counts):
        os.makedirs(root / name, exist_ok=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / name / f'{i}.png')
    return root


def random_model(config, seed=0):
    """A tiny 3-class model whose head and relative position tables are far from their near-zero init,
    so predictions vary between images and drop ratios."""
    torch.manual_seed(seed)
    model = build_model(config, num_classes=len(VAL_COUNTS))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith('head.') or name.endswith('relative_position_bias_table'):
                p.normal_(std=0.5)
    return model.eval()


@pytest.fixture(autouse=True)
def cpu_only(monkeypatch):
    """Every run here on the CPU in fp32, on GPU machines too: the references are CPU computations,
    and two processes cannot share one GPU under NCCL. (Subprocesses get CUDA_VISIBLE_DEVICES=''.)"""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)


@pytest.fixture(scope='module')
def data_path(tmp_path_factory):
    # Only val/: the evaluation scripts must not need (or verify) the training split.
    root = tmp_path_factory.mktemp('data')
    noise_folder(root / 'val', VAL_COUNTS)
    return root


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory, data_path):
    model = random_model(make_config(data_path))
    path = tmp_path_factory.mktemp('ckpt') / 'checkpoint.pth'
    torch.save({'model': model.state_dict(), 'epoch': 3}, path)
    return path


@pytest.fixture(scope='module')
def reference(data_path, checkpoint):
    """The checkpoint's model and every validation image, as the tests' own reference."""
    config = make_config(data_path)
    model = build_model(config, num_classes=len(VAL_COUNTS))
    model.load_state_dict(torch.load(checkpoint, weights_only=True)['model'])
    dataset = build_dataset(is_train=False, config=config)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    targets = torch.tensor([dataset[i][1] for i in range(len(dataset))])
    return model.eval(), images, targets


def script_args(data_path, checkpoint, out, *extra, opts=()):
    return ['--cfg', CFG, '--data-path', str(data_path), '--pretrained', str(checkpoint), '--output', str(out),
            '--tag', 'run', '--batch-size', str(BATCH), *extra, '--opts', *TINY, *opts]


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def launch(script, args, nproc=None, legacy=False, check=True):
    """Run a script as a user would: plain python (nproc None), torchrun, or torch.distributed.launch."""
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore', CUDA_VISIBLE_DEVICES='')
    for name in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'):
        env.pop(name, None)
    cmd = [sys.executable]
    if nproc is not None:
        launcher = 'torch.distributed.launch' if legacy else 'torch.distributed.run'
        cmd += ['-m', launcher, '--nproc_per_node', str(nproc), '--master_port', str(free_port())]
    result = subprocess.run(cmd + [script] + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    if check and result.returncode != 0:
        raise AssertionError(f'exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}')
    return result


def reference_topk_patches(model, images, num_kept):
    """Independent of the model's selection code: the num_kept - 1 patches with the largest L1 norm
    after the patch embedding, as token indices (patch p = token p + 1), one set per image."""
    with torch.no_grad():
        tokens = model.patch_embed(images)  # [B, N-1, D]; this model has no absolute position embedding
        top = tokens.abs().sum(-1).topk(num_kept - 1, dim=1).indices + 1
    return [set(row) for row in top.tolist()]


# ----------------------------------------------------------------------------- helpers: data and checkpoints

def test_build_val_loader_needs_no_training_split_and_matches_build_loader(data_path, tmp_path):
    dataset_val, loader_val = build_val_loader(make_config(data_path))
    assert len(dataset_val) == sum(VAL_COUNTS) and dataset_val.classes == ['a', 'b', 'c']
    batches = [(x.clone(), y.clone()) for x, y in loader_val]
    assert [len(y) for _, y in batches] == [4, 4, 3]  # in order, last partial batch kept

    # With a training split too, build_loader gives the very same validation batches.
    noise_folder(tmp_path / 'val', VAL_COUNTS)
    noise_folder(tmp_path / 'train', (4, 4, 4), seed=1)
    _, _, _, loader_from_build_loader, _ = build_loader(make_config(tmp_path))
    _, loader_alone = build_val_loader(make_config(tmp_path))
    for (x, y), (x_ref, y_ref) in zip(loader_from_build_loader, loader_alone, strict=True):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    assert type(loader_from_build_loader.sampler) is type(loader_alone.sampler)


def test_build_val_loader_allows_an_odd_batch_size_with_mixup_configured(data_path):
    # Mixup pairs training samples; evaluation never mixes, so the training config's Mixup is no reason to refuse.
    config = get_config(argparse.Namespace(cfg=CFG, opts=TINY + ['AUG.MIXUP', '0.8'], data_path=str(data_path),
                                           batch_size=3))
    _, loader = build_val_loader(config)
    assert [len(y) for _, y in loader] == [3, 3, 3, 2]
    assert len(build_dataset(is_train=False, config=config)) == sum(VAL_COUNTS)


@pytest.mark.parametrize('layout', ['wrapped', 'bare', 'encoder_prefix'])
def test_load_model_weights_accepts_the_usual_layouts(data_path, tmp_path, layout):
    config = make_config(data_path)
    source = random_model(config, seed=1)
    state = source.state_dict()
    if layout == 'wrapped':
        saved = {'model': state, 'epoch': 7}
    elif layout == 'bare':
        saved = dict(state)
    else:  # a SimMIM-style file: the network under encoder., plus keys (a decoder) that are ignored
        saved = {'model': {**{f'encoder.{k}': v for k, v in state.items()}, 'decoder.0.weight': torch.ones(3)}}
    saved_model = saved.get('model', saved)
    for key in [k for k in saved_model if k.endswith('relative_position_index')]:
        del saved_model[key]  # rebuilt from the grid: a checkpoint without them still loads
    path = tmp_path / 'ckpt.pth'
    torch.save(saved, path)

    target = random_model(config, seed=2)
    load_model_weights(str(path), target)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_load_model_weights_lists_what_does_not_fit(data_path, tmp_path):
    config = make_config(data_path)
    state = random_model(config).state_dict()
    state['head.weight'] = torch.zeros(5, 32)  # another number of classes
    del state['fc_norm.bias']
    state['blocks.9.mlp.fc1.weight'] = torch.zeros(1)
    path = tmp_path / 'other.pth'
    torch.save({'model': state}, path)
    target = random_model(config, seed=3)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as error:
        load_model_weights(str(path), target)
    message = str(error.value)
    assert str(path) in message
    assert 'missing keys: fc_norm.bias' in message and 'unexpected keys: blocks.9.mlp.fc1.weight' in message
    assert 'head.weight (5, 32) in the checkpoint, (3, 32) in the model' in message
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())  # all or nothing

    torch.save({'optimizer': {}}, path)
    with pytest.raises(CheckpointError, match='holds no model weights'):
        load_model_weights(str(path), target)


# ----------------------------------------------------------------------------- sweep_drop.py

def test_sweep_drop_matches_the_model_at_every_ratio(data_path, checkpoint, reference, tmp_path):
    assert sweep_drop.run(script_args(data_path, checkpoint, tmp_path)) == 0
    records = read_jsonl(tmp_path / 'pss' / 'run' / 'sweep_drop.json')
    assert [r['drop_ratio'] for r in records] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    model, images, targets = reference
    for record in records:
        assert set(record) == SWEEP_FIELDS
        d = record['drop_ratio']
        assert record['num_tokens'] == (NUM_TOKENS if d == 0 else round((1 - d) * NUM_TOKENS))
        assert 0 <= record['acc1'] <= record['acc5'] <= 100 and record['num_images'] == len(targets)
        assert record['time'] > 0 and record['throughput'] == pytest.approx(len(targets) / record['time'])
        assert 0 < record['model_time'] <= record['time']
        assert record['model_throughput'] == pytest.approx(len(targets) / record['model_time'])
        model.set_patch_drop_ratio(d)
        with torch.no_grad():
            logits = model(images)
        assert record['acc1'] == pytest.approx(100 * (logits.argmax(1) == targets).float().mean().item())
        assert record['loss'] == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-5)
    model.set_patch_drop_ratio(0.0)
    assert len({r['acc1'] for r in records}) > 1  # the ratios really differ


def test_sweep_drop_leaves_the_ratios_done_when_stopped(data_path, checkpoint, tmp_path, monkeypatch, capsys):
    calls = []
    real_evaluate = sweep_drop.evaluate

    def evaluate_then_die(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # stands in for a kill during the third ratio
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(sweep_drop, 'evaluate', evaluate_then_die)
    capsys.readouterr()
    # Ctrl-C: no traceback, one line saying what was kept, status 130 (128 + SIGINT)
    assert sweep_drop.run(script_args(data_path, checkpoint, tmp_path, '--drop-ratios', '0.0', '0.5', '0.8')) == 130
    out = tmp_path / 'pss' / 'run'
    err = capsys.readouterr().err
    assert err.startswith('interrupted') and err.count('\n') == 1, err
    assert str(out / 'sweep_drop.json') in err and 'drop ratios 0.0, 0.5' in err, err
    assert [r['drop_ratio'] for r in read_jsonl(out / 'sweep_drop.json')] == [0.0, 0.5]
    assert os.listdir(out) == ['sweep_drop.json']  # no temporary file left behind


@pytest.mark.parametrize('extra, message', [
    (['--drop-ratios', '0.5', '1.0'], '--drop-ratios: 1.0 is outside [0, 1)'),
    (['--drop-ratios', '0.95'], 'keeps no patch'),
    (['--resume', 'other.pth'], 'name two checkpoints'),
])
def test_sweep_drop_bad_flags(data_path, checkpoint, tmp_path, capsys, extra, message):
    assert sweep_drop.run(script_args(data_path, checkpoint, tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and message in err and err.count('\n') == 1
    assert not (tmp_path / 'pss').exists()


def test_sweep_drop_checkpoint_of_another_architecture(data_path, tmp_path, capsys):
    wrong = tmp_path / 'wide.pth'
    torch.save({'model': random_model(make_config(data_path, 'MODEL.VIT.EMBED_DIM', '16')).state_dict()}, wrong)
    assert sweep_drop.run(script_args(data_path, wrong, tmp_path)) == 2
    err = capsys.readouterr().err
    assert f"error: checkpoint '{wrong}' does not fit the model" in err and 'shape mismatches' in err


@pytest.mark.slow
def test_bad_checkpoint_path_exits_2_naming_the_file(data_path, tmp_path):
    missing = tmp_path / 'no_such_checkpoint.pth'
    result = launch('sweep_drop.py', script_args(data_path, missing, tmp_path), check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: checkpoint '{missing}' not found"
    assert not (tmp_path / 'pss').exists()


@pytest.mark.slow
def test_sweep_drop_is_identical_with_1_and_2_processes(data_path, checkpoint, tmp_path):
    ratios = ['--drop-ratios', '0.0', '0.4', '0.8']
    # 1 process through the legacy launcher (it passes --local-rank), 2 through torchrun; 11 images in
    # batches of 4: rank 0 gets batches 0 and 2, rank 1 batch 1.
    launch('sweep_drop.py', script_args(data_path, checkpoint, tmp_path / 'one', *ratios), nproc=1, legacy=True)
    result = launch('sweep_drop.py', script_args(data_path, checkpoint, tmp_path / 'two', *ratios), nproc=2)
    table = [line for line in result.stdout.splitlines() if 'sweep_drop.py' in line]
    assert any('model img/s' in line for line in table)  # the header, then one row per ratio as it ends
    assert [line.split()[5:7] for line in table if line.split()[5:6] in (['0.00'], ['0.40'], ['0.80'])] == [
        ['0.00', '1.00'], ['0.40', '0.60'], ['0.80', '0.20']]
    one = read_jsonl(tmp_path / 'one' / 'pss' / 'run' / 'sweep_drop.json')
    two = read_jsonl(tmp_path / 'two' / 'pss' / 'run' / 'sweep_drop.json')
    exact = ('drop_ratio', 'num_tokens', 'acc1', 'acc5', 'loss', 'num_images')
    assert [[r[k] for k in exact] for r in one] == [[r[k] for k in exact] for r in two]
    assert [r['drop_ratio'] for r in two] == [0.0, 0.4, 0.8] and two[0]['num_images'] == sum(VAL_COUNTS)


# ----------------------------------------------------------------------------- image_patches.py

def test_default_images_spread_over_the_set():
    assert image_patches.default_image_indices(11) == [0, 1, 3, 4, 6, 7, 9, 10]
    assert image_patches.default_image_indices(5) == [0, 1, 2, 3, 4]
    assert image_patches.default_image_indices(50000)[::7] == [0, 49999]


def test_image_patches_records_the_models_own_selection(data_path, checkpoint, reference, tmp_path):
    assert image_patches.run(script_args(data_path, checkpoint, tmp_path)) == 0
    out = tmp_path / 'pss' / 'run'
    with open(out / 'image_patches.json') as f:
        data = json.load(f)
    model, all_images, all_targets = reference
    indices = image_patches.default_image_indices(len(all_targets))
    assert data['drop_ratios'] == [0.0, 0.2, 0.4, 0.6, 0.8] and data['image_indices'] == indices
    assert data['targets'] == all_targets[indices].tolist() and set(data['targets']) == {0, 1, 2}
    assert data['class_to_idx'] == {'a': 0, 'b': 1, 'c': 2} and data['patch_size'] == 8
    images = torch.tensor(data['images'])
    assert images.shape == (8, 3, 32, 32)
    assert torch.allclose(images, all_images[indices], atol=5.1e-5)  # stored to 4 decimals
    images = all_images[indices]

    assert len(data['kept_patches']) == len(data['logits']) == 5
    for d, (batch, tokens), logits in zip(data['drop_ratios'], data['kept_patches'], data['logits']):
        num_kept = NUM_TOKENS if d == 0 else round((1 - d) * NUM_TOKENS)
        assert len(batch) == len(tokens) == 8 * num_kept
        assert np.bincount(batch).tolist() == [num_kept] * 8  # every image keeps round(rho N) tokens
        model.set_patch_drop_ratio(d)
        kept = model.get_kept_token_indices(images)
        assert batch == torch.arange(8).repeat_interleave(num_kept).tolist()
        assert tokens == kept.flatten().tolist()  # the model's own selection, in its order
        per_image = [set(tokens[b * num_kept:(b + 1) * num_kept]) for b in range(8)]
        assert all(t[0] == 0 for t in torch.tensor(tokens).reshape(8, num_kept).tolist())  # CLS first
        if d > 0:
            assert [s - {0} for s in per_image] == reference_topk_patches(model, images, num_kept)
        with torch.no_grad():
            assert torch.allclose(torch.tensor(logits), model(images), atol=1e-5)
    model.set_patch_drop_ratio(0.0)

    for name in ('image_patches.png', 'image_patches.pdf'):
        assert (out / name).stat().st_size > 1000
    assert (out / 'image_patches.png').read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(out / 'image_patches.png') as png:
        png.verify()
    assert (out / 'image_patches.pdf').read_bytes()[:5] == b'%PDF-'


def test_image_patches_chosen_images_and_ratios(data_path, checkpoint, tmp_path):
    args = script_args(data_path, checkpoint, tmp_path, '--images', '10', '2', '--drop-ratios', '0.5')
    assert image_patches.run(args) == 0
    with open(tmp_path / 'pss' / 'run' / 'image_patches.json') as f:
        data = json.load(f)
    assert data['image_indices'] == [10, 2] and data['targets'] == [2, 0] and data['drop_ratios'] == [0.5]
    assert np.bincount(data['kept_patches'][0][0]).tolist() == [round(0.5 * NUM_TOKENS)] * 2


def test_image_patches_bad_index_and_other_ranks(data_path, checkpoint, tmp_path, capsys, monkeypatch):
    assert image_patches.run(script_args(data_path, checkpoint, tmp_path, '--images', '3', '11')) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: --images: [11]') and '11 images, indices 0 to 10' in err
    # Under a launcher only rank 0 works; the others exit at once and write nothing.
    monkeypatch.setenv('RANK', '1')
    assert image_patches.run(script_args(data_path, checkpoint, tmp_path)) == 0
    assert not (tmp_path / 'pss').exists()


# ----------------------------------------------------------------------------- patch_distribution.py

def reference_counts(model, images, drop_ratios):
    """[R, 16] counts of kept positions over all images (flat, row-major, as the original wrote them),
    from the independent top-k reference."""
    counts = np.zeros((len(drop_ratios), 16), dtype=np.int64)
    for r, d in enumerate(drop_ratios):
        for kept in reference_topk_patches(model, images, round((1 - d) * NUM_TOKENS)):
            counts[r, [t - 1 for t in kept]] += 1
    return counts.tolist()


def check_distribution(data, model, images, drop_ratios):
    assert data['drop_ratios'] == drop_ratios and data['grid_shape'] == [4, 4]
    assert data['num_images'] == len(images)
    assert data['num_kept_tokens'] == [round((1 - d) * NUM_TOKENS) for d in drop_ratios]
    for counts, num_kept in zip(data['counts'], data['num_kept_tokens']):
        assert np.sum(counts) == len(images) * (num_kept - 1)
        assert 0 <= np.min(counts) and np.max(counts) <= len(images)
    assert data['counts'] == reference_counts(model, images, drop_ratios)


def test_patch_distribution_counts_every_image(data_path, checkpoint, reference, tmp_path):
    assert patch_distribution.run(script_args(data_path, checkpoint, tmp_path)) == 0
    out = tmp_path / 'pss' / 'run'
    with open(out / 'patch_distribution.json') as f:
        data = json.load(f)
    model, images, _ = reference
    check_distribution(data, model, images, [0.0, 0.2, 0.4, 0.6, 0.8])  # the original's default ratios
    assert data['counts'][0] == [len(images)] * 16  # at drop 0 every image keeps every position
    assert (out / 'patch_distribution.png').read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(out / 'patch_distribution.png') as png:
        png.verify()
    assert (out / 'patch_distribution.pdf').stat().st_size > 1000


@pytest.mark.slow
def test_patch_distribution_with_2_processes_counts_each_image_once(data_path, checkpoint, reference, tmp_path):
    launch('patch_distribution.py', script_args(data_path, checkpoint, tmp_path, '--drop-ratios', '0.4', '0.8'),
           nproc=2)
    with open(tmp_path / 'pss' / 'run' / 'patch_distribution.json') as f:
        data = json.load(f)
    model, images, _ = reference
    check_distribution(data, model, images, [0.4, 0.8])


# ----------------------------------------------------------------------------- unwritable output (issue 24)
@pytest.mark.parametrize('script, full_pass', [
    (sweep_drop, 'evaluate'), (image_patches, 'record_kept_patches'), (patch_distribution, 'count_kept_positions'),
])
def test_an_unwritable_output_is_refused_before_the_pass(data_path, checkpoint, tmp_path, capsys, monkeypatch,
                                                         script, full_pass):
    def never(*args, **kwargs):
        raise AssertionError(f'{full_pass} ran although the output folder cannot be written')

    monkeypatch.setattr(script, full_pass, never)
    blocker = tmp_path / 'a_file'
    blocker.write_text('x')
    assert script.run(script_args(data_path, checkpoint, blocker / 'sub')) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1, err
    assert 'cannot be created' in err and str(blocker) in err
    assert blocker.read_text() == 'x'


# ----------------------------------------------------------------------------- re-runs merge (issue 24)
def test_a_sweep_drop_rerun_merges_by_drop_ratio(data_path, checkpoint, tmp_path, capsys):
    out = tmp_path / 'pss' / 'run' / 'sweep_drop.json'
    assert sweep_drop.run(script_args(data_path, checkpoint, tmp_path, '--drop-ratios', '0.0', '0.4', '0.8')) == 0
    first = read_jsonl(out)
    # mark the earlier lines: 0.0 and 0.8 must be kept as they are, 0.4 replaced by its new measurement
    marked = [dict(r, time=12345.0) if r['drop_ratio'] != 0.4 else dict(r, acc1=-1.0) for r in first]
    out.write_text(''.join(json.dumps(r) + '\n' for r in marked))
    capsys.readouterr()
    assert sweep_drop.run(script_args(data_path, checkpoint, tmp_path, '--drop-ratios', '0.6', '0.4')) == 0
    merged = read_jsonl(out)
    assert [r['drop_ratio'] for r in merged] == [0.0, 0.4, 0.6, 0.8]  # one line per ratio, in order
    assert merged[0] == marked[0] and merged[3] == marked[2]
    assert merged[1]['acc1'] == first[1]['acc1'] and merged[1]['time'] != 12345.0
    assert set(merged[2]) == SWEEP_FIELDS and merged[2]['num_tokens'] == round(0.4 * NUM_TOKENS)
    log = capsys.readouterr().out
    assert 'kept the earlier results for drop ratios 0.0, 0.8' in log and 'replaced 0.4' in log, log


def test_a_sweep_drop_json_that_cannot_be_merged_is_left_alone(data_path, checkpoint, tmp_path, capsys):
    out = tmp_path / 'pss' / 'run' / 'sweep_drop.json'
    out.parent.mkdir(parents=True)
    for text in ('{"drop_ratio": 0.0, "acc1": 50.0}\nnot json\n', '{"acc1": 50.0}\n', '[1, 2]\n'):
        out.write_text(text)
        assert sweep_drop.run(script_args(data_path, checkpoint, tmp_path, '--drop-ratios', '0.4')) == 2
        err = capsys.readouterr().err
        assert err.startswith('error: ') and err.count('\n') == 1 and str(out) in err and 'line' in err, err
        assert out.read_text() == text
