"""submitit_finetune.py: SLURM's signal -> checkpoint -> requeue -> a run identical to an uninterrupted one.

submitit's LocalExecutor stands in for SLURM: it starts the job's tasks (with rank and world size in
submitit's variables), restarts them when rank 0 requeues, and its job id is the same across
restarts. The signal submitit gets from SLURM before a time limit or at a preemption (USR2) is sent
to a task by hand, mid-training.
"""
import os
import subprocess
import sys
import time

import pytest
import submitit
import torch

import submitit_finetune
from config import get_config
from tests.helpers import make_image_folder
from tests.test_finetune import ROOT, read_jsonl
from tests.test_resume import OPTS, command, final_state, run_to_end, torchrun

# wall-clock and machine state: different in every run, interrupted or not
UNTIMED = {'time', 'cpu_time', 'gpu_time', 'total_time', 'memory'}
RUN = ('demo', 'random_cyclic')


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('data'), num_train=8, num_val=[3, 3, 1])


def finetune_args(dataset, out, extra=()):
    return ['--cfg', os.path.join(ROOT, 'configs/demo/random_cyclic.yaml'), '--data-path', dataset,
            '--output', str(out), '--batch-size', '2', '--opts', *OPTS, *extra]


@pytest.fixture
def job_env(monkeypatch):
    """The environment the LocalExecutor's tasks inherit: this repository importable, one thread."""
    monkeypatch.setenv('PYTHONPATH', ROOT)
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    monkeypatch.setenv('PYTHONWARNINGS', 'ignore')
    monkeypatch.chdir(ROOT)


def submit_locally(folder, args, tasks=1, timeout_min=60):
    executor = submitit.LocalExecutor(folder=folder, max_num_timeout=3)
    executor.update_parameters(timeout_min=timeout_min, tasks_per_node=tasks)
    return executor.submit(submitit_finetune.Trainer(submitit_finetune.get_parser().parse_args(args)))


def tasks_of(job, count):
    """The pids of the job's tasks (children of the local controller), rank order."""
    deadline = time.time() + 60
    while time.time() < deadline:
        pids = subprocess.run(['pgrep', '-P', str(job._process.pid)], capture_output=True, text=True).stdout.split()
        if len(pids) == count:
            ranks = {int(open(f'/proc/{p}/environ', 'rb').read().split(b'SUBMITIT_LOCAL_GLOBALID=')[1]
                         .split(b'\0')[0]): int(p) for p in pids}
            return [ranks[r] for r in range(count)]
        time.sleep(0.05)
    raise AssertionError(f'the job did not start {count} tasks')


def signal_after(job, run_dir, lines, pid):
    """Send submitit's requeue signal to task `pid` once train_log.json has `lines` lines."""
    log = run_dir / 'train_log.json'
    deadline = time.time() + 240
    while time.time() < deadline and not job.done():
        if log.exists() and sum(1 for _ in open(log)) >= lines:
            os.kill(pid, submitit_finetune.requeue_signal())
            return
        time.sleep(0.005)
    raise AssertionError('the run ended before it could be signalled:\n' + job.stderr())


def logs(run_dir):
    """Both JSON logs without the wall-clock and memory fields."""
    return [[{k: v for k, v in row.items() if k not in UNTIMED} for row in read_jsonl(run_dir / name)]
            for name in ('train_log.json', 'val_log.json')]


def assert_identical(run_dir, ref_dir):
    state, ref_state = final_state(run_dir), final_state(ref_dir)
    assert state.keys() == ref_state.keys()
    for key in state:
        assert torch.equal(state[key], ref_state[key]), key  # bit-identical
    train, val = logs(run_dir)
    assert [row['iteration'] for row in train] == list(range(len(train)))  # every step exactly once
    assert [train, val] == logs(ref_dir)


