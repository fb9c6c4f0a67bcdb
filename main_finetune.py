"""Fine-tune a ViT with a patch sampling schedule (PSS).

    python -m torch.distributed.launch --nproc_per_node 4 main_finetune.py \\
        --cfg configs/vit-b/magnitude_cyclic_80_0.yaml --data-path <imagenet> \\
        --pretrained <simmim checkpoint> --output <dir>
    torchrun --nproc_per_node 4 main_finetune.py --cfg ...       # the same
    python main_finetune.py --cfg configs/demo/magnitude_cyclic.yaml   # one process, CPU or GPU
    python main_finetune.py --cfg ... --resume <ckpt> --eval         # validate a checkpoint

Writes to <output>/<MODEL.NAME>/<TAG>/: config.yaml, config.json (as the original wrote it),
log_rank0.txt, train_log.json (one JSON line per optimizer step), val_log.json (one per epoch),
checkpoint.pth (always the newest) and ckpt_epoch_<E>.pth every SAVE_FREQ epochs. A killed run
restarted with the same command continues from the newest readable checkpoint (TRAIN.AUTO_RESUME;
an explicit --resume wins over it), if that checkpoint is of the same run (run_folder.py). SIGTERM /
SIGINT finish the current step, write a checkpoint and exit with status 3. While it trains, a run
holds <run folder>/run.lock. --resume also continues from a checkpoint of the original code (its
pickled config needs --trust-checkpoint).
"""
import argparse
import contextlib
import datetime
import json
import os
import random
import signal
import sys
import time

import numpy as np
import torch
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from checkpoint import (CheckpointError, check_state_dict, find_checkpoints, load_checkpoint_file,
                        load_model_weights, load_pretrained)
from config import ConfigError, check_patch_schedule, config_json, config_warnings, get_config, with_values
from data import DataError, build_loader, build_val_loader, log_decode_failures, set_train_epoch
from engine import NonFiniteLossError, evaluate, throughput, train_one_epoch
from fast_step import TrainStep, check_cuda_graphs
from logger import create_logger
from lr_scheduler import build_scheduler, scaled_lrs
from models import build_model
from optimizer import build_optimizer
from patch_scheduler import build_patch_scheduler
from run_folder import RunFolderError, RunLock, remove_stale_tmp_files
from training import TrainingRun
from utils import (LaunchError, all_gather_object, all_reduce_sum, autocast_dtype, barrier, get_world_size,
                   init_distributed_mode, keep_freed_cpu_memory, memory_mb, unwrap_model)

EXIT_BAD_INPUT = 2
EXIT_PREEMPTED = 3


def get_parser():
    parser = argparse.ArgumentParser('PSS fine-tuning', add_help=True)
    parser.add_argument('--cfg', type=str, required=True, metavar='FILE', help='path to the config file')
    parser.add_argument('--opts', default=None, nargs='+', help='override config options: KEY VALUE pairs')
    parser.add_argument('--batch-size', type=int, help='batch size per process')
    parser.add_argument('--data-path', type=str, help='dataset root with train/ and val/')
    parser.add_argument('--pretrained', type=str, help='checkpoint to initialise from: SimMIM, BEiT, MAE, DeiT, '
                        'timm (.pth or .safetensors), or timm:<model_name>')
    parser.add_argument('--resume', help='checkpoint to resume from (or to evaluate with --eval); when given, it '
                        'is used even if the output folder holds newer checkpoints (auto-resume is skipped)')
    parser.add_argument('--accumulation-steps', type=int, help='micro-batches per optimizer step (at least 1)')
    parser.add_argument('--use-checkpoint', action='store_true', help='activation checkpointing')
    parser.add_argument('--amp-opt-level', type=str, choices=['O0', 'O1', 'O2'],
                        help='O0: fp32; O1 / O2: native mixed precision on CUDA')
    parser.add_argument('--output', default='output', type=str, metavar='PATH',
                        help='root of the output folder <output>/<MODEL.NAME>/<TAG>')
    parser.add_argument('--tag', help='run tag')
    parser.add_argument('--eval', action='store_true', help='only validate the --resume checkpoint')
    parser.add_argument('--throughput', action='store_true', help='only measure model throughput')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='allow checkpoints that pickle Python objects (old releases): only for files you trust')
    # Legacy launcher flag: torch.distributed.launch used to pass it; the environment is what counts.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=None, help=argparse.SUPPRESS)
    return parser


