"""Distributed helpers (falling back to one process) and small shared utilities.

Rank, world size and local rank come from the environment that `torchrun` and
`python -m torch.distributed.launch` set; without them the run is a single process.
"""
import ctypes
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


class LaunchError(ValueError):
    """The environment describes a distributed launch that cannot work; the message says why."""


def _env_int(name, default):
    value = os.environ.get(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"environment variable {name}='{value}' is not an integer") from None


def launch_environment():
    """(rank, world_size, local_rank) from the environment. Raises LaunchError when WORLD_SIZE asks
    for several processes but the variables a launcher sets with it are missing (a stray WORLD_SIZE
    would otherwise fail deep inside torch.distributed, or wait for peers that never come)."""
    rank, world_size, local_rank = _env_int('RANK', 0), _env_int('WORLD_SIZE', 1), _env_int('LOCAL_RANK', 0)
    if world_size > 1:
        missing = [name for name in ('RANK', 'MASTER_ADDR', 'MASTER_PORT') if name not in os.environ]
        if missing:
            raise LaunchError(f"WORLD_SIZE={world_size} is set in the environment but {', '.join(missing)} "
                              'is not: start the processes with torchrun (or python -m torch.distributed.launch), '
                              'or unset WORLD_SIZE to run one process')
    if world_size < 1 or not 0 <= rank < world_size:
        raise LaunchError(f'RANK={rank} and WORLD_SIZE={world_size} in the environment do not fit together')
    return rank, world_size, local_rank


def init_distributed_mode(timeout_s=1800):
    """Join the process group the launcher describes (NCCL on CUDA, gloo on CPU).

    Returns (rank, world_size, local_rank, device). With no launcher: (0, 1, 0, cuda:0 or cpu).
    Raises LaunchError for an environment that describes no workable launch (launch_environment).
    """
    rank, world_size, local_rank = launch_environment()
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


def first_n(items, n, sep=', '):
    """The first `n` of `items` joined by `sep`, and ' (+k more)' for the rest."""
    more = f' (+{len(items) - n} more)' if len(items) > n else ''
    return sep.join(items[:n]) + more


def all_gather_object(obj):
    """A list with every process's `obj` (rank order); [obj] in one process."""
    if not is_dist_avail_and_initialized():
        return [obj]
    gathered = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


AMP_DTYPES = {'auto': None, 'bfloat16': torch.bfloat16, 'float16': torch.float16}


def autocast_dtype(amp_opt_level, device, amp_dtype='auto'):
    """Mixed-precision dtype for AMP_OPT_LEVEL O1/O2 (native autocast, no apex), or None for fp32.

    AMP_DTYPE 'auto': bf16 where the GPU supports it (no loss scaling needed), else fp16 with a
    GradScaler; 'float16' forces fp16 (and the scaler) on any GPU, 'bfloat16' forces bf16. On CPU
    the run stays fp32 whatever AMP_DTYPE says: bf16 matmuls are slower than fp32 on most CPUs and
    would change the numbers.
    """
    if amp_opt_level == 'O0' or device.type != 'cuda':
        return None
    if AMP_DTYPES[amp_dtype] is not None:
        return AMP_DTYPES[amp_dtype]
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def memory_mb(device):
    """Peak memory in MB: CUDA max allocated, or the process's peak resident set on CPU."""
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KB


def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def get_rng_state():
    """This process's RNG states as tensors and plain Python types (loadable with weights_only)."""
    import random

    import numpy as np
    np_state = np.random.get_state()
    state = {
        'torch': torch.get_rng_state(),
        'numpy': [np_state[0], torch.from_numpy(np_state[1].astype('int64')), *np_state[2:]],
        'python': random.getstate(),
    }
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    import random

    import numpy as np
    torch.set_rng_state(state['torch'])
    name, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((name, keys.numpy().astype('uint32'), pos, has_gauss, cached))
    version, internal, gauss_next = state['python']
    random.setstate((version, tuple(internal), gauss_next))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def keep_freed_cpu_memory():
    """Let glibc keep the memory the process frees (blocks up to 32 MiB from the heap, trimmed only
    above 2 GiB free), so that a step's gradients, freed by zero_grad(set_to_none=True), come back
    without page faults (benchmarks/RESULTS.md). Returns whether it took effect (glibc only)."""
    try:
        libc = ctypes.CDLL('libc.so.6')
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    # 32 MiB is glibc's largest mmap threshold; a ViT-B gradient is at most 9 MiB
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 * 2 ** 20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))


def write_atomically(path, text):
    """Write `text` to `path` through a temporary file and a rename: readers never see half a file."""
    tmp = f'{path}.{os.getpid()}.tmp'
    try:
        with open(tmp, 'w') as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:  # Ctrl-C included: no temporary file left behind
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
