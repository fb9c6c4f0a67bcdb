"""End-to-end runs of main_finetune.py on a tiny model and a tiny ImageFolder made here."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from patch_scheduler import patch_drop_ratio_at
from tests.helpers import make_image_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_FIELDS = {'epoch', 'iteration', 'loss', 'step_loss', 'lr', 'time', 'cpu_time', 'gpu_time', 'memory',
                'patch_drop_ratio', 'grad_norm'}
VAL_FIELDS = {'epoch', 'loss', 'acc1', 'acc5', 'time', 'total_time', 'memory'}
TINY = ['DATA.DATASET', 'imagenet', 'DATA.IMG_SIZE', '16', 'MODEL.VIT.PATCH_SIZE', '4',
        'MODEL.VIT.EMBED_DIM', '16', 'MODEL.VIT.DEPTH', '2', 'MODEL.VIT.NUM_HEADS', '2',
        'TRAIN.WARMUP_EPOCHS', '1', 'PRINT_FREQ', '1', 'SAVE_FREQ', '1', 'DATA.NUM_WORKERS', '0']


def launch(args, nproc=1, check=True, timeout=300):
    """Run main_finetune.py as a user would: plain python, or torchrun with `nproc` processes."""
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    if nproc == 1:
        cmd = [sys.executable, 'main_finetune.py']
    else:
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', str(nproc),
               '--master_port', str(29500 + os.getpid() % 1000), 'main_finetune.py']
    result = subprocess.run(cmd + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f'exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}')
    return result


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    # 3 classes x 8 = 24 training images; 3 + 3 + 1 = 7 validation images (not divisible by 2 or 3)
    return make_image_folder(tmp_path_factory.mktemp('data'), num_train=8, num_val=[3, 3, 1])


def train_args(data, out, epochs=2, extra=()):
    return ['--cfg', 'configs/demo/magnitude_cyclic.yaml', '--data-path', data, '--output', str(out),
            '--batch-size', '4', '--opts', *TINY, 'TRAIN.EPOCHS', str(epochs), *extra]


def check_run(run_dir, epochs, steps_per_epoch, schedule=('cyclic', 0.8, -0.1)):
    train = read_jsonl(os.path.join(run_dir, 'train_log.json'))
    val = read_jsonl(os.path.join(run_dir, 'val_log.json'))
    assert len(train) == epochs * steps_per_epoch
    assert [r['iteration'] for r in train] == list(range(epochs * steps_per_epoch))
    assert all(set(r) == TRAIN_FIELDS for r in train)
    assert all(0 < r['grad_norm'] < float('inf') for r in train)  # before clipping
    assert [r['epoch'] for r in train] == [i // steps_per_epoch for i in range(epochs * steps_per_epoch)]
    name, start, end = schedule
    # rho follows the schedule from the very first iteration
    assert [r['patch_drop_ratio'] for r in train] == [
        patch_drop_ratio_at(i, name, start, end, steps_per_epoch, epochs) for i in range(len(train))]
    assert [r['epoch'] for r in val] == list(range(epochs))
    assert all(set(r) == VAL_FIELDS and 0 <= r['acc1'] <= 100 and 0 <= r['acc5'] <= 100 for r in val)
    files = set(os.listdir(run_dir))
    assert {'config.yaml', 'config.json', 'log_rank0.txt', 'checkpoint.pth'} <= files
    assert {f'ckpt_epoch_{e}.pth' for e in range(epochs)} <= files
    return train, val


@pytest.mark.slow
def test_single_process_run_logs_checkpoints_and_eval(dataset, tmp_path):
    launch(train_args(dataset, tmp_path))
    run_dir = tmp_path / 'demo' / 'magnitude_cyclic'
    train, val = check_run(run_dir, epochs=2, steps_per_epoch=6)
    assert {r['patch_drop_ratio'] for r in train} > {0.8}  # the schedule actually varies

    state = torch.load(run_dir / 'checkpoint.pth', map_location='cpu', weights_only=True)
    assert {'model', 'optimizer', 'lr_scheduler', 'scaler', 'patch_scheduler', 'epoch', 'max_accuracy',
            'config'} <= set(state)
    assert state['epoch'] == 1 and state['patch_scheduler']['step_count'] == 12
    assert state['max_accuracy'] == max(r['acc1'] for r in val)
    assert 'magnitude_cyclic' in state['config']

    # --eval reproduces the last validation accuracy and writes nothing
    before = sorted(os.listdir(run_dir))
    result = launch(['--cfg', 'configs/demo/magnitude_cyclic.yaml', '--data-path', dataset, '--batch-size', '4',
                     '--output', str(tmp_path / 'eval'), '--resume', str(run_dir / 'checkpoint.pth'), '--eval',
                     '--opts', *TINY])
    acc1, acc5 = map(float, re.search(r' \* Acc@1 ([\d.]+) Acc@5 ([\d.]+)', result.stdout).groups())
    assert acc1 == pytest.approx(val[-1]['acc1'], abs=5e-4) and acc5 == pytest.approx(val[-1]['acc5'], abs=5e-4)
    assert 'Accuracy of the network on the 7 test images' in result.stdout
    assert sorted(os.listdir(run_dir)) == before and not (tmp_path / 'eval').exists()


@pytest.mark.slow
def test_two_process_torchrun_run(dataset, tmp_path):
    launch(train_args(dataset, tmp_path), nproc=2)
    # 24 images / (2 processes x batch 4) = 3 optimizer steps per epoch
    check_run(tmp_path / 'demo' / 'magnitude_cyclic', epochs=2, steps_per_epoch=3)


def eval_numbers(stdout):
    acc = re.search(r' \* Acc@1 ([\d.]+) Acc@5 ([\d.]+)', stdout).groups()
    loss = re.search(r'Loss of the network on the (\d+) test images: ([\d.]+)', stdout).groups()
    return acc + loss


@pytest.mark.slow
def test_auto_resume_continues_at_the_next_epoch(dataset, tmp_path):
    launch(train_args(dataset, tmp_path, epochs=1))
    run_dir = tmp_path / 'demo' / 'magnitude_cyclic'
    assert len(read_jsonl(run_dir / 'train_log.json')) == 6
    # more epochs change the run (its LR and patch schedules): allowed on purpose only
    assert launch(train_args(dataset, tmp_path, epochs=2), check=False).returncode == 2
    result = launch(train_args(dataset, tmp_path, epochs=2, extra=['TRAIN.ALLOW_CONFIG_CHANGE', 'True']))
    assert 'with a changed run (TRAIN.ALLOW_CONFIG_CHANGE): TRAIN.EPOCHS: 1 in the checkpoint, 2 now' in result.stdout
    assert 'resuming at epoch 1, step 0' in result.stdout
    train = read_jsonl(run_dir / 'train_log.json')
    assert [r['iteration'] for r in train] == list(range(12))
    assert [r['epoch'] for r in read_jsonl(run_dir / 'val_log.json')] == [0, 1]


@pytest.mark.slow
def test_gradient_accumulation_steps_lr_once_per_optimizer_step(dataset, tmp_path):
    from lr_scheduler import build_scheduler, lr_at
    launch(train_args(dataset, tmp_path, extra=['TRAIN.ACCUMULATION_STEPS', '2']))
    run_dir = tmp_path / 'demo' / 'magnitude_cyclic'
    # 6 batches of 4 per epoch, 2 per optimizer step: 3 steps (and 3 log lines) per epoch
    train, _ = check_run(run_dir, epochs=2, steps_per_epoch=3)
    import argparse

    from config import get_config
    from models import build_model
    from optimizer import build_optimizer
    config = get_config(argparse.Namespace(cfg=str(run_dir / 'config.yaml'), opts=None))
    optimizer = build_optimizer(config, build_model(config, num_classes=3))
    scheduler = build_scheduler(config, optimizer, 3, world_size=1)
    assert [r['lr'] for r in train] == pytest.approx([lr_at(scheduler, i) for i in range(6)], rel=1e-9)
    assert train[0]['lr'] < train[2]['lr']  # warm-up over the first epoch's 3 updates


@pytest.mark.slow
def test_pretrained_simmim_checkpoint_with_shared_bias(dataset, tmp_path):
    import argparse

    from config import get_config
    from models import build_model
    opts = TINY + ['MODEL.VIT.USE_RPB', 'False', 'MODEL.VIT.USE_SHARED_RPB', 'True']
    torch.manual_seed(3)
    source = build_model(get_config(argparse.Namespace(cfg='configs/demo/magnitude_cyclic.yaml', opts=opts)),
                         num_classes=0)
    table = torch.randn_like(source.rel_pos_bias.relative_position_bias_table)
    source.rel_pos_bias.relative_position_bias_table.data.copy_(table)
    ckpt = tmp_path / 'simmim.pth'
    torch.save({'model': {f'encoder.{k}': v for k, v in source.state_dict().items()}}, ckpt)
    # LR 0: the weights after one epoch are the loaded ones
    launch(train_args(dataset, tmp_path, epochs=1, extra=['TRAIN.BASE_LR', '0.0', 'TRAIN.WARMUP_LR', '0.0',
                                                          'TRAIN.MIN_LR', '0.0']) + ['--pretrained', str(ckpt)])
    state = torch.load(tmp_path / 'demo' / 'magnitude_cyclic' / 'checkpoint.pth', weights_only=True)['model']
    for i in range(2):
        assert torch.equal(state[f'blocks.{i}.attn.relative_position_bias_table'], table)
        assert torch.equal(state[f'blocks.{i}.attn.qkv.weight'], source.blocks[i].attn.qkv.weight)
    assert torch.equal(state['patch_embed.proj.weight'], source.patch_embed.proj.weight)