def seed_everything(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


class StopRequest:
    """While active, SIGTERM / SIGINT only set a flag; the training loop asks after every step, and
    all ranks stop together if any of them got the signal.

        with StopRequest() as stop:
            main(config, stop)

    In one process asking reads the flag: no device work, no host sync. With several processes
    the ranks must agree, which takes an all-reduce and a host sync; that is done on every
    `check_every`-th call only (every rank makes the same calls, so all of them reduce at the same
    step and stop at the same step), and always for `stop.any_rank()`.
    """

    def __init__(self, check_every=10, signals=(signal.SIGTERM, signal.SIGINT)):
        self.requested = False
        self.signal_name = ''
        self.received = set()  # every signal that arrived (submitit_finetune.py requeues on its own)
        self.check_every = check_every
        self.signals = tuple(signals)
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


def stop_reason(stop):
    return getattr(stop, 'signal_name', '') or 'stop request'


def truncate_logs(output_dir, global_step, epoch):
    """Drop log lines written after the checkpoint being resumed, so each appears exactly once."""
    for name, keep in (('train_log.json', lambda r: r['iteration'] < global_step),
                       ('val_log.json', lambda r: r['epoch'] < epoch)):
        path = os.path.join(output_dir, name)
        if not os.path.exists(path):
            continue
        with open(path) as f:
            lines = [line for line in f if line.strip()]
        kept = []
        for line in lines:
            try:
                if keep(json.loads(line)):
                    kept.append(line)
            except json.JSONDecodeError:
                pass  # a line cut short by the crash
        tmp = path + '.tmp'
        with open(tmp, 'w') as f:
            f.writelines(kept)
        os.replace(tmp, path)


def check_output_writable(path):
    """Raise OSError unless `path` exists as a writable folder or could be created as one."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise OSError(f"output folder '{path}' cannot be created: '{existing}' is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OSError(f"output folder '{path}' cannot be written: no write permission on '{existing}'")


def original_config_json(config, world_size):
    """config.json as the original wrote it: the config the run used, with TRAIN.BASE_LR, WARMUP_LR
    and MIN_LR after the linear scaling to the total batch (the original scaled them in the config).
    JSON, which YAML readers of the original's file (YAML text under that name) also read."""
    base_lr, warmup_lr, min_lr = scaled_lrs(config, world_size)
    used = with_values(config, {'TRAIN.BASE_LR': base_lr, 'TRAIN.WARMUP_LR': warmup_lr, 'TRAIN.MIN_LR': min_lr})
    return config_json(used)


def training_state(path, state, model):
    """Check that `state` (read from `path`) is a training checkpoint for `model`."""
    if not isinstance(state, dict) or 'model' not in state:
        raise CheckpointError(f"checkpoint '{path}' holds no 'model' state dict: not a training checkpoint")
    if 'optimizer' in state and (isinstance(state.get('epoch'), bool) or not isinstance(state.get('epoch'), int)):
        raise CheckpointError(f"checkpoint '{path}' holds an optimizer state but no integer 'epoch'")
    check_state_dict(model, state['model'], path)
    return state


def select_resume_checkpoint(config, model, logger):
    """The checkpoint to resume from: --resume when given (an explicit choice wins; a file that
    cannot be read or does not fit the model is an error), else the newest readable one in the output
    folder (auto-resume, so that re-running a preempted command continues it).
    Returns (path, state) or (None, None)."""
    trusted = config.TRUST_CHECKPOINT
    if config.MODEL.RESUME:
        path = config.MODEL.RESUME
        own = [p for p in find_checkpoints(config.OUTPUT) if os.path.abspath(p) != os.path.abspath(path)]
        if config.TRAIN.AUTO_RESUME and own:
            logger.warning(f'--resume {path} is used, not the checkpoints in the output folder ({own[0]} ...): '
                           'an explicit --resume wins over auto-resume')
        return path, training_state(path, load_checkpoint_file(path, trusted), model)
    if config.TRAIN.AUTO_RESUME:
        for path in find_checkpoints(config.OUTPUT):
            try:
                state = load_checkpoint_file(path, trusted=trusted)
            except CheckpointError as e:
                logger.warning(f'auto-resume: {e}; trying the previous checkpoint')
                continue
            return path, training_state(path, state, model)
    return None, None


def hold_run_folder(folder, rank, logger):
    """Rank 0 locks the run folder; every rank raises RunFolderError if that failed. Returns the lock
    (None on other ranks)."""
    lock, error = (RunLock(folder, logger), None) if rank == 0 else (None, None)
    if lock is not None:
        try:
            lock.acquire()
        except RunFolderError as e:
            error = str(e)
    error = all_gather_object(error)[0]
    if error:
        raise RunFolderError(error)
    return lock


def evaluate_only(config, model, loader_val, device, amp_dtype, logger, world_size, local_rank):
    """--eval: validate the --resume checkpoint at rho = 1 and print the original's lines;
    --throughput: model-only images/s. Nothing is written."""
    if config.MODEL.RESUME:  # a trained model: all its weights must fit
        load_model_weights(config.MODEL.RESUME, model, trusted=config.TRUST_CHECKPOINT)
        logger.info(f'loaded {config.MODEL.RESUME}')
    elif config.PRETRAINED:
        missing, _ = load_pretrained(config.PRETRAINED, model, logger, trusted=config.TRUST_CHECKPOINT)
        if config.EVAL_MODE and missing:
            raise CheckpointError(f"--eval --pretrained '{config.PRETRAINED}': the checkpoint lacks "
                                  f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} (no trained "
                                  'classifier for this dataset?), so the accuracy would be that of untrained '
                                  'weights; evaluate a fine-tuned checkpoint')
    elif config.EVAL_MODE:
        raise CheckpointError('--eval needs the checkpoint to evaluate: pass --resume <checkpoint>')
    if world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == 'cuda' else None)
    if config.THROUGHPUT_MODE:
        images_per_s = throughput(model, loader_val, device, amp_dtype)
        logger.info(f'batch_size {config.DATA.BATCH_SIZE} throughput {images_per_s:.1f} images/s')
        return 0
    unwrap_model(model).set_patch_drop_ratio(0.0)
    stats = evaluate(model, loader_val, device, amp_dtype, logger, config.PRINT_FREQ)
    logger.info(f' * Acc@1 {stats["acc1"]:.3f} Acc@5 {stats["acc5"]:.3f}')
    logger.info(f'Accuracy of the network on the {stats["num_images"]} test images: {stats["acc1"]:.1f}%')
    logger.info(f'Loss of the network on the {stats["num_images"]} test images: {stats["loss"]:.8f}')
    return 0


