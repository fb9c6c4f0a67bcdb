"""The run folder: one run at a time (lock), stale temporary files removed, resume only of the same run,
an explicit --resume wins, and the README's demo commands never change what an earlier run wrote."""
import argparse
import json
import logging
import os
import re
import shlex
import socket
import subprocess
import sys
import time

import pytest
import torch
from yacs.config import CfgNode

import main_finetune
from config import get_config
from run_folder import LOCK_NAME, RunFolderError, RunLock, check_same_run, remove_stale_tmp_files
from tests.helpers import make_image_folder
from tests.test_bad_input import snapshot
from tests.test_finetune import ROOT, TINY, read_jsonl

CFG = 'configs/demo/magnitude_cyclic.yaml'


def env():
    return dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('data'), num_train=8, num_val=[3, 3, 1])


def train_args(data, out, *opts, extra=()):
    return ['--cfg', CFG, '--data-path', data, '--output', str(out), '--batch-size', '4', *extra,
            '--opts', *TINY, 'TRAIN.EPOCHS', '2', *opts]


# ----------------------------------------------------------------------------- lock
def dead_pid():
    proc = subprocess.Popen([sys.executable, '-c', 'pass'])
    proc.wait()
    return proc.pid


def write_lock(folder, host, pid):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, LOCK_NAME), 'w') as f:
        json.dump({'host': host, 'pid': pid}, f)


def test_lock_is_exclusive_records_the_holder_and_is_released(tmp_path):
    folder = tmp_path / 'out' / 'name' / 'tag'
    with RunLock(str(folder)):
        with open(folder / LOCK_NAME) as f:
            assert json.load(f) == {'host': socket.gethostname(), 'pid': os.getpid()}
        sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
        try:  # a live holder (another process on this host) keeps the folder
            write_lock(folder, socket.gethostname(), sleeper.pid)
            with pytest.raises(RunFolderError, match=f"run folder '{folder}' is in use by pid {sleeper.pid} on host "
                                                     f'{socket.gethostname()}.*--tag or --output'):
                RunLock(str(folder)).acquire()
        finally:
            sleeper.kill()
            sleeper.wait()
        write_lock(folder, socket.gethostname(), os.getpid())  # our own lock, as we wrote it
    # released: the lock file is gone, and so are the folders it created, as nothing else was written
    assert not (tmp_path / 'out').exists()
    os.makedirs(folder)
    (folder / 'log.txt').write_text('x')
    RunLock(str(folder)).acquire().release()
    assert os.listdir(folder) == ['log.txt']


def test_a_stale_lock_is_taken_over_with_a_warning_another_hosts_is_not(tmp_path, caplog):
    folder = str(tmp_path / 'run')
    pid = dead_pid()
    write_lock(folder, socket.gethostname(), pid)
    with caplog.at_level(logging.WARNING, logger='run_folder'):
        lock = RunLock(folder).acquire()
    assert f'taking over the lock of pid {pid}, which no longer runs' in caplog.text
    with open(os.path.join(folder, LOCK_NAME)) as f:
        assert json.load(f)['pid'] == os.getpid()
    lock.release()
    write_lock(folder, 'some-other-host', pid)  # cannot be checked from here: it stands
    with pytest.raises(RunFolderError, match=f'in use by pid {pid} on host some-other-host'):
        RunLock(folder).acquire()


def test_two_runs_started_together_into_one_folder(dataset, tmp_path):
    """Exactly one trains; the other exits 2 within seconds, naming the folder and the holder."""
    import signal
    cmd = [sys.executable, 'main_finetune.py', *train_args(dataset, tmp_path, 'TRAIN.EPOCHS', '500')]
    start = time.time()
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    while all(proc.poll() is None for proc in procs) and time.time() - start < 120:
        time.sleep(0.05)
    elapsed = time.time() - start
    loser = next((i for i, proc in enumerate(procs) if proc.poll() is not None), None)
    assert loser is not None, 'neither run stopped'
    winner = 1 - loser
    assert procs[winner].poll() is None  # the other one still trains (500 epochs take minutes)
    procs[winner].send_signal(signal.SIGTERM)  # enough: stop it with a checkpoint (exit 3)
    out, err = procs[loser].communicate(timeout=120)
    winner_out, _ = procs[winner].communicate(timeout=120)
    code, winner_code = procs[loser].returncode, procs[winner].returncode
    run_dir = tmp_path / 'demo' / 'magnitude_cyclic'
    assert code == 2 and elapsed < 30, (code, elapsed)
    assert err.startswith('error: ') and err.count('\n') == 1, err
    assert f"run folder '{run_dir}' is in use by pid {procs[winner].pid} on host {socket.gethostname()}" in err
    assert 'start training' not in out
    assert winner_code == 3 and 'start training' in winner_out
    train = read_jsonl(run_dir / 'train_log.json')
    assert [r['iteration'] for r in train] == list(range(len(train)))  # one run's lines, each once
    assert not (run_dir / LOCK_NAME).exists()


