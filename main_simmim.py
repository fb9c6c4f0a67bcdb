"""SimMIM pre-training of the ViT that main_finetune.py fine-tunes with a patch sampling schedule.

    python -m torch.distributed.launch --nproc_per_node 8 main_simmim.py \\
        --cfg configs/simmim/vit-b.yaml --data-path <imagenet>/train --output <dir>
    torchrun --nproc_per_node 8 main_simmim.py --cfg ...                 # the same
    python main_simmim.py --cfg configs/simmim/demo.yaml                 # the digits: one process, CPU
    python main_finetune.py --cfg configs/demo/magnitude_cyclic.yaml \\
        --pretrained output/simmim_demo/default/checkpoint.pth           # then fine-tune from it

Each image is masked in random blocks (DATA.MASK_PATCH_SIZE, DATA.MASK_RATIO) and the model
predicts the masked pixels (models/simmim.py). Writes to <output>/<MODEL.NAME>/<TAG>/: config.yaml,
log_rank0.txt, train_log.json (one JSON line per optimizer step, main_finetune.py's fields),
checkpoint.pth (always the newest) and ckpt_epoch_<E>.pth every SAVE_FREQ epochs and at the last;
a checkpoint's `model` holds `encoder.*` and `decoder.*`, as SimMIM's. As main_finetune.py: a killed
run restarted with the same command continues from the newest readable checkpoint, SIGTERM / SIGINT
write a checkpoint and exit with status 3, bad input exits with status 2 and one `error:` line.
There is no validation pass (SimMIM has none).
"""
import argparse
import datetime
import os
import sys
import time

import torch

from config import ConfigError, check_patch_schedule
from data import DataError, build_pretrain_loader, set_train_epoch
from engine import train_one_epoch
from logger import create_logger
from lr_scheduler import build_scheduler, scaled_lrs
from main_finetune import (EXIT_PREEMPTED, StopRequest, check_output_writable, hold_run_folder, run_script,
                           seed_everything, select_resume_checkpoint, stop_reason, truncate_logs)
from models import build_simmim
from optimizer import build_optimizer
from patch_scheduler import build_patch_scheduler
from run_folder import remove_stale_tmp_files
from training import TrainingRun
from utils import autocast_dtype, barrier, init_distributed_mode, keep_freed_cpu_memory, unwrap_model


def get_parser():
    parser = argparse.ArgumentParser('SimMIM pre-training', add_help=True)
    parser.add_argument('--cfg', type=str, required=True, metavar='FILE', help='path to the config file')
    parser.add_argument('--opts', default=None, nargs='+', help='override config options: KEY VALUE pairs')
    parser.add_argument('--batch-size', type=int, help='batch size per process')
    parser.add_argument('--data-path', type=str,
                        help='an ImageFolder of training images, or a dataset root with train/')
    parser.add_argument('--resume', help='checkpoint to resume from')
    parser.add_argument('--accumulation-steps', type=int, help='micro-batches per optimizer step')
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


def check_pretrain_config(config):
    """What pre-training needs beyond config.validate_config: raise ConfigError naming the key."""
    data, patch_size = config.DATA, config.MODEL.VIT.PATCH_SIZE
    if data.MASK_PATCH_SIZE < 1 or data.IMG_SIZE % data.MASK_PATCH_SIZE:
        raise ConfigError(f'DATA.MASK_PATCH_SIZE {data.MASK_PATCH_SIZE} must divide DATA.IMG_SIZE {data.IMG_SIZE}')
    if data.MASK_PATCH_SIZE % patch_size:
        raise ConfigError(f'DATA.MASK_PATCH_SIZE {data.MASK_PATCH_SIZE} must be a multiple of '
                          f'MODEL.VIT.PATCH_SIZE {patch_size}')
    if not 0.0 < data.MASK_RATIO < 1.0:
        raise ConfigError(f'DATA.MASK_RATIO = {data.MASK_RATIO} must lie strictly between 0 and 1')
    if config.TRAIN.PATCH_SCHEDULER.NAME.lower() != 'none':
        raise ConfigError(f"TRAIN.PATCH_SCHEDULER.NAME '{config.TRAIN.PATCH_SCHEDULER.NAME}': SimMIM pre-training "
                          "runs the encoder on every token, so the patch schedule must be 'none'")


