"""TensorBoard events and the offline W&B history equal the JSON logs, step for step, also across a
kill -9 and a resume; only rank 0 writes; a missing package is one line; --help names the flags."""
import argparse
import glob
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

import main_finetune
import main_simmim
import submitit_finetune
from config import get_config
from run_folder import run_config_differences
from tests.helpers import make_image_folder
from tests.test_bad_input import snapshot
from tests.test_finetune import ROOT, TINY, read_jsonl
from tracking import TRAIN_SCALARS, VAL_SCALARS, WANDB_ID_FILE, Tracker, TrackingError, check_tracking

EPOCHS, STEPS = 3, 12  # 24 training images, batch 2
EVERY = 5  # mid-epoch checkpoints after 5 and 10 steps of every epoch
KILL_AT = STEPS + 7  # SIGKILL right after global step 19 is logged: the last checkpoint holds 17 steps
RESUMED_AT = STEPS + EVERY
OPTS = TINY + ['TRAIN.EPOCHS', str(EPOCHS), 'PRINT_FREQ', '100', 'TRAIN.CHECKPOINT_EVERY_STEPS', str(EVERY)]
# main_finetune.py, killed (signal 9, as kill -9) right after `iteration` KILL_AT is logged, once W&B's
# service has had the time to write its file (every 0.1 s in these tests: WANDB__TRANSACTION_LOG_FLUSH_INTERVAL)
KILLED_RUN = f"""
import os, signal, sys, time
import tracking
log_train = tracking.Tracker.log_train
def log_and_die(self, record):
    log_train(self, record)
    if record['iteration'] == {KILL_AT}:
        time.sleep(2)
        os.kill(os.getpid(), signal.SIGKILL)
tracking.Tracker.log_train = log_and_die
import main_finetune
sys.exit(main_finetune.run(sys.argv[1:]))
"""


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('data'), num_train=8, num_val=[3, 3, 1])


def wandb_env(tmp_path):
    """Offline W&B whose own files (settings, caches) stay in `tmp_path`."""
    return dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore', WANDB_MODE='offline', WANDB_SILENT='true',
                WANDB_CONSOLE='off', WANDB_CONFIG_DIR=str(tmp_path / 'wandb_config'),
                WANDB_CACHE_DIR=str(tmp_path / 'wandb_cache'), WANDB_DATA_DIR=str(tmp_path / 'wandb_data'),
                WANDB__TRANSACTION_LOG_FLUSH_INTERVAL='0.1')


def finetune_args(data, out, log_dir, opts=OPTS):
    return ['--cfg', 'configs/demo/random_cyclic.yaml', '--data-path', data, '--output', str(out),
            '--batch-size', '2', '--log_dir', str(log_dir), '--wandb', 'pss-tests', '--opts', *opts]


def run(cmd, env, expect=0):
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == expect, result.stdout[-3000:] + result.stderr[-3000:]
    return result