def main(config, stop=None, on_exit=None, warnings=()):
    """Train (or with --eval / --throughput, evaluate) as configured; returns the exit status.

    `stop` (a StopRequest) lets SIGTERM / SIGINT end the run with a resumable checkpoint; `on_exit`
    (a contextlib.ExitStack the caller closes however main ends) releases the run folder's lock;
    `warnings` (config_warnings) are logged.
    """
    rank, world_size, local_rank, device = init_distributed_mode()
    if device.type == 'cpu':
        keep_freed_cpu_memory()  # every step's gradients without page faults
    seed_everything(config.SEED + rank)
    amp_dtype = autocast_dtype(config.AMP_OPT_LEVEL, device, config.AMP_DTYPE)
    # Nothing is written until every input has been checked: a bad path leaves the folder as it was.
    logger = create_logger(None, rank, name=config.MODEL.NAME)
    for message in warnings:
        logger.warning(message)

    if config.EVAL_MODE or config.THROUGHPUT_MODE:
        dataset_val, loader_val = build_val_loader(config)  # the training set is not needed
        model = build_model(config, num_classes=len(dataset_val.classes)).to(device)
        return evaluate_only(config, model, loader_val, device, amp_dtype, logger, world_size, local_rank)

    check_output_writable(config.OUTPUT)
    lock = hold_run_folder(config.OUTPUT, rank, logger)  # lock file only: removed if the run is refused
    if lock is not None and on_exit is not None:
        on_exit.callback(lock.release)
    dataset_train, dataset_val, loader_train, loader_val, mixup_fn = build_loader(config)
    num_classes = len(dataset_val.classes)
    config = with_values(config, {'MODEL.NUM_CLASSES': num_classes})  # saved as built, not the default
    model = build_model(config).to(device)
    logger.info(f'{config.MODEL.TYPE}: {sum(p.numel() for p in model.parameters()):,} parameters, '
                f'{num_classes} classes, {len(dataset_train)} training / {len(dataset_val)} validation images')

    accum = max(1, config.TRAIN.ACCUMULATION_STEPS)
    steps_per_epoch = len(loader_train) // accum
    if steps_per_epoch == 0:
        raise DataError(f'{len(loader_train)} batches per epoch cannot make one optimizer step of '
                        f'{accum} accumulated batches')
    optimizer = build_optimizer(config, model, world_size)
    lr_scheduler = build_scheduler(config, optimizer, steps_per_epoch, world_size)
    patch_scheduler = build_patch_scheduler(config, steps_per_epoch)
    check_patch_schedule(config, patch_scheduler)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    if config.TRAIN.CUDA_GRAPHS:
        check_cuda_graphs(config, world_size)
    if config.PRETRAINED:  # checked even when resuming (which then overwrites the weights)
        load_pretrained(config.PRETRAINED, model, logger, trusted=config.TRUST_CHECKPOINT)
    checkpoint_path, state = select_resume_checkpoint(config, model, logger)
    run = TrainingRun(optimizer, lr_scheduler, patch_scheduler, scaler, steps_per_epoch)
    start_epoch, start_step = run.resume(state, checkpoint_path, model, config, world_size, rank, logger)

    if config.TRAIN.COMPILE:
        model = torch.compile(model, dynamic=False)
    if world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == 'cuda' else None)
    bare = unwrap_model(model)

    # ---- from here on the output folder is written ---------------------------------------------
    if rank == 0:
        os.makedirs(config.OUTPUT, exist_ok=True)
    barrier()
    logger = create_logger(config.OUTPUT, rank, name=config.MODEL.NAME)
    if rank == 0:
        with open(os.path.join(config.OUTPUT, 'config.yaml'), 'w') as f:
            f.write(config.dump())
        with open(os.path.join(config.OUTPUT, 'config.json'), 'w') as f:
            f.write(original_config_json(config, world_size))
        remove_stale_tmp_files(config.OUTPUT, logger)  # safe: the lock keeps other runs out
        truncate_logs(config.OUTPUT, run.resumed_global_step, start_epoch)
    logger.info(f'output folder {config.OUTPUT}; resuming at epoch {start_epoch}, step {start_step}'
                if state is not None else f'output folder {config.OUTPUT}')
    for level, note in run.notes:
        logger.log(level, note)
    train_log = open(os.path.join(config.OUTPUT, 'train_log.json'), 'a') if rank == 0 else None
    val_log = open(os.path.join(config.OUTPUT, 'val_log.json'), 'a') if rank == 0 else None

    if mixup_fn is not None:  # soft targets, label smoothing included
        criterion = SoftTargetCrossEntropy()
    elif config.MODEL.LABEL_SMOOTHING > 0:
        criterion = LabelSmoothingCrossEntropy(smoothing=config.MODEL.LABEL_SMOOTHING)
    else:
        criterion = torch.nn.CrossEntropyLoss()
    fast_step = None
    if config.TRAIN.CUDA_GRAPHS:
        if device.type != 'cuda':
            logger.warning(f'TRAIN.CUDA_GRAPHS needs a CUDA device: on {device.type} every step runs eagerly')
        fast_step = TrainStep(model, criterion, optimizer, scaler, config.TRAIN.CLIP_GRAD, amp_dtype,
                              cuda_graphs=device.type == 'cuda')

    def write_checkpoint(epoch, step_in_epoch, epoch_file=False):
        run.write_checkpoint(bare, config, world_size, epoch, step_in_epoch, epoch_file)

    stop = stop or StopRequest()  # not entered: no signal handlers, never requested
    every = config.TRAIN.CHECKPOINT_EVERY_STEPS

    def on_step_end(step):
        if every and step % every == 0 and step < steps_per_epoch:
            write_checkpoint(epoch, step)

    logger.info('start training')
    start_time = time.time()
    for epoch in range(start_epoch, config.TRAIN.EPOCHS):
        # the epoch's order is fixed by (SEED, epoch); a mid-epoch resume skips the batches already seen
        set_train_epoch(loader_train, epoch, start_batch=start_step * accum)
        trained = start_step < steps_per_epoch  # else it was trained before the last stop, not validated
        done = train_one_epoch(config, model, criterion, loader_train, optimizer, lr_scheduler, patch_scheduler,
                               scaler, mixup_fn, epoch, device, logger, train_log, amp_dtype,
                               start_step=start_step, should_stop=stop, on_step_end=on_step_end,
                               epoch_loss=run.epoch_loss, fast_step=fast_step) if trained else steps_per_epoch
        start_step = 0
        if done < steps_per_epoch:  # stopped by a signal
            write_checkpoint(epoch, done)
            logger.warning(f'{stop_reason(stop)} received: checkpoint written at epoch {epoch}, '
                           f'step {done}. Run the same command again to resume.')
            return EXIT_PREEMPTED
        if trained:  # step_in_epoch = steps_per_epoch: a validation that fails loses no training
            write_checkpoint(epoch, steps_per_epoch)
        else:
            logger.info(f'epoch {epoch} was trained before the last stop: validating it')

        drop_ratio = bare.patch_drop_ratio
        bare.set_patch_drop_ratio(0.0)  # validate with all patches
        stats = evaluate(model, loader_val, device, amp_dtype)
        bare.set_patch_drop_ratio(drop_ratio)
        run.max_accuracy = max(run.max_accuracy, stats['acc1'])
        for dataset in (dataset_train, dataset_val):
            log_decode_failures(dataset, logger)
        logger.info(f' * Acc@1 {stats["acc1"]:.3f} Acc@5 {stats["acc5"]:.3f}')
        logger.info(f'Accuracy of the network on the {stats["num_images"]} test images: {stats["acc1"]:.1f}%')
        logger.info(f'Max accuracy: {run.max_accuracy:.2f}%')
        if val_log is not None:
            val_log.write(json.dumps({'epoch': epoch, 'loss': stats['loss'], 'acc1': stats['acc1'],
                                      'acc5': stats['acc5'], 'time': stats['batch_time'],
                                      'total_time': stats['time'], 'memory': memory_mb(device)}) + '\n')
            val_log.flush()
        last = epoch == config.TRAIN.EPOCHS - 1
        run.new_epoch()  # the next epoch's running loss starts afresh (also in the checkpoint below)
        write_checkpoint(epoch, 0, epoch_file=epoch % config.SAVE_FREQ == 0 or last)
        if stop.any_rank():
            logger.warning(f'{stop_reason(stop)} received: checkpoint written after epoch {epoch}. '
                           'Run the same command again to resume.')
            return EXIT_PREEMPTED

    logger.info(f'Training time {datetime.timedelta(seconds=int(time.time() - start_time))}')
    return 0


def run(argv=None):
    return run_script(get_parser(), main, argv)


def run_script(parser, main_fn, argv=None):
    """Parse `argv` with `parser`, then run_args (main_simmim.py shares it)."""
    return run_args(parser.parse_args(argv), main_fn)


def run_args(args, main_fn, stop=None):
    """main_fn(config, stop, on_exit, warnings) for parsed `args`, under `stop` (default: a
    StopRequest for SIGTERM / SIGINT); bad input is one `error:` line and EXIT_BAD_INPUT."""
    try:
        config = get_config(args)
        with stop or StopRequest() as stop, contextlib.ExitStack() as on_exit:
            return main_fn(config, stop, on_exit, config_warnings(config, args))
    except (ConfigError, DataError, CheckpointError, LaunchError, OSError) as e:
        print(f'error: {e}', file=sys.stderr)
        return EXIT_BAD_INPUT
    except NonFiniteLossError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    status = run()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    sys.exit(status)