def main(config, stop=None, on_exit=None, warnings=()):
    """Pre-train as configured; returns the exit status. `stop`, `on_exit` and `warnings` as for
    main_finetune.main: SIGTERM / SIGINT end the run with a resumable checkpoint, the run folder's
    lock is released however the run ends, the config's warnings are logged."""
    rank, world_size, local_rank, device = init_distributed_mode()
    if device.type == 'cpu':
        keep_freed_cpu_memory()  # every step's gradients without page faults
    seed_everything(config.SEED + rank)
    amp_dtype = autocast_dtype(config.AMP_OPT_LEVEL, device, config.AMP_DTYPE)
    # Nothing is written until every input has been checked: a bad path leaves the folder as it was.
    logger = create_logger(None, rank, name=config.MODEL.NAME)
    for message in warnings:
        logger.warning(message)
    check_pretrain_config(config)
    check_output_writable(config.OUTPUT)
    lock = hold_run_folder(config.OUTPUT, rank, logger)  # lock file only: removed if the run is refused
    if lock is not None and on_exit is not None:
        on_exit.callback(lock.release)
    dataset, data_loader = build_pretrain_loader(config)
    model = build_simmim(config).to(device)
    logger.info(f'SimMIM {config.MODEL.TYPE}: {sum(p.numel() for p in model.parameters()):,} parameters, '
                f'{len(dataset)} images, {model.encoder.patch_embed.num_patches} patches per image, '
                f'mask blocks of {config.DATA.MASK_PATCH_SIZE} px, mask ratio {config.DATA.MASK_RATIO}')

    accum = max(1, config.TRAIN.ACCUMULATION_STEPS)
    steps_per_epoch = len(data_loader) // accum
    if steps_per_epoch == 0:
        raise DataError(f'{len(data_loader)} batches per epoch cannot make one optimizer step of '
                        f'{accum} accumulated batches')
    optimizer = build_optimizer(config, model, world_size)  # all names are encoder.* / decoder.*: no layer decay
    lr_scheduler = build_scheduler(config, optimizer, steps_per_epoch, world_size)
    patch_scheduler = build_patch_scheduler(config, steps_per_epoch)  # 'none': the shared loop's rho stays 1
    check_patch_schedule(config, patch_scheduler)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    logger.info(f'base LR {scaled_lrs(config, world_size)[0]:.3g} at a total batch of '
                f'{config.DATA.BATCH_SIZE * world_size * accum} ({config.TRAIN.LR_SCHEDULER.NAME} schedule)')

    checkpoint_path, state = select_resume_checkpoint(config, model, logger)
    run = TrainingRun(optimizer, lr_scheduler, patch_scheduler, scaler, steps_per_epoch)
    start_epoch, start_step = run.resume(state, checkpoint_path, model, config, world_size, rank, logger)

    has_unused = model.encoder.fc_norm is not None  # USE_MEAN_POOLING: no part in the reconstruction
    if config.TRAIN.COMPILE:
        model = torch.compile(model, dynamic=False)
    if world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == 'cuda' else None, find_unused_parameters=has_unused)
    bare = unwrap_model(model)

    # ---- from here on the output folder is written ---------------------------------------------
    if rank == 0:
        os.makedirs(config.OUTPUT, exist_ok=True)
    barrier()
    logger = create_logger(config.OUTPUT, rank, name=config.MODEL.NAME)
    if rank == 0:
        with open(os.path.join(config.OUTPUT, 'config.yaml'), 'w') as f:
            f.write(config.dump())
        remove_stale_tmp_files(config.OUTPUT, logger)  # safe: the lock keeps other runs out
        truncate_logs(config.OUTPUT, run.resumed_global_step, start_epoch)
    logger.info(f'output folder {config.OUTPUT}; resuming at epoch {start_epoch}, step {start_step}'
                if state is not None else f'output folder {config.OUTPUT}')
    for level, note in run.notes:
        logger.log(level, note)
    train_log = open(os.path.join(config.OUTPUT, 'train_log.json'), 'a') if rank == 0 else None

    def write_checkpoint(epoch, step_in_epoch, epoch_file=False):
        run.write_checkpoint(bare, config, world_size, epoch, step_in_epoch, epoch_file)

    stop = stop or StopRequest()  # not entered: no signal handlers, never requested
    every = config.TRAIN.CHECKPOINT_EVERY_STEPS

    def on_step_end(step):
        if every and step % every == 0 and step < steps_per_epoch:
            write_checkpoint(epoch, step)

    logger.info('start pre-training')
    start_time = time.time()
    for epoch in range(start_epoch, config.TRAIN.EPOCHS):
        # the epoch's order is fixed by (SEED, epoch); a mid-epoch resume skips the batches already seen
        set_train_epoch(data_loader, epoch, start_batch=start_step * accum)
        # criterion None: the model returns the reconstruction loss of (images, masks)
        done = train_one_epoch(config, model, None, data_loader, optimizer, lr_scheduler, patch_scheduler,
                               scaler, None, epoch, device, logger, train_log, amp_dtype,
                               start_step=start_step, should_stop=stop, on_step_end=on_step_end,
                               epoch_loss=run.epoch_loss)
        start_step = 0
        if done < steps_per_epoch:  # stopped by a signal
            write_checkpoint(epoch, done)
            logger.warning(f'{stop_reason(stop)} received: checkpoint written at epoch {epoch}, '
                           f'step {done}. Run the same command again to resume.')
            return EXIT_PREEMPTED
        last = epoch == config.TRAIN.EPOCHS - 1
        run.new_epoch()  # the next epoch's running loss starts afresh (also in the checkpoint below)
        write_checkpoint(epoch, 0, epoch_file=epoch % config.SAVE_FREQ == 0 or last)
        if stop.any_rank():
            logger.warning(f'{stop_reason(stop)} received: checkpoint written after epoch {epoch}. '
                           'Run the same command again to resume.')
            return EXIT_PREEMPTED

    logger.info(f'Pre-training time {datetime.timedelta(seconds=int(time.time() - start_time))}')
    return 0


def run(argv=None):
    return run_script(get_parser(), main, argv)


if __name__ == '__main__':
    status = run()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    sys.exit(status)