# --- reading back ----------------------------------------------------------------------------------
def tensorboard_scalars(folder):
    """{tag: [(step, value)]} as TensorBoard shows them: purged events dropped."""
    events = EventAccumulator(str(folder), size_guidance={'scalars': 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()['scalars']}


def raw_steps(event_file):
    """The steps of the scalar events one file holds, purged or not."""
    return [event.step for event in EventFileLoader(event_file).Load() if event.summary.value]


def expected_scalars(records, scalars, step_key):
    """The JSON records as TensorBoard stores them: float32 values."""
    return {tag: [(r[step_key], float(np.float32(r[key]))) for r in records] for key, tag in scalars.items()}


def wandb_starts(run_dir):
    """[(run record, history rows)] of every offline start of the run, in start order, read with wandb's
    own reader of its .wandb files (`wandb leet inspect --json`)."""
    starts = []
    for path in glob.glob(os.path.join(run_dir, 'wandb', 'offline-run-*', 'run-*.wandb')):
        result = subprocess.run([sys.executable, '-m', 'wandb', 'leet', 'inspect', '--json', path],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
        run_record = next(r['run'] for r in records if r['type'] == 'run')
        starts.append((run_record, [r['history']['item'] for r in records if r['type'] == 'history']))
    return sorted(starts, key=lambda start: start[0]['start_time'])


def check_wandb_history(rows, train, val):
    """The W&B rows, in order, are the JSON logs' records: every field of TRAIN_SCALARS / VAL_SCALARS."""
    assert [row['_step'] for row in rows] == sorted({row['_step'] for row in rows})  # increasing, none twice
    train_rows = [row for row in rows if 'global_step' in row]
    val_rows = [row for row in rows if 'epoch' in row]
    assert len(train_rows) + len(val_rows) == len(rows)
    assert [{'global_step': r['global_step'], **{tag: r[tag] for tag in TRAIN_SCALARS.values()}} for r in train_rows] \
        == [{'global_step': r['iteration'], **{tag: r[key] for key, tag in TRAIN_SCALARS.items()}} for r in train]
    assert [{'epoch': r['epoch'], **{tag: r[tag] for tag in VAL_SCALARS.values()}} for r in val_rows] \
        == [{'epoch': r['epoch'], **{tag: r[key] for key, tag in VAL_SCALARS.items()}} for r in val]


# --- end to end ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_events_and_wandb_history_equal_the_json_logs_after_kill_9_and_resume(dataset, tmp_path):
    out, log_dir, env = tmp_path / 'out', tmp_path / 'tb', wandb_env(tmp_path)
    args = finetune_args(dataset, out, log_dir)
    run_dir, event_dir = out / 'demo' / 'random_cyclic', log_dir / 'demo' / 'random_cyclic'
    killed = subprocess.run([sys.executable, '-c', KILLED_RUN, *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:] + killed.stderr[-3000:]
    first_id = (run_dir / WANDB_ID_FILE).read_text().strip()
    [killed_events] = glob.glob(str(event_dir / 'train' / 'events.out.tfevents.*'))
    # the killed start wrote events after its last checkpoint: the resume must purge them
    assert raw_steps(killed_events) == [step for step in range(KILL_AT + 1) for _ in TRAIN_SCALARS]

    result = run([sys.executable, 'main_finetune.py', *args], env)
    assert f'resuming at epoch 1, step {EVERY}' in result.stdout
    assert f'W&B: continues run {first_id}' in result.stdout
    assert f'(train from step {RESUMED_AT}, val from epoch 1)' in result.stdout

    train, val = read_jsonl(run_dir / 'train_log.json'), read_jsonl(run_dir / 'val_log.json')
    assert [r['iteration'] for r in train] == list(range(EPOCHS * STEPS))
    assert [r['epoch'] for r in val] == list(range(EPOCHS))
    assert tensorboard_scalars(event_dir / 'train') == expected_scalars(train, TRAIN_SCALARS, 'iteration')
    assert tensorboard_scalars(event_dir / 'val') == expected_scalars(val, VAL_SCALARS, 'epoch')

    assert (run_dir / WANDB_ID_FILE).read_text().strip() == first_id
    (first, first_rows), (second, second_rows) = wandb_starts(run_dir)
    assert first['run_id'] == second['run_id'] == first_id
    assert not first.get('resume') and second['resume']  # one W&B run, continued
    assert second['config']['update']['TRAIN']['EPOCHS'] == EPOCHS  # the resolved config
    # the killed start sent exactly the steps its last checkpoint holds; the resume goes on from there
    assert max(row.get('global_step', -1) for row in first_rows) == RESUMED_AT - 1
    assert min(row.get('global_step', EPOCHS * STEPS) for row in second_rows) == RESUMED_AT
    check_wandb_history(first_rows + second_rows, train, val)


@pytest.mark.slow
def test_only_rank_0_writes_events_and_wandb(dataset, tmp_path):
    out, log_dir = tmp_path / 'out', tmp_path / 'tb'
    args = finetune_args(dataset, out, log_dir, TINY + ['TRAIN.EPOCHS', '1', 'PRINT_FREQ', '100'])
    port = str(29500 + os.getpid() % 1000 + 7)
    run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', port,
         'main_finetune.py', *args], wandb_env(tmp_path))
    run_dir, event_dir = out / 'demo' / 'random_cyclic', log_dir / 'demo' / 'random_cyclic'
    assert len(glob.glob(str(event_dir / 'train' / '*'))) == len(glob.glob(str(event_dir / 'val' / '*'))) == 1
    train, val = read_jsonl(run_dir / 'train_log.json'), read_jsonl(run_dir / 'val_log.json')
    assert [r['iteration'] for r in train] == list(range(STEPS // 2))  # 2 processes x batch 2
    assert tensorboard_scalars(event_dir / 'train') == expected_scalars(train, TRAIN_SCALARS, 'iteration')
    assert tensorboard_scalars(event_dir / 'val') == expected_scalars(val, VAL_SCALARS, 'epoch')
    [(_, rows)] = wandb_starts(run_dir)
    check_wandb_history(rows, train, val)


@pytest.mark.slow
def test_simmim_events_equal_its_json_log(tmp_path):
    from tests.test_simmim import TINY as SIMMIM_TINY
    data = make_image_folder(tmp_path / 'data', num_train=4, num_val=1)
    args = ['--cfg', 'configs/simmim/demo.yaml', '--data-path', data, '--output', str(tmp_path / 'out'),
            '--batch-size', '4', '--log-dir', str(tmp_path / 'tb'),
            '--opts', *SIMMIM_TINY, 'TRAIN.EPOCHS', '2', 'TRAIN.WARMUP_EPOCHS', '1', 'PRINT_FREQ', '100']
    assert main_simmim.run(args) == 0
    train = read_jsonl(tmp_path / 'out' / 'simmim_demo' / 'default' / 'train_log.json')
    assert [r['iteration'] for r in train] == list(range(6))
    events = tmp_path / 'tb' / 'simmim_demo' / 'default'
    assert tensorboard_scalars(events / 'train') == expected_scalars(train, TRAIN_SCALARS, 'iteration')
    assert not (events / 'val').exists()  # no validation in pre-training


# --- the tracker on its own ------------------------------------------------------------------------
def tiny_config(tmp_path, *opts):
    return get_config(argparse.Namespace(cfg='configs/demo/random_cyclic.yaml', output=str(tmp_path / 'out'),
                                         opts=['LOG_DIR', str(tmp_path / 'tb'), *opts]))


def train_record(step, value):
    return {'iteration': step, **{key: value + i for i, key in enumerate(TRAIN_SCALARS)}}


def val_record(epoch, value):
    return {'epoch': epoch, **{key: value + i for i, key in enumerate(VAL_SCALARS)}}


def test_a_resume_purges_the_steps_and_epochs_it_does_again(tmp_path):
    """4 steps per epoch. The first start logs epochs 0 and 1 and is cut off after validating epoch 1;
    its checkpoint holds epoch 1 trained but not validated (global step 8, epoch 1). The second start
    must replace validation 1, which lies before step 8 on the epoch axis: each axis purges its own."""
    config = tiny_config(tmp_path)
    first = Tracker()
    first.open(config, 4, resumed=False, global_step=0, epoch=0)
    for step in range(10):
        first.log_train(train_record(step, 100.0))
        if step % 4 == 3:
            first.log_val(val_record(step // 4, 100.0))
    first.close()
    second = Tracker()
    second.open(config, 4, resumed=True, global_step=8, epoch=1)
    second.log_val(val_record(1, 200.0))
    for step in range(8, 12):
        second.log_train(train_record(step, 200.0))
    second.log_val(val_record(2, 200.0))
    second.close()

    events = tmp_path / 'tb' / 'demo' / 'random_cyclic'
    train = [train_record(s, 100.0) for s in range(8)] + [train_record(s, 200.0) for s in range(8, 12)]
    val = [val_record(0, 100.0), val_record(1, 200.0), val_record(2, 200.0)]
    assert tensorboard_scalars(events / 'train') == expected_scalars(train, TRAIN_SCALARS, 'iteration')
    assert tensorboard_scalars(events / 'val') == expected_scalars(val, VAL_SCALARS, 'epoch')


def test_wandb_rows_interleave_steps_and_validations():
    tracker = Tracker()
    tracker.steps_per_epoch = 3
    order = [tracker._train_row(s) for s in range(3)] + [tracker._val_row(0)] + \
        [tracker._train_row(s) for s in range(3, 6)] + [tracker._val_row(1)] + [tracker._train_row(6)]
    assert order == list(range(9))


def test_tracking_keys_do_not_change_the_run(tmp_path):
    before = tiny_config(tmp_path)
    after = get_config(argparse.Namespace(cfg='configs/demo/random_cyclic.yaml', output=str(tmp_path / 'out'),
                                          opts=['WANDB.PROJECT', 'p', 'WANDB.ENTITY', 'e']))
    assert run_config_differences(before.dump(), after) == []  # tracking may be turned on or off on resume


@pytest.mark.parametrize('flag, module, package', [('--wandb', 'wandb', 'wandb'),
                                                   ('--log_dir', 'torch.utils.tensorboard', 'tensorboard')])
def test_a_missing_package_is_one_line_and_writes_nothing(dataset, tmp_path, monkeypatch, capsys, flag, module,
                                                          package):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if it were not installed
    out = tmp_path / 'out'
    args = ['--cfg', 'configs/demo/random_cyclic.yaml', '--data-path', dataset, '--output', str(out),
            '--batch-size', '2', flag, str(tmp_path / 'x'), '--opts', *TINY, 'TRAIN.EPOCHS', '1']
    assert main_finetune.run(args) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1, err
    assert f"needs the package '{package}'" in err and f'pip install {package}' in err
    assert not out.exists() and not (tmp_path / 'x').exists()
    with pytest.raises(TrackingError):
        check_tracking(tiny_config(tmp_path, 'WANDB.PROJECT', 'p'))


@pytest.mark.slow
def test_a_wandb_run_that_cannot_start_is_one_line(dataset, tmp_path):
    env = {k: v for k, v in wandb_env(tmp_path).items() if k not in ('WANDB_MODE', 'WANDB_API_KEY')}
    env.update(HOME=str(tmp_path / 'home'), NETRC=str(tmp_path / 'home' / '.netrc'))  # no login anywhere
    args = ['--cfg', 'configs/demo/random_cyclic.yaml', '--data-path', dataset, '--output', str(tmp_path / 'out'),
            '--batch-size', '2', '--wandb', 'p', '--opts', *TINY, 'TRAIN.EPOCHS', '1']
    result = run([sys.executable, 'main_finetune.py', *args], env, expect=2)
    assert result.stderr.startswith('error: W&B (WANDB.PROJECT p): ') and result.stderr.count('\n') == 1, \
        result.stderr
    assert 'wandb login' in result.stderr
    run_dir = tmp_path / 'out' / 'demo' / 'random_cyclic'
    assert not (run_dir / WANDB_ID_FILE).exists() and not (run_dir / 'run.lock').exists()


def test_an_unwritable_log_dir_is_bad_input(dataset, tmp_path, capsys):
    (tmp_path / 'file').write_text('')
    out = tmp_path / 'out'
    out.mkdir()
    before = snapshot(out)
    args = ['--cfg', 'configs/demo/random_cyclic.yaml', '--data-path', dataset, '--output', str(out),
            '--batch-size', '2', '--log_dir', str(tmp_path / 'file' / 'tb'), '--opts', *TINY]
    assert main_finetune.run(args) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and 'is not a folder' in err and err.count('\n') == 1, err
    assert snapshot(out) == before


def test_help_names_the_tracking_flags(capsys):
    for parser in (main_simmim.get_parser(), submitit_finetune.get_parser()):
        text = parser.format_help()
        assert '--log_dir PATH, --log-dir PATH' in text and '--wandb PROJECT' in text
    with pytest.raises(SystemExit):
        main_finetune.run(['--help'])
    text = capsys.readouterr().out
    assert '--log_dir PATH, --log-dir PATH' in text and '--wandb PROJECT' in text