# ----------------------------------------------------------------------------- stale temporary files
def test_stale_tmp_files_are_removed_at_the_next_start(dataset, tmp_path, capsys):
    assert main_finetune.run(train_args(dataset, tmp_path, 'TRAIN.EPOCHS', '1')) == 0
    run_dir = tmp_path / 'demo' / 'magnitude_cyclic'
    # what kill -9 during save_checkpoint (and during truncate_logs) leaves behind
    stale = ['.checkpoint.pth.4242.0123abcd.tmp', '.ckpt_epoch_0.pth.77.deadbeef.tmp', 'train_log.json.tmp']
    kept = ['notes.tmp', '.checkpoint.pth.x.tmp', 'checkpoint.pth']
    for name in stale + kept[:2]:
        (run_dir / name).write_bytes(b'partial')
    assert remove_stale_tmp_files(str(tmp_path / 'nowhere')) == []
    capsys.readouterr()
    assert main_finetune.run(train_args(dataset, tmp_path, 'TRAIN.EPOCHS', '1')) == 0
    assert f'removed {len(stale)} temporary file(s) of an interrupted write' in capsys.readouterr().out
    names = set(os.listdir(run_dir))
    assert not names & set(stale) and set(kept) <= names


# ----------------------------------------------------------------------------- resume of the same run
def tiny_run_config(*opts):
    return get_config(argparse.Namespace(cfg=CFG, opts=TINY + list(opts)))


def state_of(config, world_size=1, steps_per_epoch=6):
    return {'model': {}, 'optimizer': {}, 'config': config.dump(), 'rng': [{}] * world_size,
            'world_size': world_size, 'steps_per_epoch': steps_per_epoch}


def test_check_same_run_names_what_changes_the_run(caplog):
    config = tiny_run_config()
    assert check_same_run(state_of(config), 'ck.pth', config, 1, 6) == []
    # output, logging, loading, checkpoint cadence and the run's inputs do not change the run
    harmless = tiny_run_config('PRINT_FREQ', '7', 'DATA.NUM_WORKERS', '3', 'SAVE_FREQ', '5', 'TAG', 'x',
                               'TRAIN.AUTO_RESUME', 'False', 'TRAIN.KEEP_CHECKPOINTS', '2', 'PRETRAINED', 'p.pth',
                               'DATA.DATA_PATH', '/elsewhere', 'TRUST_CHECKPOINT', 'True', 'MODEL.RESUME', 'r.pth',
                               'TRAIN.ACCUMULATION_STEPS', '1')  # 1 = 0: no accumulation
    assert check_same_run(state_of(config), 'ck.pth', harmless, 1, 6) == []
    for opts, message in [
        (('DATA.BATCH_SIZE', '16'), 'DATA.BATCH_SIZE: 64 in the checkpoint, 16 now'),
        (('TRAIN.EPOCHS', '31'), 'TRAIN.EPOCHS: 30 in the checkpoint, 31 now'),
        (('TRAIN.BASE_LR', '0.1'), 'TRAIN.BASE_LR: 0.024 in the checkpoint, 0.1 now'),
        (('TRAIN.PATCH_SCHEDULER.NAME', 'linear'), "TRAIN.PATCH_SCHEDULER.NAME: 'cyclic' in the checkpoint"),
        (('SEED', '1'), 'SEED: 0 in the checkpoint, 1 now'),
        (('MODEL.VIT.DEPTH', '3'), 'MODEL.VIT.DEPTH: 2 in the checkpoint, 3 now'),
    ]:
        with pytest.raises(RunFolderError, match=re.escape(message) + '.*another folder.*TRAIN.ALLOW_CONFIG_CHANGE'):
            check_same_run(state_of(config), 'ck.pth', tiny_run_config(*opts), 1, 6)
    with pytest.raises(RunFolderError, match=r'world size \(processes\): 1 in the checkpoint, 2 now'):
        check_same_run(state_of(config), 'ck.pth', config, 2, 6)
    with pytest.raises(RunFolderError, match='optimizer steps per epoch: 6 in the checkpoint, 5 now'):
        check_same_run(state_of(config), 'ck.pth', config, 1, 5)
    # on purpose: a warning, not an error
    allowed = tiny_run_config('DATA.BATCH_SIZE', '16', 'TRAIN.ALLOW_CONFIG_CHANGE', 'True')
    with caplog.at_level(logging.WARNING, logger='run_folder'):
        assert check_same_run(state_of(config), 'ck.pth', allowed, 2, 6) == [
            'DATA.BATCH_SIZE: 64 in the checkpoint, 16 now', 'world size (processes): 1 in the checkpoint, 2 now']
    assert 'with a changed run (TRAIN.ALLOW_CONFIG_CHANGE)' in caplog.text


