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
pickled config needs --trust-checkpoint). --log_dir <dir> also writes TensorBoard events to
<dir>/<MODEL.NAME>/<TAG>/; --wandb <project> logs to Weights & Biases (tracking.py).
"""
import json
import math
import sys

import torch
import quiet_timm  # noqa: F401  (before timm, which warns at import)
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from checkpoint import CheckpointError, load_model_weights
from config import check_patch_schedule, config_json, config_warnings, with_values
from data import build_loader, build_val_loader, log_decode_failures
from engine import evaluate, throughput
from fast_step import TrainStep, check_cuda_graphs
from launch import StopRequest, finetune_parser, run_script, seed_everything
from logger import create_logger
from lr_scheduler import build_scheduler, scaled_lrs
from models import build_model
from optimizer import build_optimizer
from patch_scheduler import build_patch_scheduler
from pretrained import load_pretrained
from tracking import add_tracking_args, check_tracking
from training import TrainingRun, lock_run_folder, optimizer_steps_per_epoch
from utils import autocast_dtype, first_n, init_distributed_mode, keep_freed_cpu_memory, memory_mb, unwrap_model


def original_config_json(config, world_size):
    """config.json as the original wrote it: the config the run used, with TRAIN.BASE_LR, WARMUP_LR
    and MIN_LR after the linear scaling to the total batch (the original scaled them in the config).
    JSON, which YAML readers of the original's file (YAML text under that name) also read."""
    base_lr, warmup_lr, min_lr = scaled_lrs(config, world_size)
    used = with_values(config, {'TRAIN.BASE_LR': base_lr, 'TRAIN.WARMUP_LR': warmup_lr, 'TRAIN.MIN_LR': min_lr})
    return config_json(used)


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
                                  f'{first_n(missing, 5)} (no trained classifier for this dataset?), so the '
                                  'accuracy would be that of untrained weights; evaluate a fine-tuned checkpoint')
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