@pytest.fixture(scope='module')
def reference(dataset, tmp_path_factory):
    """One uninterrupted run, started the usual way (python main_finetune.py)."""
    out = tmp_path_factory.mktemp('reference')
    run_to_end(command(dataset, out))
    return out.joinpath(*RUN)


@pytest.mark.slow
def test_a_preempted_job_is_requeued_and_ends_as_an_uninterrupted_run(dataset, reference, tmp_path, job_env):
    job = submit_locally(tmp_path / 'submitit', finetune_args(dataset, tmp_path))
    run_dir = tmp_path.joinpath(*RUN)
    signal_after(job, run_dir, 16, tasks_of(job, 1)[0])  # in epoch 1 (12 steps an epoch)
    assert job.result() == 0
    out = job.stdout()  # submitit's INFO lines and main_finetune's log
    assert 'Caught signal SIGUSR2' in job.stderr() and 'this job is preempted' in job.stderr()
    assert 'SIGUSR2 received: checkpoint written at epoch 1' in out
    assert 'Requeued job' in out and '(3 remaining timeouts)' in out  # a preemption is not a timeout
    assert out.count('resuming at epoch 1, step') == 1  # the requeued start, from that checkpoint
    assert_identical(run_dir, reference)


@pytest.mark.slow
def test_two_tasks_time_out_agree_to_stop_and_continue_as_torchrun(dataset, tmp_path, job_env):
    """2 tasks (gloo); only rank 1 gets the signal, yet both stop at the same step and rank 0
    requeues. A job of 5 minutes counts as timed out whenever signalled (submitit: before 80% of
    the time, or 10 minutes before the end), so this is the time-limit path."""
    ref_out = tmp_path / 'torchrun'
    proc = torchrun(finetune_args(dataset, ref_out), nproc=2)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]

    job = submit_locally(tmp_path / 'submitit', finetune_args(dataset, tmp_path), tasks=2, timeout_min=5)
    run_dir = tmp_path.joinpath(*RUN)
    rank0, rank1 = tasks_of(job, 2)
    signal_after(job, run_dir, 3, rank1)
    assert job.results() == [0, 0]
    out0, out1 = job._sub_jobs[0].stdout(), job._sub_jobs[1].stdout()
    assert 'this job is timed-out' in job._sub_jobs[0].stderr()
    assert 'Requeued job' in out0 and '(2 remaining timeouts)' in out0
    assert 'Not checkpointing nor requeuing' in out1
    assert 'resuming at epoch' in out0
    assert_identical(run_dir, ref_out.joinpath(*RUN))


@pytest.mark.slow
def test_a_job_with_bad_input_fails_with_the_error_line(tmp_path, job_env):
    job = submit_locally(tmp_path / 'submitit', finetune_args(str(tmp_path / 'missing'), tmp_path))
    with pytest.raises(submitit.core.utils.FailedJobError, match='exit status 2'):
        job.result()
    assert job.stderr().startswith(f"error: data path '{tmp_path / 'missing'}' does not exist\n")
    assert not tmp_path.joinpath(*RUN).exists()


