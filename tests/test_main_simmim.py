"""main_simmim.py end to end on a tiny model: logs and checkpoints, the pre-train -> fine-tune round
trip through main_finetune.py --pretrained, kill -9 / SIGTERM and resume, two processes, bad input."""
import argparse
import logging
import os
import random
import signal
import subprocess
import sys

import pytest
import torch

import main_simmim
from config import get_config
from lr_scheduler import build_scheduler, lr_at
from models import build_model, build_simmim
from optimizer import build_optimizer
from pretrained import load_pretrained
from tests.helpers import make_image_folder
from tests.test_bad_input import snapshot
from tests.test_finetune import ROOT, TRAIN_FIELDS, read_jsonl
from tests.test_finetune import TINY as FINETUNE_TINY
from tests.test_resume import env, run_to_end, start_and_signal
from tests.test_simmim import TINY

pytestmark = pytest.mark.slow

CFG = 'configs/simmim/demo.yaml'
EPOCHS, STEPS = 3, 6  # 24 training images, batch 4: 6 steps per epoch
OPTS = TINY + ['TRAIN.EPOCHS', str(EPOCHS), 'TRAIN.WARMUP_EPOCHS', '1', 'TRAIN.LR_SCHEDULER.MULTISTEPS', '[2]',
               'PRINT_FREQ', '100', 'SAVE_FREQ', '1']


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('data'), num_train=8, num_val=1)


def args_for(data, out, *opts, extra=()):
    return ['--cfg', CFG, '--data-path', str(data), '--output', str(out), '--batch-size', '4', *extra,
            '--opts', *OPTS, *opts]


def command(data, out, *opts):
    return [sys.executable, 'main_simmim.py', *args_for(data, out, *opts)]


def run_dir(out):
    return out / 'simmim_demo' / 'default'


@pytest.fixture(scope='module')
def reference(dataset, tmp_path_factory):
    """An uninterrupted pre-training run, as a subprocess: its folder."""
    out = tmp_path_factory.mktemp('reference')
    run_to_end(command(dataset, out))
    return run_dir(out)


def final_model(folder):
    return torch.load(folder / 'checkpoint.pth', map_location='cpu', weights_only=True)['model']


def assert_same_run(folder, reference):
    state, ref_state = final_model(folder), final_model(reference)
    assert state.keys() == ref_state.keys()
    for key in state:
        assert torch.equal(state[key], ref_state[key]), key  # bit-identical
    train = [(r['iteration'], r['loss'], r['lr']) for r in read_jsonl(folder / 'train_log.json')]
    ref_train = [(r['iteration'], r['loss'], r['lr']) for r in read_jsonl(reference / 'train_log.json')]
    assert [r[0] for r in train] == list(range(EPOCHS * STEPS))  # every iteration exactly once
    assert train == ref_train


def test_run_writes_the_logs_and_checkpoints(reference):
    train = read_jsonl(reference / 'train_log.json')
    assert [r['iteration'] for r in train] == list(range(EPOCHS * STEPS))
    assert all(set(r) == TRAIN_FIELDS for r in train)  # main_finetune.py's fields
    assert {r['patch_drop_ratio'] for r in train} == {0.0}  # every token, always
    assert all(0 < r['loss'] < 10 for r in train)
    files = set(os.listdir(reference))
    assert {'config.yaml', 'log_rank0.txt', 'checkpoint.pth'} | {f'ckpt_epoch_{e}.pth' for e in range(EPOCHS)} <= files
    assert 'val_log.json' not in files  # no validation in pre-training
    state = torch.load(reference / 'checkpoint.pth', map_location='cpu', weights_only=True)
    assert {'model', 'optimizer', 'lr_scheduler', 'scaler', 'patch_scheduler', 'epoch', 'step_in_epoch',
            'config', 'rng'} <= set(state)
    assert state['epoch'] == EPOCHS - 1 and state['step_in_epoch'] == 0
    assert all(k.startswith(('encoder.', 'decoder.')) for k in state['model'])
    assert 'encoder.mask_token' in state['model'] and 'decoder.0.weight' in state['model']
    # the multistep LR with warm-up, per optimizer update: a tenth from epoch 2 on
    config = get_config(argparse.Namespace(cfg=str(reference / 'config.yaml'), opts=None))
    scheduler = build_scheduler(config, build_optimizer(config, build_simmim(config)), STEPS, world_size=1)
    assert [r['lr'] for r in train] == pytest.approx([lr_at(scheduler, i) for i in range(EPOCHS * STEPS)], rel=1e-9)
    assert train[STEPS]['lr'] == pytest.approx(10 * train[2 * STEPS]['lr'])


def finetune_config(*opts):
    return get_config(argparse.Namespace(cfg='configs/demo/magnitude_cyclic.yaml',
                                         opts=FINETUNE_TINY + list(opts)))


