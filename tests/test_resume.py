"""A run that loses nothing: kill -9, SIGTERM, corrupt checkpoints, NaN, failing ranks.

Each test trains a tiny model for a few seconds and compares it with an uninterrupted run:
final weights bit-identical, every log line exactly once, the same losses.
"""
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.helpers import make_image_folder
from tests.test_finetune import ROOT, TINY, read_jsonl

pytestmark = pytest.mark.slow

EPOCHS, STEPS = 3, 12  # 24 training images, batch 2: 12 steps per epoch
# random selection, drop path and Mixup all draw random numbers: resuming must restore them all
OPTS = TINY + ['TRAIN.EPOCHS', str(EPOCHS), 'MODEL.DROP_PATH_RATE', '0.1', 'AUG.MIXUP', '0.8',
               'AUG.CUTMIX', '1.0', 'PRINT_FREQ', '100']


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('data'), num_train=8, num_val=[3, 3, 1])


def command(data, out, extra=()):
    return [sys.executable, 'main_finetune.py', '--cfg', 'configs/demo/random_cyclic.yaml', '--data-path', data,
            '--output', str(out), '--batch-size', '2', '--opts', *OPTS, *extra]


def env():
    return dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')


def run_to_end(cmd):
    result = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def start_and_signal(cmd, run_dir, after_lines, sig):
    """Start a run and send `sig` once train_log.json has at least `after_lines` lines."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = os.path.join(run_dir, 'train_log.json')
    while proc.poll() is None:
        if os.path.exists(log) and sum(1 for _ in open(log)) >= after_lines:
            proc.send_signal(sig)
            break
        time.sleep(0.005)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


@pytest.fixture(scope='module')
def reference(dataset, tmp_path_factory):
    """An uninterrupted run: its final weights and per-step losses."""
    out = tmp_path_factory.mktemp('reference')
    run_to_end(command(dataset, out))
    run_dir = out / 'demo' / 'random_cyclic'
    return final_state(run_dir), losses(run_dir)


def final_state(run_dir):
    return torch.load(run_dir / 'checkpoint.pth', map_location='cpu', weights_only=True)['model']


def losses(run_dir):
    train = read_jsonl(run_dir / 'train_log.json')
    val = read_jsonl(run_dir / 'val_log.json')
    return [(r['iteration'], r['loss'], r['step_loss'], r['patch_drop_ratio']) for r in train], \
        [(r['epoch'], r['acc1'], r['loss']) for r in val]


def assert_same_run(run_dir, reference):
    ref_state, (ref_train, ref_val) = reference
    state = final_state(run_dir)
    assert state.keys() == ref_state.keys()
    for key in state:
        assert torch.equal(state[key], ref_state[key]), key  # bit-identical
    train, val = losses(run_dir)
    assert [r[0] for r in train] == list(range(EPOCHS * STEPS))  # every iteration exactly once
    assert train == ref_train and val == ref_val  # and each the same as without the interruption


@pytest.mark.parametrize('mid_epoch', [False, True])
def test_kill_9_and_restart_gives_the_same_run(dataset, reference, tmp_path, mid_epoch):
    extra = ['TRAIN.CHECKPOINT_EVERY_STEPS', '5'] if mid_epoch else []
    cmd = command(dataset, tmp_path, extra)
    run_dir = tmp_path / 'demo' / 'random_cyclic'
    kill_at = random.Random().randint(STEPS + 1, 2 * STEPS + 8)  # somewhere in epoch 1 or 2
    code, _, _ = start_and_signal(cmd, run_dir, kill_at, signal.SIGKILL)
    assert code == -signal.SIGKILL, 'the run ended before it could be killed'
    assert (run_dir / 'run.lock').exists()  # left by the killed run ...
    result = run_to_end(cmd)
    assert 'taking over the lock of pid' in result.stdout  # ... and taken over: its pid is gone
    assert 'resuming at epoch' in result.stdout
    assert not (run_dir / 'run.lock').exists()
    assert_same_run(run_dir, reference)


def test_sigterm_writes_a_checkpoint_that_resumes_exactly(dataset, reference, tmp_path):
    cmd = command(dataset, tmp_path)
    run_dir = tmp_path / 'demo' / 'random_cyclic'
    code, out, _ = start_and_signal(cmd, run_dir, STEPS + 4, signal.SIGTERM)
    assert code == 3
    assert 'SIGTERM received: checkpoint written at epoch 1' in out and 'Run the same command again' in out
    assert not (run_dir / 'run.lock').exists()  # released on exit 3 too
    state = torch.load(run_dir / 'checkpoint.pth', weights_only=True)
    assert state['epoch'] == 1 and 0 < state['step_in_epoch'] < STEPS
    result = run_to_end(cmd)
    assert f"resuming at epoch 1, step {state['step_in_epoch']}" in result.stdout
    assert_same_run(run_dir, reference)


def test_unreadable_newest_checkpoints_fall_back_to_an_older_one(dataset, reference, tmp_path):
    cmd = command(dataset, tmp_path)
    run_dir = tmp_path / 'demo' / 'random_cyclic'
    code, _, _ = start_and_signal(cmd, run_dir, 2 * STEPS + 3, signal.SIGTERM)
    assert code == 3
    for name in ('checkpoint.pth', 'ckpt_epoch_1.pth'):  # truncate the two newest
        path = run_dir / name
        path.write_bytes(path.read_bytes()[:1000])
    result = run_to_end(cmd)
    assert "cannot read" in result.stdout or 'cannot be read' in result.stdout
    assert 'resuming at epoch 1, step 0' in result.stdout  # from ckpt_epoch_0.pth
    assert_same_run(run_dir, reference)


def test_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(dataset, tmp_path, monkeypatch, capsys):
    import main_finetune
    from models.vision_transformer import VisionTransformer
    args = ['--cfg', 'configs/demo/random_cyclic.yaml', '--data-path', dataset, '--output', str(tmp_path),
            '--batch-size', '2', '--opts', *TINY, 'TRAIN.EPOCHS', '2']
    assert main_finetune.run(args + ['TRAIN.EPOCHS', '1']) == 0
    checkpoint = tmp_path / 'demo' / 'random_cyclic' / 'checkpoint.pth'
    good = checkpoint.read_bytes()

    forward = VisionTransformer.forward
    calls = []

    def poisoned(self, x):  # NaN from the fourth training step of epoch 1 on
        out = forward(self, x)
        if self.training:
            calls.append(1)
            if len(calls) > 3:
                out = out * float('nan')
        return out

    monkeypatch.setattr(VisionTransformer, 'forward', poisoned)
    assert main_finetune.run(args + ['TRAIN.ALLOW_CONFIG_CHANGE', 'True']) == 1
    err = capsys.readouterr().err
    assert err.startswith('error: training diverged at epoch 1, iteration 3 of 12 (global 15), rho ')
    assert ': loss nan, grad norm nan; ' in err and err.count('\n') == 1
    assert f"the newest checkpoint, '{checkpoint}' (the end of epoch 0), is left as it was" in err
    assert checkpoint.read_bytes() == good


def torchrun(args, nproc):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', str(nproc),
           '--master_port', str(29600 + os.getpid() % 1000 + nproc), 'main_finetune.py', *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_validation_identical_on_1_2_and_3_processes(dataset, tmp_path):
    import argparse

    from config import get_config
    from models import build_model
    from tests.test_finetune import eval_numbers, launch
    config = get_config(argparse.Namespace(cfg='configs/demo/magnitude_cyclic.yaml', opts=TINY))
    torch.manual_seed(2)
    model = build_model(config, num_classes=3)
    torch.nn.init.normal_(model.head.weight)
    ckpt = tmp_path / 'model.pth'
    torch.save({'model': model.state_dict()}, ckpt)
    # 7 validation images, batch 2: 4 batches, none of 1, 2, 3 processes divides the set evenly
    args = ['--cfg', 'configs/demo/magnitude_cyclic.yaml', '--data-path', dataset, '--batch-size', '2',
            '--resume', str(ckpt), '--eval', '--opts', *TINY]
    results = [eval_numbers(launch(args, nproc=n).stdout) for n in (1, 2, 3)]
    assert results[0][2] == '7'
    assert results[0] == results[1] == results[2]


def test_a_killed_rank_does_not_hang_the_others(dataset, tmp_path):
    args = ['--cfg', 'configs/demo/random_cyclic.yaml', '--data-path', dataset, '--output', str(tmp_path),
            '--batch-size', '2', '--opts', *TINY, 'TRAIN.EPOCHS', '50']
    proc = torchrun(args, nproc=2)
    log = tmp_path / 'demo' / 'random_cyclic' / 'train_log.json'
    deadline = time.time() + 120
    while not (log.exists() and log.stat().st_size > 0) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    workers = subprocess.run(['pgrep', '-P', str(proc.pid)], capture_output=True, text=True).stdout.split()
    rank1 = [pid for pid in workers if b'RANK=1\0' in open(f'/proc/{pid}/environ', 'rb').read()]
    assert len(rank1) == 1
    os.kill(int(rank1[0]), signal.SIGKILL)
    start = time.time()
    out, err = proc.communicate(timeout=120)  # bounded: no hang
    assert proc.returncode != 0
    assert time.time() - start < 90
    assert 'rank      : 1' in err or 'local_rank: 1' in err or 'Signal 9' in err, err[-2000:]


def test_a_failing_validation_loses_no_training(dataset, reference, tmp_path):
    """The checkpoint is written before validating: after a validation failure (a truncated JPEG in
    val/, here read by 2 loader workers) the resumed run validates that epoch without retraining it,
    and ends bit-identical to an uninterrupted run."""
    import shutil

    from tests.test_data import write_truncated_jpeg
    data = tmp_path / 'data'
    shutil.copytree(dataset, data)
    image = data / 'val' / 'b' / '0.png'
    good = image.read_bytes()
    write_truncated_jpeg(image)  # named .png: PIL goes by the content
    out = tmp_path / 'out'
    run_dir = out / 'demo' / 'random_cyclic'
    failing = subprocess.run(command(str(data), out, ['DATA.NUM_WORKERS', '2']), cwd=ROOT, env=env(),
                             capture_output=True, text=True, timeout=300)
    assert failing.returncode == 2
    assert failing.stderr.startswith(f"error: cannot decode image '{image}': OSError: image file is truncated")
    assert failing.stderr.count('\n') == 1, failing.stderr  # no worker traceback
    state = torch.load(run_dir / 'checkpoint.pth', weights_only=True)
    assert (state['epoch'], state['step_in_epoch']) == (0, STEPS)  # epoch 0 trained, not validated
    trained = (run_dir / 'train_log.json').read_text()
    assert len(trained.splitlines()) == STEPS and not (run_dir / 'run.lock').exists()

    image.write_bytes(good)
    result = run_to_end(command(str(data), out))
    assert f'resuming at epoch 0, step {STEPS}' in result.stdout
    assert 'epoch 0 was trained before the last stop: validating it' in result.stdout
    assert (run_dir / 'train_log.json').read_text().startswith(trained)  # epoch 0 not trained again
    assert_same_run(run_dir, reference)


def test_skip_bad_images_skips_a_truncated_jpeg_and_the_log_counts_it(dataset, tmp_path):
    import shutil

    from tests.test_data import write_truncated_jpeg
    data = tmp_path / 'data'
    shutil.copytree(dataset, data)
    image = data / 'train' / 'c' / '3.png'
    write_truncated_jpeg(image)
    result = run_to_end(command(str(data), tmp_path / 'out', ['DATA.SKIP_BAD_IMAGES', 'True',
                                                               'DATA.NUM_WORKERS', '2', 'TRAIN.EPOCHS', '2']))
    assert f"cannot decode image '{image}'" in result.stderr and 'skipped (DATA.SKIP_BAD_IMAGES)' in result.stderr
    log = (tmp_path / 'out' / 'demo' / 'random_cyclic' / 'log_rank0.txt').read_text()
    assert log.count('failed to decode and are skipped') == 1  # reported once, in the epoch it was found
    assert f"1 more image(s) of {data / 'train'} failed to decode and are skipped (1 so far" in log
    assert str(image) in log
    assert len(read_jsonl(tmp_path / 'out' / 'demo' / 'random_cyclic' / 'train_log.json')) == 2 * STEPS
