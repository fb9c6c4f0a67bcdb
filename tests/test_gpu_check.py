"""benchmarks/gpu_check.sh and its helpers, on the CPU: that the prepared GPU check can fail on a
wrong step, keeps to one deadline, and leaves in OUT_DIR only what the device returns."""
import collections
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import zipfile

import pytest
import torch

from benchmarks import gpu_check
from benchmarks.gpu_check import GraphBodyStep, compare_runs, rng_replays_differ, train_steps
from benchmarks.train_step import time_batches
from tests.test_finetune import ROOT

# a 17-token model: three kept-token counts over DROPS, 8 parameter groups (layer decay)
SMALL = ('DATA.IMG_SIZE', '32', 'MODEL.VIT.EMBED_DIM', '32', 'MODEL.VIT.DEPTH', '2', 'MODEL.VIT.NUM_HEADS', '2')
CPU = torch.device('cpu')
FP32 = gpu_check.TOLERANCE['fp32']


class ReplaysNothing(GraphBodyStep):
    """A graph that replays nothing: from each key's third call on, the last stats and no update."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = collections.Counter()

    def __call__(self, samples, targets, key=None):
        self.calls[key] += 1
        if self.body and self.calls[key] > 2:
            return self.step.static_stats
        return super().__call__(samples, targets, key)


class StaleLearningRates(GraphBodyStep):
    """Replays that read the learning rates of their capture (each key's second call)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls, self.captured = collections.Counter(), {}

    def __call__(self, samples, targets, key=None):
        groups = self.step.optimizer.param_groups
        current = [g['lr'] for g in groups]
        self.calls[key] += 1
        if self.calls[key] == 2:
            self.captured[key] = current
        for g, lr in zip(groups, self.captured[key] if self.body and self.calls[key] > 2 else current):
            g['lr'] = lr
        try:
            return super().__call__(samples, targets, key)
        finally:
            for g, lr in zip(groups, current):
                g['lr'] = lr


class FrozenRandomNumbers(GraphBodyStep):
    """Replays that draw the same random numbers every time."""

    def __call__(self, samples, targets, key=None):
        if self.body:
            torch.manual_seed(0)
        return super().__call__(samples, targets, key)


def test_fast_step_check_passes_the_graph_body_and_fails_broken_replays():
    eager = train_steps(CPU, None, False, False, opts=SMALL)
    body = train_steps(CPU, None, False, True, opts=SMALL)
    problems, errors = compare_runs(eager, body, FP32)
    assert problems == [] and errors['weight_change_rel_err'] < FP32['change']
    assert errors['loss_rel_err'] < FP32['stats'] and errors['grad_norm_rel_err'] < FP32['stats']
    assert eager['stats'].shape == (len(gpu_check.DROPS), 2)

    # the old check's tolerance (2e-2 of the largest weight) passed a graph that replays nothing
    nothing = train_steps(CPU, None, False, True, make_step=ReplaysNothing, opts=SMALL)
    problems, errors = compare_runs(eager, nothing, FP32)
    assert errors['weight_change_rel_err'] > 0.3 and errors['loss_rel_err'] > 1e-3
    assert any(p.startswith('weight changes differ') for p in problems)
    assert any(p.startswith('loss differs') for p in problems)

    stale = train_steps(CPU, None, False, True, make_step=StaleLearningRates, opts=SMALL)
    problems, errors = compare_runs(eager, stale, FP32)
    assert errors['weight_change_rel_err'] > 0.1
    assert any(p.startswith('weight changes differ') for p in problems)
    # the same wrong step passes when the LR is the same at every step: why it changes every step
    constant = (1.0,) * len(gpu_check.DROPS)
    problems, _ = compare_runs(train_steps(CPU, None, False, False, lr_factors=constant, opts=SMALL),
                               train_steps(CPU, None, False, True, make_step=StaleLearningRates,
                                           lr_factors=constant, opts=SMALL), FP32)
    assert problems == []


def test_fast_step_check_sees_several_learning_rates_per_step():
    from optimizer import build_optimizer
    from models import build_model
    config = gpu_check.small_config(*SMALL)
    groups = build_optimizer(config, build_model(config)).param_groups
    assert len({g['lr_scale'] for g in groups}) >= 3 and len(groups) >= 6


def test_random_numbers_check_fails_when_replays_repeat_their_draws():
    problems, rows = rng_replays_differ(CPU, None)
    assert problems == [] and all(r['weights_fixed'] for r in rows)
    assert [r['randomness'] for r in rows] == ['drop path', 'random selection']
    problems, rows = rng_replays_differ(CPU, None, make_step=FrozenRandomNumbers)
    assert len(problems) == 2 and all('did not advance' in p for p in problems)


def test_data_check_times_batches_after_the_first_w():
    read = []

    def batches():
        while True:
            read.append(len(read))
            yield len(read)
    clock = lambda: len(read)  # noqa: E731  # "time" = batches read so far
    seconds, total = time_batches(batches(), skip=16, count=32, clock=clock)
    assert (seconds, total, len(read)) == (32, 48, 48)


def test_check_run_wants_every_step_once_and_a_validation_per_epoch(tmp_path, capsys):
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'checkpoint.pth').write_bytes(b'')
    lines = [{'iteration': i, 'loss': 1.0, 'time': 0.1} for i in (0, 1, 2, 3)]
    (run / 'train_log.json').write_text(''.join(json.dumps(r) + '\n' for r in lines))
    (run / 'val_log.json').write_text(''.join(json.dumps({'epoch': e, 'acc1': 50.0}) + '\n' for e in (0, 1)))
    assert gpu_check.check_run(run, epochs=2, steps_per_epoch=2) == 0
    (run / 'train_log.json').write_text(''.join(json.dumps(r) + '\n' for r in lines + lines[3:]))  # a repeat
    assert gpu_check.check_run(run, epochs=2, steps_per_epoch=2) == 1
    assert 'exactly once' in capsys.readouterr().out


