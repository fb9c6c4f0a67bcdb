"""The frame of every script: its flags (finetune_parser), how it runs and ends (run_script: one
`error:` line and an exit status for what a user can cause), the stop request of a training loop
(StopRequest: SIGTERM / SIGINT become a checkpoint and exit 3) and the up-front check of an output
folder. training.py holds the loop these frame.
"""
import argparse
import contextlib
import os
import random
import signal
import sys

import numpy as np
import torch

from checkpoint import CheckpointError
from config import ConfigError, get_config
from data import DataError
from utils import LaunchError, all_reduce_sum, get_world_size

EXIT_BAD_INPUT = 2
EXIT_PREEMPTED = 3
EXIT_INTERRUPTED = 130  # Ctrl-C outside a training loop: 128 + SIGINT, as a shell reports it
PRETRAINED_HELP = ('checkpoint to initialise from: SimMIM, BEiT, MAE, DeiT, timm (.pth or .safetensors, '
                   'or a Hugging Face model folder), or timm:<model_name>')


RESUME_HELP = ('checkpoint to resume from (or to evaluate with --eval); when given, it is used even if the '
               'output folder holds newer checkpoints (auto-resume is skipped)')


def add_run_flags(parser, data_help, resume_help):
    """The flags main_finetune.py and main_simmim.py share (the original's names), on `parser`."""
    parser.add_argument('--cfg', type=str, required=True, metavar='FILE', help='path to the config file')
    parser.add_argument('--opts', default=None, nargs='+', help='override config options: KEY VALUE pairs')
    parser.add_argument('--batch-size', type=int, help='batch size per process')
    parser.add_argument('--data-path', type=str, help=data_help)
    parser.add_argument('--resume', help=resume_help)
    parser.add_argument('--accumulation-steps', type=int, help='micro-batches per optimizer step (at least 1)')
    parser.add_argument('--use-checkpoint', action='store_true', help='activation checkpointing')
    parser.add_argument('--amp-opt-level', type=str, choices=['O0', 'O1', 'O2'],
                        help='O0: fp32; O1 / O2: native mixed precision on CUDA')
    parser.add_argument('--output', default='output', type=str, metavar='PATH',
                        help='root of the output folder <output>/<MODEL.NAME>/<TAG>')
    parser.add_argument('--tag', help='run tag')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='allow checkpoints that pickle Python objects (old releases): only for files you trust')
    # Legacy launcher flag: torch.distributed.launch used to pass it; the environment is what counts.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=None, help=argparse.SUPPRESS)
    return parser


def finetune_parser(pretrained_help=PRETRAINED_HELP, resume_help=RESUME_HELP, **kwargs):
    """main_finetune.py's flags, which the experiment scripts and submitit_finetune.py take too (with
    their own meaning of --pretrained or --resume: `pretrained_help`, `resume_help`); `kwargs` go to
    ArgumentParser."""
    parser = add_run_flags(argparse.ArgumentParser(**kwargs), 'dataset root with train/ and val/', resume_help)
    parser.add_argument('--pretrained', type=str, help=pretrained_help)
    parser.add_argument('--eval', action='store_true', help='only validate the --resume checkpoint')
    parser.add_argument('--throughput', action='store_true', help='only measure model throughput')
    return parser


def run_script(parser, main, argv=None):
    """Parse `argv`, resolve the config and return main(config, args, on_exit), where `on_exit` (an
    ExitStack) is closed however main ends. A user's error is one `error:` line and EXIT_BAD_INPUT;
    a diverged run (NonFiniteLossError) returns 1; Ctrl-C (where no StopRequest takes it) one line and EXIT_INTERRUPTED.
    The process group, if any, is left at the end."""
    return run_args(parser.parse_args(argv), main)


def run_args(args, main, keep_process_group=False, **main_kwargs):
    """run_script for parsed `args`; `main_kwargs` go to main (submitit_finetune.py: its StopRequest).
    `keep_process_group`: the caller still needs it (submitit_finetune.py: the ranks agree on a requeue)
    and leaves it itself."""
    try:
        with contextlib.ExitStack() as on_exit:
            return main(get_config(args), args, on_exit, **main_kwargs)
    except (ConfigError, DataError, CheckpointError, LaunchError, OSError) as e:
        print(f'error: {e}', file=sys.stderr)
        return EXIT_BAD_INPUT
    except FloatingPointError as e:  # training.NonFiniteLossError: the run diverged
        print(f'error: {e}', file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # an experiment script's message says what was kept
        print(f'interrupted{": " if str(e) else ""}{e}', file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if torch.distributed.is_initialized() and not keep_process_group:
            torch.distributed.destroy_process_group()


def seed_everything(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


class StopRequest:
    """While active, SIGTERM / SIGINT only set a flag, which the training loop asks after every step.
    With several processes asking is a collective (all ranks stop at the same step), so it reduces
    only every `check_every`-th call, and always in `any_rank()`."""

    def __init__(self, check_every=10, signals=(signal.SIGTERM, signal.SIGINT)):
        self.requested = False
        self.signal_name = ''
        self.received = set()  # every signal that arrived (submitit_finetune.py requeues on its own)
        self.signals = tuple(signals)
        self.check_every = check_every
        self._calls = 0
        self._previous = {}

    def __enter__(self):
        self._previous = {sig: signal.signal(sig, self._handler) for sig in self.signals}
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handler(self, signum, frame):
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        self.received.add(signum)

    def __call__(self):
        if get_world_size() == 1:
            return self.requested
        self._calls += 1
        return self._calls % self.check_every == 0 and self.any_rank()

    def any_rank(self):
        """Whether any rank got a signal (a collective: every rank must call it)."""
        if get_world_size() == 1:
            return self.requested
        # NCCL (the backend whenever CUDA is there) reduces CUDA tensors only
        flag = torch.tensor([float(self.requested)], device='cuda' if torch.cuda.is_available() else 'cpu')
        return bool(all_reduce_sum(flag).item() > 0)

    def reason(self):
        return self.signal_name or 'stop request'


def check_output_writable(path):
    """Raise OSError unless `path` exists as a writable folder or could be created as one."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise OSError(f"output folder '{path}' cannot be created: '{existing}' is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OSError(f"output folder '{path}' cannot be written: no write permission on '{existing}'")
