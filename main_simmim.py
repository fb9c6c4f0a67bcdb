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
import sys

import torch

from config import ConfigError, config_warnings
from data import build_pretrain_loader
from fast_step import TrainStep
from launch import StopRequest, add_run_flags, run_script, seed_everything
from logger import create_logger
from lr_scheduler import build_scheduler, scaled_lrs
from models import build_simmim
from optimizer import build_optimizer
from tracking import add_tracking_args, check_tracking
from training import TrainingRun, lock_run_folder, optimizer_steps_per_epoch
from utils import autocast_dtype, init_distributed_mode, keep_freed_cpu_memory


def get_parser():
    parser = add_run_flags(argparse.ArgumentParser('SimMIM pre-training', add_help=True),
                           'an ImageFolder of training images, or a dataset root with train/',
                           'checkpoint to resume from')
    return add_tracking_args(parser)


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
    if config.TRAIN.PATCH_SCHEDULER.NAME.lower() != 'none':  # pre-training sets no rho
        raise ConfigError(f"TRAIN.PATCH_SCHEDULER.NAME '{config.TRAIN.PATCH_SCHEDULER.NAME}': SimMIM pre-training "
                          "runs the encoder on every token, so the patch schedule must be 'none'")


def main(config, args, on_exit):
    """Pre-train as configured; returns the exit status. As main_finetune.main: SIGTERM / SIGINT end
    the run with a resumable checkpoint, and `on_exit` releases the run folder however it ends."""
    stop = on_exit.enter_context(StopRequest())
    rank, world_size, local_rank, device = init_distributed_mode()
    if device.type == 'cpu':
        keep_freed_cpu_memory()  # every step's gradients without page faults
    seed_everything(config.SEED + rank)
    amp_dtype = autocast_dtype(config.AMP_OPT_LEVEL, device, config.AMP_DTYPE)
    # Nothing is written until every input has been checked: a bad path leaves the folder as it was.
    logger = create_logger(None, rank, name=config.MODEL.NAME)
    for message in config_warnings(config, args):
        logger.warning(message)
    check_pretrain_config(config)
    check_tracking(config)  # --log_dir / --wandb: their packages, and LOG_DIR writable
    lock_run_folder(config, rank, logger, on_exit)  # the lock file only: removed if the run is refused
    dataset, data_loader = build_pretrain_loader(config)
    model = build_simmim(config).to(device)
    logger.info(f'SimMIM {config.MODEL.TYPE}: {sum(p.numel() for p in model.parameters()):,} parameters, '
                f'{len(dataset)} images, {model.encoder.patch_embed.num_patches} patches per image, '
                f'mask blocks of {config.DATA.MASK_PATCH_SIZE} px, mask ratio {config.DATA.MASK_RATIO}')

    steps_per_epoch = optimizer_steps_per_epoch(data_loader, config)
    optimizer = build_optimizer(config, model, world_size)  # all names are encoder.* / decoder.*: no layer decay
    lr_scheduler = build_scheduler(config, optimizer, steps_per_epoch, world_size)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    logger.info(f'base LR {scaled_lrs(config, world_size)[0]:.3g} at a total batch of '
                f'{config.DATA.BATCH_SIZE * world_size * max(1, config.TRAIN.ACCUMULATION_STEPS)} '
                f'({config.TRAIN.LR_SCHEDULER.NAME} schedule)')
    run_state = TrainingRun(config, model, optimizer, lr_scheduler, scaler, steps_per_epoch, world_size)
    run_state.resume(logger)

    has_unused = model.encoder.fc_norm is not None  # USE_MEAN_POOLING: no part in the reconstruction
    if config.TRAIN.COMPILE:
        model = torch.compile(model, dynamic=False)
    if world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == 'cuda' else None, find_unused_parameters=has_unused)
    run_state.open_folder(logger)
    on_exit.push(run_state.tracker)  # TensorBoard / W&B closed however main ends
    # criterion None: the model returns the reconstruction loss of (images, masks)
    train_step = TrainStep(model, None, optimizer, scaler, config.TRAIN.CLIP_GRAD, amp_dtype,
                           accumulation_steps=config.TRAIN.ACCUMULATION_STEPS)
    return run_state.train(train_step, data_loader, stop, what='pre-training')


def run(argv=None):
    return run_script(get_parser(), main, argv)


if __name__ == '__main__':
    sys.exit(run())
