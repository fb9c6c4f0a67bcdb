"""Submit main_finetune.py to SLURM through submitit: one task per GPU, requeued on timeout or preemption.

    python submitit_finetune.py --nodes 2 --ngpus 8 --timeout 4320 --partition <partition> \\
        --cfg configs/vit-b/magnitude_cyclic_80_0.yaml --data-path <imagenet> \\
        --pretrained <simmim checkpoint> --output <dir>

Every main_finetune.py flag is taken and means the same; the run writes the same run folder,
<output>/<MODEL.NAME>/<TAG>/. submitit's own files (the pickled job, each task's stdout and stderr)
go to --job_dir, by default <run folder>/submitit/. Each task reads its rank, the world size and the
master address from SLURM's variables (submitit's TorchDistributedEnvironment) and runs
main_finetune.main. Before the time limit (and where the cluster sends it, on preemption) SLURM
sends submitit's signal (USR2): every rank finishes its step, a checkpoint is written as on
SIGTERM, and rank 0 requeues the job through submitit's checkpoint() protocol; the requeued job
continues from the run folder's newest checkpoint (auto-resume), as a restart after kill -9 does.
"""
import copy
import os
import shlex
import shutil
import signal
import sys

import submitit
import torch

import main_finetune
from config import ConfigError, get_config
from launch import EXIT_BAD_INPUT, EXIT_PREEMPTED, StopRequest, check_output_writable, finetune_parser, run_args
from tracking import add_tracking_args, check_tracking
from utils import LaunchError, all_gather_object

REPO = os.path.dirname(os.path.abspath(__file__))
REQUEUE_SIGNAL_DELAY_S = 120  # the signal comes this long before the time limit: a step and a checkpoint fit
MAX_NUM_TIMEOUTS = 30  # requeues after a time limit (preemptions do not count): 72 h jobs x 30 is ample
MEM_GB_PER_GPU = 40  # host memory per task: loader workers' ImageNet batches and the checkpoint's host copy


class RunFailed(RuntimeError):
    """main_finetune.main ended with a status other than 0 and the job is not requeued."""


def get_parser():
    # The same --resume; under requeues it can only name where the first start begins.
    parser = finetune_parser(
        resume_help=('checkpoint the first start resumes from (wins over auto-resume there); every requeued '
                     'start continues from the run folder\'s newest checkpoint'),
        prog='submitit_finetune.py',
        description='PSS fine-tuning on SLURM (submitit); the options above the SLURM group are main_finetune.py\'s')
    add_tracking_args(parser)
    slurm = parser.add_argument_group('SLURM (submitit)')
    slurm.add_argument('--nodes', type=int, default=1, help='nodes to request (default 1)')
    slurm.add_argument('--ngpus', type=int, default=8, help='GPUs per node, one task each (default 8)')
    slurm.add_argument('--timeout', type=int, default=4320, metavar='MINUTES',
                       help='time limit of each job in minutes (default 4320, 72 h); '
                       f'{REQUEUE_SIGNAL_DELAY_S} s before it the run writes a checkpoint and the job is requeued')
    slurm.add_argument('--partition', type=str, default='', help='SLURM partition (default: the cluster\'s)')
    slurm.add_argument('--job_dir', type=str, default='', metavar='PATH',
                       help='folder for submitit\'s files: the pickled job and every task\'s stdout / stderr '
                       '(default <output>/<MODEL.NAME>/<TAG>/submitit)')
    return parser


def continuing(args):
    """`args` for a requeued job: the run folder's newest checkpoint, never the first start's
    --resume (which wins over auto-resume and would start the run over)."""
    args = copy.copy(args)
    args.resume = None
    args.opts = list(args.opts or []) + ['MODEL.RESUME', '', 'TRAIN.AUTO_RESUME', 'True']
    return args


def requeue_signal():
    """The signal submitit requeues on (USR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise)."""
    return getattr(signal, 'SIG' + submitit.JobEnvironment.USR_SIG)


