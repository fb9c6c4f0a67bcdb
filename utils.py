"""Distributed helpers (falling back to one process) and small shared utilities.

Rank, world size and local rank come from the environment that `torchrun` and
`python -m torch.distributed.launch` set; without them the run is a single process.
"""
import os

import torch
import torch.distributed as dist


def is_dist_avail_and_initialized():
    return dist.is_available() and dist.is_initialized()


def get_rank():
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def get_world_size():
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def is_main_process():
    return get_rank() == 0


def init_distributed_mode(timeout_s=1800):
    """Join the process group the launcher describes (NCCL on CUDA, gloo on CPU).

    Returns (rank, world_size, local_rank, device). With no launcher: (0, 1, 0, cuda:0 or cpu).
    """
    rank = int(os.environ.get('RANK', '0'))
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device('cuda', local_rank)
    else:
        device = torch.device('cpu')
    if world_size > 1 and not is_dist_avail_and_initialized():
        import datetime
        backend = 'nccl' if device.type == 'cuda' else 'gloo'
        kwargs = {'device_id': device} if device.type == 'cuda' else {}
        dist.init_process_group(backend, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return rank, world_size, local_rank, device


def barrier():
    if is_dist_avail_and_initialized():
        dist.barrier()


def all_reduce_sum(tensor):
    """Sum a tensor over all processes (in place); a no-op in one process."""
    if is_dist_avail_and_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def unwrap_model(model):
    """The bare model under DistributedDataParallel and torch.compile wrappers."""
    model = getattr(model, 'module', model)
    return getattr(model, '_orig_mod', model)
