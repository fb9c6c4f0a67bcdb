"""The one evaluation function, used by main_finetune.py and the experiment scripts, and the
model-only throughput (main_finetune.py --throughput)."""
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from utils import all_reduce_sum, memory_mb, synchronize


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