@pytest.mark.parametrize('flags, message', [
    (['--cuda-graphs', '--warmup', '1'], '--cuda-graphs needs --warmup 2 or more'),
    (['--cuda-graphs', '--compile'], '--cuda-graphs and --compile together are not supported'),
])
def test_train_step_refuses_graph_timings_that_would_include_a_capture(flags, message, capsys):
    from benchmarks.train_step import parse_args
    with pytest.raises(SystemExit) as exit_info:
        parse_args(['--cfg', 'configs/vit-b/magnitude_cyclic_80_0.yaml', *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


# --- the report and the device's limits ---------------------------------------------------------
def write_status(report, name, status):
    (report / 'status').mkdir(parents=True, exist_ok=True)
    (report / 'status' / f'{name}.json').write_text(json.dumps({'name': name, 'status': status, 'seconds': 1,
                                                                 'detail': ''}))


def test_pack_leaves_only_what_the_device_returns(tmp_path):
    report, out = tmp_path / 'report', tmp_path / 'out'
    run = report / 'e2e' / 'pss' / 'fp16'  # 4 folders down, as the run folders are
    run.mkdir(parents=True)
    (run / 'train_log.json').write_text('{"iteration": 0}\n')
    (run / 'checkpoint.pth').write_bytes(b'0' * 1000)
    (run / '.checkpoint.pth.1.ab.tmp').write_bytes(b'0')
    (report / 'big.json').write_bytes(os.urandom(gpu_check.ARCHIVE_MAX_FILE + 1))
    (report / 'gpu_check.log').write_text('== e2e_data: pass\n')
    for i in range(20):
        (report / 'results').mkdir(exist_ok=True)
        (report / 'results' / f'train_{i}.json').write_text('{}')
    for name, state in (('setup_dependencies', 'pass'), ('fast_step_vs_eager', 'pass'), ('e2e_data', 'pass'),
                        ('e2e_eval', 'fail'), ('speed_eager', 'pass'), ('speed_compile', 'skipped'),
                        ('profile_eager', 'not_reached'), ('data_loader', 'skipped')):
        write_status(report, name, state)
    assert gpu_check.pack(report, out, {'budget_s': 400}) == 0
    assert sorted(os.listdir(out)) == ['gpu_check.log', 'gpu_check.tar.gz', 'summary.json']
    assert gpu_check.out_problems(out) == []
    with tarfile.open(out / 'gpu_check.tar.gz') as tar:
        names = set(tar.getnames())
    assert 'gpu_check/e2e/pss/fp16/train_log.json' in names and 'gpu_check/results/train_19.json' in names
    assert not any(n.endswith(('.pth', '.tmp')) or n.endswith('big.json') for n in names)
    result = json.loads((out / 'summary.json').read_text())
    assert {k: v['status'] for k, v in result['parts'].items()} == {
        'setup': 'pass', 'fast_step': 'pass', 'end_to_end': 'fail', 'speed': 'pass', 'profile': 'incomplete',
        'data': 'skipped'}
    assert not result['all_pass'] and result['budget_s'] == 400
    assert result['archive']['left_out'][0].startswith('big.json')


def test_out_problems_names_every_broken_limit(tmp_path):
    for i in range(9):
        (tmp_path / f'f{i}').write_text('x')
    (tmp_path / 'a' / 'b' / 'c').mkdir(parents=True)
    (tmp_path / 'a' / 'b' / 'c' / 'deep.json').write_text('{}')
    (tmp_path / 'a' / 'b' / 'ok.json').write_text('{}')
    (tmp_path / 'a' / 'bad name').write_text('x')
    problems = gpu_check.out_problems(tmp_path)
    assert problems[0] == '12 files, at most 8 come back'
    assert any('deep.json: more than 2 folders down' in p for p in problems)
    assert any(p.startswith('a/bad name: a name') for p in problems)
    assert not any('ok.json' in p for p in problems)


def test_gpu_check_past_its_deadline_skips_every_part_and_returns_three_files(tmp_path):
    # BUDGET 25 s with 10 s kept back: less than the 20 s a check needs is left from the start
    out, work = tmp_path / 'out', tmp_path / 'work'
    env = dict(os.environ, TINY='1', BUDGET='25', WORK=str(work), PYTHON=sys.executable, OMP_NUM_THREADS='1')
    result = subprocess.run(['bash', 'benchmarks/gpu_check.sh', str(out)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 1, result.stdout + result.stderr  # not every part passed
    assert sorted(os.listdir(out)) == ['gpu_check.log', 'gpu_check.tar.gz', 'summary.json']
    assert gpu_check.out_problems(out) == []
    summary = json.loads((out / 'summary.json').read_text())
    checks = {n: e for part in summary['parts'].values() for n, e in part['checks'].items()}
    assert len(checks) == 19 and {e['status'] for e in checks.values()} == {'skipped'}
    assert checks['fast_step_vs_eager']['detail'].startswith('not started: ')
    assert checks['e2e_eval']['detail'] == 'needs e2e_fp16_grad_scaler, which did not pass'
    assert summary['versions']['torch'] == torch.__version__
    with tarfile.open(out / 'gpu_check.tar.gz') as tar:
        assert 'gpu_check/status/speed_compile.json' in tar.getnames()
    # a WORK folder it did not make is refused, not emptied
    foreign = tmp_path / 'foreign'
    foreign.mkdir()
    (foreign / 'keep.txt').write_text('x')
    result = subprocess.run(['bash', 'benchmarks/gpu_check.sh', str(out)], cwd=ROOT,
                            env=dict(env, WORK=str(foreign)), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and 'holds files not written by gpu_check.sh' in result.stderr
    assert (foreign / 'keep.txt').exists()


# --- dependencies ---------------------------------------------------------------------------------
def fake_wheel(folder, dist, module):
    """A minimal pure-Python wheel of `dist` 0.1 holding `module` (VALUE = 42)."""
    path = folder / f'{dist}-0.1-py3-none-any.whl'
    info = f'{dist}-0.1.dist-info'
    files = {f'{module}/__init__.py': 'VALUE = 42\n',
             f'{info}/METADATA': f'Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n',
             f'{info}/WHEEL': 'Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n'}
    files[f'{info}/RECORD'] = ''.join(f'{name},,\n' for name in files) + f'{info}/RECORD,,\n'
    with zipfile.ZipFile(path, 'w') as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


def test_install_missing_puts_only_missing_packages_into_a_target_folder(tmp_path):
    wheels, target = tmp_path / 'whl', tmp_path / 'site'
    wheels.mkdir()
    fake_wheel(wheels, 'pss_fake_dep', 'pss_fake_dep')
    required = {'pss_fake_dep': 'pss_fake_dep', 'json': 'not-a-real-dist'}  # json is there: not asked for
    assert gpu_check.install_missing(wheels, target, required) == 0
    assert (target / 'pss_fake_dep' / '__init__.py').exists()
    env = dict(os.environ, PYTHONPATH=str(target))
    value = subprocess.run([sys.executable, '-c', 'import pss_fake_dep; print(pss_fake_dep.VALUE)'], env=env,
                           capture_output=True, text=True, check=True).stdout
    assert value == '42\n'
    assert gpu_check.install_missing(tmp_path / 'nowhere', target, {'pss_absent_dep': 'x'}) == 1


def test_fetch_wheels_fetches_only_yacs_and_termcolor_unless_asked(tmp_path):
    calls = tmp_path / 'calls'
    stub = tmp_path / 'python'
    stub.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo "$@" >> {calls}
        """))
    stub.chmod(0o755)
    folder = tmp_path / 'whl'
    folder.mkdir()
    (folder / 'old-1.0-py3-none-any.whl').write_text('x')

    def run(**env):
        calls.write_text('')
        subprocess.run(['bash', 'benchmarks/fetch_wheels.sh', str(folder)], cwd=ROOT, check=True, capture_output=True,
                       env=dict(os.environ, PYTHON=str(stub), **env))
        return calls.read_text().splitlines()
    lines = run()
    assert len(lines) == 1 and lines[0].endswith(f'-d {folder} yacs termcolor')
    assert not (folder / 'old-1.0-py3-none-any.whl').exists()
    assert run(MPL_PYVERS='', PYVERS='') == lines
    lines = run(MPL_PYVERS='3.12', EXTRA='timm==1.0.22')
    assert lines[0].endswith('yacs termcolor cycler pyparsing python-dateutil six packaging timm==1.0.22')
    assert len(lines) == 2 and '--python-version 3.12' in lines[1] and lines[1].endswith('contourpy')


# --- SIGTERM and resume ---------------------------------------------------------------------------
FAKE_TRAINING = '''
import json, os, signal, sys, time
run = sys.argv[1]
os.makedirs(run, exist_ok=True)
log = os.path.join(run, 'train_log.json')
start = sum(1 for _ in open(log)) if os.path.exists(log) else 0
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
if start:
    print(f'resuming at epoch 0, step {start}', flush=True)
for i in range(start, 40):
    with open(log, 'a') as f:
        f.write(json.dumps({'iteration': i, 'loss': 1.0, 'time': 0.01}) + '\\n')
    if stop:
        open(os.path.join(run, 'checkpoint.pth'), 'w').close()
        print(f'SIGTERM received: checkpoint written at epoch 0, step {i + 1}', flush=True)
        sys.exit(3)
    time.sleep(0.02)
open(os.path.join(run, 'val_log.json'), 'w').write(json.dumps({'epoch': 0, 'acc1': 1.0}) + '\\n')
open(os.path.join(run, 'checkpoint.pth'), 'w').close()
'''


def test_sigterm_resume_stops_the_run_once_and_checks_the_continued_logs(tmp_path, capsys):
    script = tmp_path / 'train.py'
    script.write_text(FAKE_TRAINING)
    run = tmp_path / 'run'
    cmd = [sys.executable, str(script), str(run)]
    assert gpu_check.main(['sigterm-resume', str(run), '--stop-after', '10', '--epochs', '1',
                           '--steps-per-epoch', '40', '--logs', str(tmp_path / 'logs'), '--', *cmd]) == 0
    out = capsys.readouterr().out
    assert 'exit 3 (3 expected)' in out and 'second run: exit 0 (0 expected), resuming at epoch 0, step' in out
    first = (tmp_path / 'logs' / 'first.log').read_text()
    assert 'SIGTERM received' in first
    # a run that ends before the signal is a failure
    for name in ('train_log.json', 'val_log.json', 'checkpoint.pth'):
        (run / name).unlink()
    assert gpu_check.sigterm_resume(run, cmd, 1000, 1, 40, tmp_path / 'logs2') == 1
    assert 'ended (exit 0) before 1000 steps were logged' in capsys.readouterr().out


def test_dali_part_without_dali_times_the_default_loader_against_synthetic_tensors(tmp_path, monkeypatch):
    # what gpu_check.sh runs where nvidia.dali is not installed: no loader part, no DALI column, exit 0
    monkeypatch.setenv('TINY', '1')
    from benchmarks import dali_gpu_check
    argv = [str(tmp_path / 'out'), '--work', str(tmp_path / 'images'), '--feeds', 'synthetic', 'torch',
            '--rhos', '1.0', '0.2', '--steps', '1', '--warmup', '1', '--torch-workers', '0']
    assert dali_gpu_check.main(argv) == 0
    result = json.loads((tmp_path / 'out' / 'dali_gpu_check.json').read_text())
    assert set(result['step_s']) == {'synthetic', 'torch'} and 'loader' not in result and not result['errors']
    assert [row['rho'] for row in result['end_to_end']] == [1.0, 0.2]
    assert all(row['torch_over_synthetic'] > 0 and 'dali_ms' not in row for row in result['end_to_end'])
    table = (tmp_path / 'out' / 'dali_gpu_check.md').read_text()
    assert '| rho | synthetic images/s | torch images/s | torch / synthetic |' in table and 'nan' not in table
