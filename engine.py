"""The training loop and the one evaluation function, shared by main_finetune.py, main_simmim.py
(the loop only), sweep_drop.py and image_patches.py."""
import datetime
import json
import math
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from optimizer import clip_and_step
from utils import all_reduce_sum, memory_mb, synchronize, unwrap_model


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message says where."""


class AverageMeter:
    def __init__(self):
        self.val = self.sum = self.count = 0.0

    @property
    def avg(self):
        return self.sum / max(self.count, 1)

    def update(self, val, n=1):
        self.val = val
        self.sum += val * n
        self.count += n


def train_one_epoch(config, model, criterion, data_loader, optimizer, lr_scheduler, patch_scheduler,
                    scaler, mixup_fn, epoch, device, logger, train_log=None, autocast_dtype=None,
                    start_step=0, should_stop=None, on_step_end=None, epoch_loss=None, fast_step=None):
    """One epoch of optimizer steps; returns the number of steps done (less than a full epoch only
    when `should_stop()` asked to stop early).

    Every optimizer step takes ACCUMULATION_STEPS micro-batches, all at the drop ratio the patch
    scheduler gives before the step; gradients are clipped once, then the LR and patch schedulers
    advance once. `data_loader` yields the batches from step `start_step` on (mid-epoch resume);
    `train_log` (rank 0) gets one JSON line per step with the original's fields: `loss` is the mean
    of this epoch's step losses so far (the original's running mean), `step_loss` the step's own.
    `epoch_loss` (an AverageMeter) holds that mean's sum and count; pass the one restored from a
    mid-epoch checkpoint to continue it. With `criterion` None the loss is `model(samples, targets)`
    (SimMIM pre-training: images and masks).

    `fast_step` (a fast_step.TrainStep, one micro-batch per step) runs the step instead of the
    loop's own code, with CUDA graphs where it was built with them. The loss and the gradient norm
    stay on the device until the one host sync per step that times it.
    """
    model.train()
    bare = unwrap_model(model)
    accum = max(1, config.TRAIN.ACCUMULATION_STEPS)
    steps_per_epoch = patch_scheduler.iterations_per_epoch  # optimizer steps per full epoch
    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else nullcontext())
    loss_meter = epoch_loss if epoch_loss is not None else AverageMeter()
    norm_meter, time_meter, data_meter = AverageMeter(), AverageMeter(), AverageMeter()
    params = [p for p in model.parameters() if p.requires_grad]

    step = start_step
    micro = 0
    step_loss = 0.0
    step_start = time.time()
    data_time = 0.0
    end = time.time()
    for samples, targets in data_loader:
        if step >= steps_per_epoch:
            break  # micro-batches left over when the epoch is not a multiple of the accumulation
        samples = samples.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if mixup_fn is not None:
            samples, targets = mixup_fn(samples, targets)
        synchronize(device)
        data_time += time.time() - end
        if micro == 0:
            drop_ratio = patch_scheduler.get_patch_drop_ratio()
            bare.set_patch_drop_ratio(drop_ratio)

        last_micro = micro == accum - 1
        if fast_step is not None:
            lr = max(group['lr'] for group in optimizer.param_groups)  # the LR of this step
            stats = fast_step(samples, targets, key=bare.num_kept_tokens())  # [loss, grad norm]
        else:
            # DDP: all-reduce gradients only on the last micro-batch of the step
            sync_context = model.no_sync() if (not last_micro and hasattr(model, 'no_sync')) else nullcontext()
            with sync_context:
                with autocast:
                    # criterion None: the model returns its own loss (SimMIM: targets are the masks)
                    loss = criterion(model(samples), targets) if criterion is not None else model(samples, targets)
                scaler.scale(loss / accum).backward()
            step_loss = step_loss + loss.detach().double() / accum  # float64 on the device: no sync
        micro += 1

        if last_micro:
            if fast_step is None:
                max_norm = config.TRAIN.CLIP_GRAD if config.TRAIN.CLIP_GRAD > 0 else float('inf')
                lr = max(group['lr'] for group in optimizer.param_groups)  # the LR of this step
                grad_norm = clip_and_step(optimizer, scaler, params, max_norm)
                # the next backward allocates them afresh (no zero fill, no accumulation into zeros);
                # on CPU utils.keep_freed_cpu_memory keeps that from faulting in fresh pages
                optimizer.zero_grad(set_to_none=True)
                stats = torch.stack([step_loss, grad_norm.double()])
            global_step = epoch * steps_per_epoch + step
            lr_scheduler.step_update(global_step + 1)
            patch_scheduler.step()
            synchronize(device)  # honest per-step time on GPU
            step_loss, grad_norm = stats.tolist()  # the step's one read from the device
            if not math.isfinite(step_loss):  # the run stops here: no checkpoint holds this step
                raise NonFiniteLossError(
                    f'loss is {step_loss} at epoch {epoch}, iteration {step} of {steps_per_epoch} '
                    f'(global {global_step}), rho {1 - drop_ratio:.2f}; '
                    f'the last good checkpoint is left untouched')

            now = time.time()
            step_time = now - step_start
            loss_meter.update(step_loss)
            norm_meter.update(grad_norm)
            time_meter.update(step_time)
            data_meter.update(data_time)
            if train_log is not None:
                train_log.write(json.dumps({
                    'epoch': epoch, 'iteration': global_step, 'loss': loss_meter.avg, 'step_loss': step_loss, 'lr': lr,
                    'time': step_time, 'cpu_time': data_time, 'gpu_time': step_time - data_time,
                    'memory': memory_mb(device), 'patch_drop_ratio': drop_ratio}) + '\n')
                train_log.flush()
            if step % config.PRINT_FREQ == 0 or step == steps_per_epoch - 1:
                eta = datetime.timedelta(seconds=int(time_meter.avg * (steps_per_epoch - step - 1)))
                logger.info(
                    f'Train: [{epoch}/{config.TRAIN.EPOCHS}][{step}/{steps_per_epoch}]\t'
                    f'eta {eta} lr {lr:.6f}\t'
                    f'time {time_meter.val:.4f} ({time_meter.avg:.4f})\t'
                    f'data {data_meter.val:.4f} ({data_meter.avg:.4f})\t'
                    f'loss {loss_meter.val:.4f} ({loss_meter.avg:.4f})\t'
                    f'grad_norm {norm_meter.val:.4f} ({norm_meter.avg:.4f})\t'
                    f'mem {memory_mb(device):.0f}MB\trho {1 - drop_ratio:.2f}')
            step += 1
            micro = 0
            step_loss = 0.0
            data_time = 0.0
            step_start = time.time()
            if on_step_end is not None:
                on_step_end(step)
            if should_stop is not None and should_stop():
                break
        end = time.time()
    logger.info(f'EPOCH {epoch} training takes {datetime.timedelta(seconds=int(time_meter.sum))} '
                f'(mean loss {loss_meter.avg:.4f})')
    return step


@torch.no_grad()
def evaluate(model, data_loader, device, autocast_dtype=None, logger=None, print_freq=0):
    """Top-1 / top-5 accuracy (%) and mean cross-entropy over the whole validation set.

    Exact whatever the number of processes: each image is counted once (the loader's sampler
    shards without padding) and per-batch sums are combined in batch order, so 1 and N processes
    give the same numbers. The drop ratio is whatever the model is set to.

    Returns a dict: acc1, acc5, loss, num_images, time (whole pass, data loading included),
    batch_time (mean time per batch of this process, data loading included: the original's `time`),
    model_time (forward passes only, synchronised).
    """
    model.eval()
    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else nullcontext())
    sampler = data_loader.sampler
    batch_ids = list(sampler.batch_ids()) if hasattr(sampler, 'batch_ids') else None
    num_batches = sampler.num_batches if hasattr(sampler, 'num_batches') else len(data_loader)
    # one row per global batch: loss sum, top-1 correct, top-5 correct, images (float64 sums)
    stats = torch.zeros(num_batches, 4, dtype=torch.float64, device=device)
    start = time.time()
    model_time, seen = 0.0, 0
    for i, (images, targets) in enumerate(data_loader):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        synchronize(device)
        t0 = time.time()
        with autocast:
            logits = model(images)
        synchronize(device)
        model_time += time.time() - t0
        logits = logits.float()
        loss = F.cross_entropy(logits, targets, reduction='none')
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct = top5.eq(targets[:, None])
        row = batch_ids[i] if batch_ids is not None else i
        seen = i + 1
        stats[row, 0] = loss.double().sum()
        stats[row, 1] = correct[:, 0].sum()
        stats[row, 2] = correct.any(dim=1).sum()
        stats[row, 3] = targets.numel()
        if logger is not None and print_freq and i % print_freq == 0:
            logger.info(f'Test: [{i}/{len(data_loader)}]\tmem {memory_mb(device):.0f}MB')
    batch_time = (time.time() - start) / max(seen, 1)
    all_reduce_sum(stats)
    loss_sum, correct1, correct5, count = stats.sum(dim=0).tolist()
    count = max(count, 1)
    return {'acc1': 100.0 * correct1 / count, 'acc5': 100.0 * correct5 / count, 'loss': loss_sum / count,
            'num_images': int(count), 'time': time.time() - start, 'batch_time': batch_time,
            'model_time': model_time}


@torch.no_grad()
def throughput(model, data_loader, device, autocast_dtype=None, warmup=10, repeats=30):
    """Model-only images/s on one validation batch, after warm-up."""
    model.eval()
    images, _ = next(iter(data_loader))
    images = images.to(device)
    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else nullcontext())
    with autocast:
        for _ in range(warmup):
            model(images)
        synchronize(device)
        start = time.time()
        for _ in range(repeats):
            model(images)
        synchronize(device)
    return repeats * images.shape[0] / (time.time() - start)