def test_class_difference_names_what_differs():
    from run_folder import class_difference
    assert class_difference(['a', 'b'], ['a', 'b']) == ''
    assert class_difference(['a', 'b', 'c'], ['a', 'c', 'b']) == "class 1 is 'b' in the checkpoint, 'c' now"
    assert class_difference(['a', 'b'], ['a', 'x']) == \
        "class 1 is 'b' in the checkpoint, 'x' now (not in the checkpoint: x; not in the dataset: b)"
    assert class_difference(['a', 'b'], ['a']) == '2 classes in the checkpoint, 1 now (not in the dataset: b)'
    many = [f'n{i:02d}' for i in range(20)]
    assert class_difference([], many) == \
        '0 classes in the checkpoint, 20 now (not in the checkpoint: n00, n01, n02, n03, n04, n05, n06, n07 (+12 more))'


def test_unused_pretrained_compares_with_what_the_run_started_from():
    from run_folder import unused_pretrained
    started = tiny_run_config('PRETRAINED', 'w.pth')
    for state, origin in [({'config': tiny_run_config().dump()}, ', which started from random weights'),
                          ({'config': tiny_run_config('PRETRAINED', 'v.pth').dump()}, ", which started from 'v.pth'"),
                          ({'config': CfgNode({'PRETRAINED': 'v.pth'})}, ", which started from 'v.pth'"),
                          ({}, '')]:
        assert unused_pretrained(state, 'ck.pth', started) == \
            f"--pretrained 'w.pth' is not used: the run resumes from 'ck.pth'{origin}; to fine-tune from it, start " \
            'a new run (--tag or --output)'
    assert unused_pretrained({'config': started.dump()}, 'ck.pth', started) is None  # the same command again
    assert unused_pretrained({'config': started.dump()}, 'ck.pth', tiny_run_config()) is None  # none given


def test_checkpoints_of_the_original_code_are_not_compared(caplog):
    """The original's checkpoints pickle a yacs CfgNode (or hold no config): skipped with a note."""
    config = tiny_run_config()
    with caplog.at_level(logging.WARNING, logger='run_folder'):
        for saved in (CfgNode({'DATA': {'BATCH_SIZE': 128}}), None):
            state = {'model': {}, 'optimizer': {}, 'epoch': 3}
            if saved is not None:
                state['config'] = saved
            assert check_same_run(state, 'orig.pth', config, 4, 6) == []
    assert caplog.text.count("checkpoint 'orig.pth' holds no YAML config") == 2