def assert_encoder_loaded(model_state, encoder):
    """Every weight of the fine-tuning model is its pre-trained encoder's, except the classifier
    and its norm; the shared relative position bias is in every block."""
    not_loaded = set()
    for key, value in model_state.items():
        if key.endswith('relative_position_index'):
            continue
        if key.endswith('attn.relative_position_bias_table'):
            assert torch.equal(value, encoder['rel_pos_bias.relative_position_bias_table']), key
        elif key in encoder:
            assert torch.equal(value, encoder[key]), key
        else:
            not_loaded.add(key)
    assert not_loaded == {'fc_norm.weight', 'fc_norm.bias', 'head.weight', 'head.bias'}


def test_pretrain_then_finetune_loads_every_encoder_weight(reference, dataset, tmp_path, caplog):
    checkpoint = reference / 'checkpoint.pth'
    encoder = {k[len('encoder.'):]: v for k, v in final_model(reference).items() if k.startswith('encoder.')}

    # load_pretrained, which main_finetune.py --pretrained calls, in this process
    config = finetune_config()
    assert config.MODEL.VIT.USE_RPB and not config.MODEL.VIT.USE_SHARED_RPB and config.MODEL.VIT.USE_MEAN_POOLING
    model = build_model(config, num_classes=3)
    logger = logging.getLogger('test_round_trip')
    with caplog.at_level(logging.INFO, logger='test_round_trip'):
        missing, unexpected = load_pretrained(str(checkpoint), model, logger)
    assert_encoder_loaded(model.state_dict(), encoder)
    # ignored and reported: the decoder (by name), the mask token and the pre-training's final norm
    assert set(unexpected) == {'mask_token', 'norm.weight', 'norm.bias'}
    assert set(missing) == {'fc_norm.weight', 'fc_norm.bias', 'head.weight', 'head.bias'}
    log = caplog.text
    assert 'recognised the format: SimMIM pre-training' in log
    assert 'dropped 2 keys not used for fine-tuning: decoder.0.weight, decoder.0.bias' in log
    assert 'unexpected keys (ignored): mask_token' in log
    assert 'copied the shared relative position bias table into 2 blocks' in log

    # main_finetune.py itself; LR 0 keeps the loaded weights through one epoch
    args = ['--cfg', 'configs/demo/magnitude_cyclic.yaml', '--data-path', dataset, '--output', str(tmp_path),
            '--batch-size', '4', '--pretrained', str(checkpoint), '--opts', *FINETUNE_TINY,
            'TRAIN.EPOCHS', '1', 'TRAIN.BASE_LR', '0.0', 'TRAIN.WARMUP_LR', '0.0', 'TRAIN.MIN_LR', '0.0']
    result = run_to_end([sys.executable, 'main_finetune.py', *args])
    assert 'decoder.0.weight' in result.stdout and 'mask_token' in result.stdout
    state = torch.load(tmp_path / 'demo' / 'magnitude_cyclic' / 'checkpoint.pth', weights_only=True)['model']
    assert_encoder_loaded(state, encoder)


def test_kill_9_and_restart_gives_the_same_run(dataset, reference, tmp_path):
    # (the SIGTERM test below resumes mid-epoch; this one from the last epoch's checkpoint)
    cmd = command(dataset, tmp_path)
    kill_at = random.Random().randint(STEPS + 1, 2 * STEPS + 4)  # somewhere in epoch 1 or 2
    code, _, _ = start_and_signal(cmd, run_dir(tmp_path), kill_at, signal.SIGKILL)
    assert code == -signal.SIGKILL, 'the run ended before it could be killed'
    result = run_to_end(cmd)
    assert 'resuming at epoch' in result.stdout
    assert_same_run(run_dir(tmp_path), reference)


def test_sigterm_writes_a_checkpoint_that_resumes_exactly(dataset, reference, tmp_path):
    cmd = command(dataset, tmp_path)
    code, out, _ = start_and_signal(cmd, run_dir(tmp_path), STEPS + 2, signal.SIGTERM)
    assert code == 3
    assert 'SIGTERM received: checkpoint written at epoch 1' in out and 'Run the same command again' in out
    state = torch.load(run_dir(tmp_path) / 'checkpoint.pth', weights_only=True)
    assert state['epoch'] == 1 and 0 < state['step_in_epoch'] < STEPS
    result = run_to_end(cmd)
    assert f"resuming at epoch 1, step {state['step_in_epoch']}" in result.stdout
    assert_same_run(run_dir(tmp_path), reference)


def test_two_processes_with_the_legacy_launcher(dataset, tmp_path):
    # torch.distributed.launch passes --local-rank; torchrun is main_finetune.py's test (the same code)
    cmd = [sys.executable, '-m', 'torch.distributed.launch', '--nproc_per_node', '2',
           '--master_port', str(29700 + os.getpid() % 1000),
           *command(dataset, tmp_path, 'TRAIN.EPOCHS', '1')[1:]]
    result = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    # 24 images / (2 processes x batch 4) = 3 optimizer steps
    assert [r['iteration'] for r in read_jsonl(run_dir(tmp_path) / 'train_log.json')] == [0, 1, 2]
    assert len(torch.load(run_dir(tmp_path) / 'checkpoint.pth', weights_only=True)['rng']) == 2