class Trainer:
    """The job: main_finetune.main with `args` on every task; checkpoint() is submitit's requeue hook."""

    def __init__(self, args):
        self.args = args

    def __call__(self):
        # LOCAL_RANK picks the GPU, so every task keeps seeing all of the node's GPUs.
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        usr_signal = requeue_signal()
        # submitit's handler (rank 0 checkpoints the job and requeues it) runs once our checkpoint is written.
        submitit_requeue = signal.getsignal(usr_signal)
        stop = StopRequest(signals=(signal.SIGTERM, signal.SIGINT, usr_signal))
        status = run_args(self.job_args(), main_finetune.main, keep_process_group=True, stop=stop)
        requeue = status == EXIT_PREEMPTED and any(all_gather_object(usr_signal in stop.received))
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        if requeue:
            if callable(submitit_requeue):
                submitit_requeue(usr_signal, None)  # rank 0: requeues and exits; the others return
            return status
        if status == EXIT_PREEMPTED:  # SIGTERM / SIGINT alone: scancel, or a preemption SLURM requeues itself
            raise RunFailed(f'stopped by {stop.signal_name or "another rank"} after writing a checkpoint; '
                            'submit the same command again to continue the run')
        if status != 0:
            raise RunFailed(f'main_finetune.main ended with exit status {status}: see this task\'s stderr')
        return status

    def job_args(self):
        """The arguments of this start: SLURM's own requeue (a preemption under PreemptMode=REQUEUE)
        reruns the first submission, which must continue the run too."""
        restarted = int(os.environ.get('SLURM_RESTART_COUNT', '0') or 0) > 0
        return continuing(self.args) if restarted else self.args

    def checkpoint(self):
        """Called by submitit on rank 0 when requeueing: the same job, continuing from the run folder."""
        return submitit.helpers.DelayedSubmission(Trainer(continuing(self.args)))


def submit(args):
    """Check the config, then submit the job to SLURM; returns the submitit job."""
    config = get_config(args)  # bad input stops here, before anything is written or submitted
    check_output_writable(config.OUTPUT)
    check_tracking(config)
    missing = [command for command in ('sbatch', 'srun') if shutil.which(command) is None]
    if missing:
        raise LaunchError(f"{' and '.join(missing)} not found: submitit_finetune.py submits to SLURM; without "
                          'SLURM run main_finetune.py (with torchrun for several GPUs)')
    job_dir = args.job_dir or os.path.join(config.OUTPUT, 'submitit')
    executor = submitit.AutoExecutor(folder=os.path.join(job_dir, '%j'), cluster='slurm',
                                     slurm_max_num_timeout=MAX_NUM_TIMEOUTS)
    executor.update_parameters(
        nodes=args.nodes, gpus_per_node=args.ngpus, tasks_per_node=args.ngpus, timeout_min=args.timeout,
        cpus_per_task=config.DATA.NUM_WORKERS + 2,  # the loader's workers, the task itself and a spare
        mem_gb=MEM_GB_PER_GPU * args.ngpus, slurm_signal_delay_s=REQUEUE_SIGNAL_DELAY_S,
        # the job runs in the folder it was submitted from (relative paths keep their meaning) and
        # imports this module from the repository
        slurm_setup=[f'export PYTHONPATH={shlex.quote(REPO)}${{PYTHONPATH:+:$PYTHONPATH}}'],
        name=f'{config.MODEL.NAME}/{config.TAG}', **({'slurm_partition': args.partition} if args.partition else {}))
    return executor.submit(Trainer(args))


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.nodes < 1 or args.ngpus < 1 or args.timeout < 1:
        print('error: --nodes, --ngpus and --timeout must be at least 1', file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        job = submit(args)
    except (ConfigError, LaunchError, OSError) as e:
        print(f'error: {e}', file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f'submitted job {job.job_id}; submitit\'s files: {job.paths.folder}')
    return 0


if __name__ == '__main__':
    # The job pickles Trainer by reference, so it must come from the module, not from __main__.
    import submitit_finetune
    sys.exit(submitit_finetune.main())