def test_resume_with_another_batch_size_exits_2_and_keeps_every_line(dataset, tmp_path, capsys):
    assert main_finetune.run(train_args(dataset, tmp_path)) == 0  # 24 images, batch 4: 6 steps per epoch
    run_dir = tmp_path / 'demo' / 'magnitude_cyclic'
    before = snapshot(run_dir)
    capsys.readouterr()
    assert main_finetune.run(train_args(dataset, tmp_path, extra=['--batch-size', '8'])) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'belongs to another run: DATA.BATCH_SIZE: 4 in the checkpoint, 8 now' in err
    assert snapshot(run_dir) == before
    # on purpose: the logs are cut at the checkpoint's own step count (12), not at 2 epochs x 3 new steps
    assert main_finetune.run(train_args(dataset, tmp_path, 'TRAIN.ALLOW_CONFIG_CHANGE', 'True',
                                        extra=['--batch-size', '8'])) == 0
    assert len(read_jsonl(run_dir / 'train_log.json')) == 12 and len(read_jsonl(run_dir / 'val_log.json')) == 2


def test_an_explicit_resume_wins_over_auto_resume(dataset, tmp_path, capsys):
    assert main_finetune.run(train_args(dataset, tmp_path)) == 0
    run_dir = tmp_path / 'demo' / 'magnitude_cyclic'
    reference = read_jsonl(run_dir / 'train_log.json')
    capsys.readouterr()
    older = str(run_dir / 'ckpt_epoch_0.pth')
    assert main_finetune.run(train_args(dataset, tmp_path, extra=['--resume', older])) == 0
    out = capsys.readouterr().out
    assert f'--resume {older} is used, not the checkpoints in the output folder' in out
    assert 'resuming at epoch 1, step 0' in out
    train = read_jsonl(run_dir / 'train_log.json')
    assert [r['iteration'] for r in train] == list(range(12))  # epoch 1 trained again, each line once
    assert [r['loss'] for r in train] == [r['loss'] for r in reference]  # and the same


def readme_demo_commands():
    """The two demo command lines of the README, as written there."""
    with open(os.path.join(ROOT, 'README.md')) as f:
        text = f.read()
    demo = text.split('## Demo', 1)[1].split('```bash', 1)[1].split('```', 1)[0]
    return [shlex.split(line.split('#')[0]) for line in demo.strip().splitlines()]


def test_the_readme_demo_commands_in_order_leave_the_first_run_as_it_was(dataset, tmp_path):
    single, double = readme_demo_commands()
    assert single[:2] == ['python', 'main_finetune.py'] and double[:3] == ['torchrun', '--nproc_per_node', '2']
    # tiny sizes: our ImageFolder, a 16 px model, 2 epochs
    tiny = ['--data-path', dataset, '--output', str(tmp_path), '--batch-size', '4', '--opts', *TINY,
            'TRAIN.EPOCHS', '2']
    python = [sys.executable] + single[1:] + tiny
    port = str(29700 + os.getpid() % 200)
    torchrun = [sys.executable, '-m', 'torch.distributed.run', '--master_port', port] + double[1:] + tiny

    def launch(cmd):
        return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)

    first = launch(python)
    assert first.returncode == 0, first.stderr[-2000:]
    first_dir = tmp_path / 'demo' / 'magnitude_cyclic'
    before = snapshot(first_dir)
    assert len(read_jsonl(first_dir / 'train_log.json')) == 12
    second = launch(torchrun)
    assert second.returncode == 0, second.stderr[-3000:]
    assert snapshot(first_dir) == before  # nothing the first wrote is changed
    assert set(os.listdir(tmp_path / 'demo')) == {'magnitude_cyclic', double[double.index('--tag') + 1]}
    # the same torchrun command without its own --tag would resume the first run: refused
    untagged = torchrun[:torchrun.index('--tag')] + torchrun[torchrun.index('--tag') + 2:]
    refused = launch(untagged)
    assert refused.returncode != 0
    assert 'world size (processes): 1 in the checkpoint, 2 now' in refused.stderr
    assert snapshot(first_dir) == before


def test_a_resume_checkpoint_without_the_new_keys_still_loads(dataset, tmp_path):
    """A checkpoint from before world_size / steps_per_epoch were saved: the rng list gives the world size."""
    assert main_finetune.run(train_args(dataset, tmp_path, 'TRAIN.EPOCHS', '1')) == 0
    path = tmp_path / 'demo' / 'magnitude_cyclic' / 'checkpoint.pth'
    state = torch.load(path, weights_only=True)
    del state['world_size'], state['steps_per_epoch']
    torch.save(state, path)
    assert main_finetune.run(train_args(dataset, tmp_path, 'TRAIN.EPOCHS', '1')) == 0