@pytest.fixture(scope='module')
def existing_run(dataset, tmp_path_factory):
    """A finished one-epoch pre-training whose folder the bad commands must not touch."""
    out = tmp_path_factory.mktemp('existing')
    assert main_simmim.run(args_for(dataset, out, 'TRAIN.EPOCHS', '1')) == 0
    return out


@pytest.mark.parametrize('opts, extra, message', [
    (('DATA.MASK_PATCH_SIZE', '6'), (), 'DATA.MASK_PATCH_SIZE 6 must divide DATA.IMG_SIZE 16'),
    (('DATA.MASK_PATCH_SIZE', '2'), (), 'DATA.MASK_PATCH_SIZE 2 must be a multiple of MODEL.VIT.PATCH_SIZE 4'),
    (('DATA.MASK_RATIO', '0.0'), (), 'DATA.MASK_RATIO = 0.0 must lie strictly between 0 and 1'),
    (('DATA.MASK_RATIO', '1.0'), (), 'DATA.MASK_RATIO = 1.0'),
    (('TRAIN.PATCH_SCHEDULER.NAME', 'cyclic'), (), "the patch schedule must be 'none'"),
    (('DATA.MASK_RATI', '0.5'), (), "unknown config key 'DATA.MASK_RATI' (did you mean 'DATA.MASK_RATIO'?)"),
    ((), ('--batch-size', '100'), 'is larger than the 24 training images'),
    ((), ('--resume', '/nowhere/ckpt.pth'), "checkpoint '/nowhere/ckpt.pth' not found"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(existing_run, dataset, capsys, opts, extra, message):
    before = snapshot(existing_run)
    assert main_simmim.run(args_for(dataset, existing_run, 'TRAIN.EPOCHS', '2', *opts, extra=extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1, err
    assert message in err, err
    assert snapshot(existing_run) == before


def test_bad_data_exits_2(existing_run, tmp_path, capsys, monkeypatch):
    import data.build
    import data.fashion_mnist
    before = snapshot(existing_run)
    assert main_simmim.run(args_for(tmp_path / 'nowhere', existing_run, 'TRAIN.EPOCHS', '2')) == 2
    assert 'does not exist' in capsys.readouterr().err
    monkeypatch.setattr(data.fashion_mnist, 'DEFAULT_DIR', str(tmp_path / 'not_installed'))
    monkeypatch.setattr(data.build, 'DEFAULT_CACHE_ROOT', str(tmp_path / 'cache'))
    args = ['--cfg', CFG, '--output', str(existing_run), '--opts', 'DATA.DATASET', 'fashion_mnist']
    assert main_simmim.run(args) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'apt-get install dataset-fashion-mnist' in err
    assert snapshot(existing_run) == before


def test_resume_a_checkpoint_of_simmims_own_code(dataset, tmp_path, capsys):
    """SimMIM's main_simmim.py saves ckpt_epoch_<E>.pth with its yacs config pickled and AdamW over
    [decay, no_decay] groups (ours come the other way round): resumed with --trust-checkpoint, its
    AdamW moments carry on (the step count continues) instead of restarting."""
    from yacs.config import CfgNode

    from tests.test_optimizer import simmim_code_optimizer, simmim_step
    from tests.test_simmim import simmim_config

    config = simmim_config(*OPTS)
    model = build_simmim(config).train()
    theirs = simmim_code_optimizer(config, model)
    for seed in range(3):
        simmim_step(model, theirs, seed)
    path = tmp_path / 'ckpt_epoch_0.pth'
    torch.save({'model': model.state_dict(), 'optimizer': theirs.state_dict(), 'lr_scheduler': {'t_initial': 3},
                'max_accuracy': 0.0, 'epoch': 0, 'config': CfgNode({'MODEL': CfgNode({'TYPE': 'vit'})})}, path)
    args = args_for(dataset, tmp_path / 'out', 'TRAIN.EPOCHS', '2', extra=['--resume', str(path), '--trust-checkpoint'])
    assert main_simmim.run(args) == 0
    out = capsys.readouterr().out
    assert "optimizer state of SimMIM's own code: its [decay, no_decay] parameter groups mapped" in out
    assert 'fresh optimizer' not in out and 'resuming at epoch 1, step 0' in out
    state = torch.load(run_dir(tmp_path / 'out') / 'checkpoint.pth', weights_only=True)
    assert {float(s['step']) for s in state['optimizer']['state'].values()} == {3.0 + STEPS}  # 3 of SimMIM's, then ours