def main(config, args, on_exit, stop=None):
    """Train (or with --eval / --throughput, evaluate) as configured; returns the exit status.
    `on_exit` (an ExitStack) releases the run folder and the signal handlers however main ends."""
    # SIGTERM / SIGINT (and submitit's requeue signal, where it passes `stop`): a checkpoint, then exit 3
    stop = on_exit.enter_context(stop or StopRequest())
    rank, world_size, local_rank, device = init_distributed_mode()
    if device.type == 'cpu':
        keep_freed_cpu_memory()  # every step's gradients without page faults
    seed_everything(config.SEED + rank)
    amp_dtype = autocast_dtype(config.AMP_OPT_LEVEL, device, config.AMP_DTYPE)
    # Nothing is written until every input has been checked: a bad path leaves the folder as it was.
    logger = create_logger(None, rank, name=config.MODEL.NAME)
    for message in config_warnings(config, args):
        logger.warning(message)

    if config.EVAL_MODE or config.THROUGHPUT_MODE:
        dataset_val, loader_val = build_val_loader(config)  # the training set is not needed
        model = build_model(config, num_classes=len(dataset_val.classes)).to(device)
        return evaluate_only(config, model, loader_val, device, amp_dtype, logger, world_size, local_rank)

    check_tracking(config)  # --log_dir / --wandb: their packages, and LOG_DIR writable
    lock_run_folder(config, rank, logger, on_exit)  # the lock file only: removed if the run is refused
    dataset_train, dataset_val, loader_train, loader_val, mixup_fn = build_loader(config)
    num_classes = len(dataset_val.classes)
    config = with_values(config, {'MODEL.NUM_CLASSES': num_classes})  # saved as built, not the default
    model = build_model(config).to(device)
    logger.info(f'{config.MODEL.TYPE}: {sum(p.numel() for p in model.parameters()):,} parameters, '
                f'{num_classes} classes, {len(dataset_train)} training / {len(dataset_val)} validation images')

    steps_per_epoch = optimizer_steps_per_epoch(loader_train, config)
    optimizer = build_optimizer(config, model, world_size)
    lr_scheduler = build_scheduler(config, optimizer, steps_per_epoch, world_size)
    patch_scheduler = build_patch_scheduler(config, steps_per_epoch)
    check_patch_schedule(config, patch_scheduler)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    if config.TRAIN.CUDA_GRAPHS:
        check_cuda_graphs(config, world_size)
    if config.PRETRAINED:  # checked even when resuming (which then overwrites the weights, with a warning)
        load_pretrained(config.PRETRAINED, model, logger, trusted=config.TRUST_CHECKPOINT)
    run_state = TrainingRun(config, model, optimizer, lr_scheduler, scaler, steps_per_epoch, world_size,
                            classes=dataset_val.classes)
    run_state.resume(logger)

    bare = model
    if config.TRAIN.COMPILE:
        model = torch.compile(model, dynamic=False)
    if world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == 'cuda' else None)
    logger = run_state.open_folder(logger, {'config.json': original_config_json(config, world_size)})
    on_exit.push(run_state.tracker)  # TensorBoard / W&B closed however main ends
    val_log = run_state.open_log('val_log.json')

    if mixup_fn is not None:  # soft targets, label smoothing included
        criterion = SoftTargetCrossEntropy()
    elif config.MODEL.LABEL_SMOOTHING > 0:
        criterion = LabelSmoothingCrossEntropy(smoothing=config.MODEL.LABEL_SMOOTHING)
    else:
        criterion = torch.nn.CrossEntropyLoss()
    if config.TRAIN.CUDA_GRAPHS and device.type != 'cuda':
        logger.warning(f'TRAIN.CUDA_GRAPHS needs a CUDA device: on {device.type} every step runs eagerly')
    train_step = TrainStep(model, criterion, optimizer, scaler, config.TRAIN.CLIP_GRAD, amp_dtype,
                           cuda_graphs=config.TRAIN.CUDA_GRAPHS, accumulation_steps=config.TRAIN.ACCUMULATION_STEPS)

    def set_rho(step):
        """Before every optimizer step: the schedule's drop ratio, and the CUDA-graph key it gives."""
        drop_ratio = patch_scheduler.drop_ratio_at(step)
        bare.set_patch_drop_ratio(drop_ratio)
        return drop_ratio, bare.num_kept_tokens()

    def validate(epoch):
        drop_ratio = bare.patch_drop_ratio
        bare.set_patch_drop_ratio(0.0)  # validate with all patches
        stats = evaluate(model, loader_val, device, amp_dtype)
        bare.set_patch_drop_ratio(drop_ratio)
        run_state.max_accuracy = max(run_state.max_accuracy, stats['acc1'])
        for dataset in (dataset_train, dataset_val):
            log_decode_failures(dataset, logger)
        logger.info(f' * Acc@1 {stats["acc1"]:.3f} Acc@5 {stats["acc5"]:.3f}')
        logger.info(f'Accuracy of the network on the {stats["num_images"]} test images: {stats["acc1"]:.1f}%')
        logger.info(f'Max accuracy: {run_state.max_accuracy:.2f}%')
        if not math.isfinite(stats['loss']):  # finite weights whose outputs overflow; fp16 eval can do it too
            logger.warning(f"validation loss is {stats['loss']} after epoch {epoch}: the model's outputs overflow, "
                           'a sign that training diverges (the learning rate?)')
        if val_log is not None:
            record = {'epoch': epoch, 'loss': stats['loss'], 'acc1': stats['acc1'], 'acc5': stats['acc5'],
                      'time': stats['batch_time'], 'total_time': stats['time'], 'memory': memory_mb(device)}
            val_log.write(json.dumps(record) + '\n')
            val_log.flush()
            run_state.tracker.log_val(record)

    return run_state.train(train_step, loader_train, stop, mixup_fn, set_rho, validate)


def run(argv=None):
    return run_script(add_tracking_args(finetune_parser(prog='PSS fine-tuning')), main, argv)


if __name__ == '__main__':
    sys.exit(run())