def test_a_requeued_job_continues_from_the_run_folder(tmp_path, monkeypatch):
    """checkpoint() (submitit's requeue) and a start after SLURM's own requeue drop the first
    start's --resume and auto-resume, even where the config turned auto-resume off."""
    args = submitit_finetune.get_parser().parse_args([
        '--cfg', 'configs/demo/random_cyclic.yaml', '--output', str(tmp_path), '--resume', 'other/checkpoint.pth',
        '--opts', 'TRAIN.AUTO_RESUME', 'False'])
    trainer = submitit_finetune.Trainer(args)
    monkeypatch.delenv('SLURM_RESTART_COUNT', raising=False)
    first = get_config(trainer.job_args())
    assert (first.MODEL.RESUME, first.TRAIN.AUTO_RESUME) == ('other/checkpoint.pth', False)
    requeued = trainer.checkpoint()
    assert isinstance(requeued.function, submitit_finetune.Trainer) and requeued.args == ()
    monkeypatch.setenv('SLURM_RESTART_COUNT', '1')
    for continued in (get_config(requeued.function.args), get_config(trainer.job_args())):
        assert (continued.MODEL.RESUME, continued.TRAIN.AUTO_RESUME) == ('', True)
        assert continued.OUTPUT == first.OUTPUT
    assert args.resume == 'other/checkpoint.pth'  # the submitted arguments are left as they were


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """sbatch and srun on PATH: sbatch keeps the script it is given and answers with a job id."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'sbatch').write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/sbatch.sh\necho "Submitted batch job 4242"\n')
    (bin_dir / 'srun').write_text('#!/bin/sh\nexit 0\n')
    for name in ('sbatch', 'srun'):
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv('PATH', f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / 'sbatch.sh'


def test_two_nodes_of_eight_gpus_make_this_sbatch_script(tmp_path, fake_slurm, capsys):
    status = submitit_finetune.main(['--nodes', '2', '--ngpus', '8', '--timeout', '600', '--partition', 'learn',
                                     '--cfg', 'configs/vit-b/magnitude_cyclic_80_0.yaml', '--data-path', '/imagenet',
                                     '--output', str(tmp_path / 'out')])
    assert status == 0
    job_dir = tmp_path / 'out' / 'pss' / 'simmim' / 'vit-b' / 'magnitude_cyclic_80_0' / 'submitit' / '4242'
    assert capsys.readouterr().out == f"submitted job 4242; submitit's files: {job_dir}\n"
    script = fake_slurm.read_text()
    for line in ('--nodes=2', '--ntasks-per-node=8', '--gpus-per-node=8', '--time=600', '--partition=learn',
                 '--signal=USR2@120', '--cpus-per-task=10', f'export PYTHONPATH={ROOT}'):
        assert line in script, line
    submitted = submitit.core.utils.DelayedSubmission.load(job_dir / '4242_submitted.pkl')
    assert type(submitted.function).__module__ == 'submitit_finetune'  # importable in the job
    assert submitted.function.args.data_path == '/imagenet'


DEMO = ['--cfg', 'configs/demo/random_cyclic.yaml']


@pytest.mark.parametrize('argv, message', [
    (['--cfg', 'missing.yaml'], "error: config file not found: 'missing.yaml'"),
    (DEMO + ['--nodes', '0'], 'error: --nodes, --ngpus and --timeout must be at least 1'),
    (DEMO + ['--opts', 'TRAIN.EPOCHZ', '1'], "error: --opts: unknown config key 'TRAIN.EPOCHZ'"),
])
def test_bad_input_is_one_line_and_nothing_is_submitted(tmp_path, fake_slurm, capsys, argv, message):
    assert submitit_finetune.main(argv + ['--output', str(tmp_path / 'out')]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count('\n') == 1, err
    assert not fake_slurm.exists() and not (tmp_path / 'out').exists()


def test_without_slurm_it_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('PATH', str(tmp_path))  # neither sbatch nor srun
    assert submitit_finetune.main(['--cfg', 'configs/demo/random_cyclic.yaml', '--output', str(tmp_path / 'o')]) == 2
    assert capsys.readouterr().err == ('error: sbatch and srun not found: submitit_finetune.py submits to SLURM; '
                                       'without SLURM run main_finetune.py (with torchrun for several GPUs)\n')


def test_help_names_the_slurm_options_and_main_finetunes():
    result = subprocess.run([sys.executable, 'submitit_finetune.py', '--help'], cwd=ROOT, capture_output=True,
                            text=True, env=dict(os.environ, PYTHONWARNINGS='ignore'))
    assert result.returncode == 0
    for flag in ('--nodes', '--ngpus', '--timeout', '--partition', '--job_dir', '--cfg', '--data-path',
                 '--pretrained', '--resume', '--opts', '--output', '--tag'):
        assert flag in result.stdout, flag
    assert 'SLURM (submitit)' in result.stdout

