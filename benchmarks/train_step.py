"""Step-time benchmark: our PSS ViT at rho = 1.0 ... 0.2 against timm's BEiT, in one process.

    python benchmarks/train_step.py --cfg configs/vit-b/magnitude_cyclic_80_0.yaml --batch-size 8
    python benchmarks/train_step.py --cfg configs/vit-b/magnitude_cyclic_80_0.yaml --batch-size 128 \\
        --device cuda --amp [--compile] [--mode train|inference|data] [--repeats 5] [--warmup 2]

--mode train (default) times the full training step as main_finetune.py runs it (fast_step.TrainStep:
forward, loss, backward, gradient clip at TRAIN.CLIP_GRAD, fused AdamW step; --cuda-graphs: replayed
from one CUDA graph per kept-token count, as with TRAIN.CUDA_GRAPHS) of the model
`models.build_model(config)` builds, the one main_finetune
trains, at every keep rate rho of --rhos, and the same step of timm's implementation of the same
architecture (`--timm-model`, built with the config's sizes and drop path; 'none' skips it), same
batch, dtype and optimizer. It also measures the machine's matmul peak (a large fp32 matmul, bf16
with --amp). All cases are timed round-robin (one step of each in turn, --repeats rounds after
--warmup rounds), so a change in machine load hits every case alike; the table shows medians.
Per case: ms per step, images/s, ratio to our rho = 1 step, the FLOP-ideal ratio
(models/flops.py, kept tokens counted), measured over ideal, the fraction of the matmul peak, and
the step's peak memory. From the step times it predicts each config's training time under its
patch schedule (--predict, default the YAML files beside --cfg) next to the baseline's.
--mode inference: eval-mode forward images/s (no autograd) per rho and for timm.
--mode data: the training transform + loader (data.build_loader) on synthetic JPEGs written to a
temporary folder, images/s for each --workers count w and per worker, over --data-batches batches
after the first w (untimed: all w workers deliver their first batch at once); with a train JSON
for the same device in --out, it also says how many workers each rho's step would need. --loader
dali: the NVIDIA DALI loader (DATA.LOADER dali, --workers counts its CPU threads; on CPU its CPU
mode) timed against the default loader round-robin, --repeats rounds (a fresh pass per round), with
the ratio of the two per worker/thread.
With --cuda-graphs the step memory is what the warm-up and the capture reserve (a replay allocates nothing).

Writes <out>/<mode>_<device>[_amp][_compile[_<mode>]][_cuda_graphs].json and .md (--out, default benchmarks/results/)
and prints the markdown.
"""
import argparse
import collections
import ctypes
import datetime
import functools
import glob
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as `python benchmarks/train_step.py` from anywhere

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from config import get_config  # noqa: E402
from fast_step import TrainStep  # noqa: E402
from models import build_model  # noqa: E402
from models.flops import flop_ratio, forward_flops  # noqa: E402
from models.vision_transformer import Attention  # noqa: E402
from patch_scheduler import patch_drop_ratio_at  # noqa: E402
from utils import keep_freed_cpu_memory  # noqa: E402

RHOS = (1.0, 0.8, 0.6, 0.4, 0.2)
# Time per training iteration of the paper's cyclic ViT-B run (A100, batch 128 per GPU, apex O1).
PAPER_A100_MS = {1.0: 352.0, 0.8: 304.0, 0.6: 215.0, 0.4: 161.0, 0.2: 130.0}
PAPER_SAVING = 1 - 16.99 / 24.62  # the paper's cyclic run against its baseline, wall clock
ATTN_CHOICES = {'auto': None, 'sdpa': True, 'math': False}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument('--cfg', required=True, help='model config (YAML)')
    p.add_argument('--opts', nargs='+', default=None, help='config overrides: KEY VALUE pairs')
    p.add_argument('--batch-size', type=int, default=8, help='images per step')
    p.add_argument('--device', default='cpu', help='cpu or cuda[:i]')
    p.add_argument('--amp', action='store_true', help='bf16 autocast (and a bf16 matmul peak)')
    p.add_argument('--compile', action='store_true', help='torch.compile(dynamic=False) both models')
    p.add_argument('--compile-mode', default='default', choices=('default', 'reduce-overhead', 'max-autotune'),
                   help="torch.compile mode; 'reduce-overhead' adds CUDA graphs (launch-bound small rho)")
    p.add_argument('--cuda-graphs', action='store_true',
                   help='train mode: every step replayed from a CUDA graph (fast_step.TrainStep, TRAIN.CUDA_GRAPHS)')
    p.add_argument('--mode', choices=('train', 'inference', 'data'), default='train')
    p.add_argument('--repeats', type=int, default=5, help='timed rounds (median reported)')
    p.add_argument('--warmup', type=int, default=2, help='untimed rounds first')
    p.add_argument('--rhos', type=float, nargs='+', default=list(RHOS), help='keep rates to time')
    p.add_argument('--timm-model', default='beit_base_patch16_224', help="reference model, or 'none'")
    p.add_argument('--attn', choices=tuple(ATTN_CHOICES), default='auto',
                   help='our attention: auto (Attention.fused_attn = None), sdpa or math')
    p.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: leave as is)')
    p.add_argument('--iters-per-epoch', type=int, default=2502,
                   help='for the training-time prediction (ImageNet at a global batch of 512: 2502)')
    p.add_argument('--predict', nargs='*', default=None,
                   help='configs whose training time to predict (default: the YAML files beside --cfg)')
    p.add_argument('--workers', type=int, nargs='+', default=None,
                   help='data mode: loader worker counts (default: 1 and min(8, CPUs))')
    p.add_argument('--data-batches', type=int, default=10, help='data mode: batches timed per worker count')
    p.add_argument('--loader', choices=('torch', 'dali'), default='torch',
                   help='data mode: dali times the DALI loader against the default one (round-robin)')
    p.add_argument('--out', default=str(REPO / 'benchmarks' / 'results'), help='output folder')
    args = p.parse_args(argv)
    if args.cuda_graphs and args.warmup < 2:
        p.error('--cuda-graphs needs --warmup 2 or more: the warm-up step and the capture are not timed')
    if args.cuda_graphs and args.compile:
        p.error('--cuda-graphs and --compile together are not supported (as TRAIN.CUDA_GRAPHS with TRAIN.COMPILE)')
    return args


# --- machine ------------------------------------------------------------------------------------
def device_name(device):
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    try:
        with open('/proc/cpuinfo') as f:
            names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
        if names:
            return f'{names[0]} ({os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads)'
    except OSError:
        pass
    return f'{platform.processor() or platform.machine()} ({os.cpu_count()} CPUs)'


def load_average():
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, 'getloadavg') else None


def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def matmul_peak(device, dtype, repeats):
    """FLOP/s of one large square matmul: the best this device does on dense work."""
    n = 8192 if device.type == 'cuda' else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = []
    for i in range(repeats + 2):  # two warm-up products
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(times)


# --- memory -------------------------------------------------------------------------------------
class _PeakRSS:
    """Peak resident set size of this process while the block runs, sampled every millisecond."""

    def __init__(self):
        self.page = os.sysconf('SC_PAGE_SIZE')

    def rss(self):
        with open('/proc/self/statm') as f:
            return int(f.read().split()[1]) * self.page

    def __enter__(self):
        self.peak = self.start = self.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, self.rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def _release_freed_cpu_memory():
    """Make RSS follow the live tensors (glibc): blocks above 256 KiB get their own mapping, which
    is returned to the OS when freed, and free heap pages are handed back now. Done only for the
    memory pass, after all timing: page faults on fresh mappings would slow the timed steps."""
    try:
        libc = ctypes.CDLL('libc.so.6')
    except OSError:
        return False
    libc.mallopt(-3, 256 * 1024)  # M_MMAP_THRESHOLD (fixed; stops glibc's dynamic raising)
    libc.malloc_trim(0)
    return True


def step_memory_mib(fn, device):
    """Memory one call of fn adds at its peak, in MiB: activations, gradients, temporaries.

    CUDA: peak allocated by PyTorch minus allocated before. CPU (Linux): peak RSS during the call
    minus RSS before it; None where /proc is missing. Persistent state (weights, optimizer
    moments) is not included: it is reported once per model.
    """
    if device.type == 'cuda':
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20
    if not os.path.exists('/proc/self/statm'):
        return None
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except OSError:
        pass
    with _PeakRSS() as rss:
        fn()
    return (rss.peak - rss.start) / 2 ** 20


# --- models -------------------------------------------------------------------------------------
def build_timm_reference(name, config):
    """timm's model `name` with the config's sizes, classes and drop path (the same architecture)."""
    import timm
    vit = config.MODEL.VIT
    model = timm.create_model(
        name, pretrained=False, img_size=config.DATA.IMG_SIZE, patch_size=vit.PATCH_SIZE,
        in_chans=vit.IN_CHANS, num_classes=config.MODEL.NUM_CLASSES, embed_dim=vit.EMBED_DIM,
        depth=vit.DEPTH, num_heads=vit.NUM_HEADS, mlp_ratio=vit.MLP_RATIO, qkv_bias=vit.QKV_BIAS,
        init_values=vit.INIT_VALUES or None, use_abs_pos_emb=vit.USE_APE, use_rel_pos_bias=vit.USE_RPB,
        use_shared_rel_pos_bias=vit.USE_SHARED_RPB, global_pool='avg' if vit.USE_MEAN_POOLING else 'token',
        drop_rate=config.MODEL.DROP_RATE, drop_path_rate=config.MODEL.DROP_PATH_RATE)
    fused = sorted({bool(m.fused_attn) for m in model.modules() if hasattr(m, 'fused_attn')})
    return model, fused == [True]


def make_optimizer(model, device):
    # The fused kernel exists on CPU and CUDA; on CPU it was 7x faster than the default for-loop.
    return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05,
                             fused=device.type in ('cpu', 'cuda'))


def state_mib(model, optimizer=None):
    tensors = list(model.parameters()) + list(model.buffers())
    if optimizer is not None:
        tensors += [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in tensors) / 2 ** 20


def drop_ratio(rho):
    return round(1.0 - rho, 6)


class Case:
    """One thing to time: a model at a keep rate, and the callable that runs one step of it."""

    def __init__(self, label, rho, fn, flops, kept_tokens, ideal_ratio):
        self.label, self.rho, self.fn, self.flops = label, rho, fn, flops
        self.kept_tokens, self.ideal_ratio = kept_tokens, ideal_ratio
        self.first_s = None  # the first call: with --compile, compilation included
        self.times = []
        self.graphs_in_first_call = self.graphs_while_timed = 0
        self.memory_mib = None
        self.setup_mib = []  # CUDA graphs: reserved by the warm-up, by the capture


def _compiled_graphs():
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return 0
    return counters['stats']['unique_graphs']


def run_round_robin(cases, device, warmup, repeats, setup_memory=False):
    """Warm-up rounds, then `repeats` rounds of one call per case, each call synchronised.

    With `setup_memory` (CUDA graphs on CUDA; a replay allocates nothing): each case's memory is
    what its first two calls, the eager warm-up and the capture, add to the memory reserved, each
    from an emptied cache (the capture's part is the graph's private pool)."""
    for r in range(warmup + repeats):
        for case in cases:
            graphs = _compiled_graphs()
            measure = setup_memory and r < 2
            if measure:
                synchronize(device)
                torch.cuda.empty_cache()
                reserved = torch.cuda.memory_reserved(device)
                torch.cuda.reset_peak_memory_stats(device)
            synchronize(device)
            start = time.perf_counter()
            case.fn()
            synchronize(device)
            elapsed = time.perf_counter() - start
            if measure:
                case.setup_mib.append((torch.cuda.max_memory_reserved(device) - reserved) / 2 ** 20)
            if r == 0:
                case.first_s = elapsed
                case.graphs_in_first_call = _compiled_graphs() - graphs
            elif r >= warmup:
                case.times.append(elapsed)
                case.graphs_while_timed += _compiled_graphs() - graphs


def build_cases(args, config, device, train):
    """Our model at every rho and the timm reference, with their step functions."""
    batch = args.batch_size
    images = torch.randn(batch, config.MODEL.VIT.IN_CHANS, config.DATA.IMG_SIZE, config.DATA.IMG_SIZE,
                         device=device)
    targets = torch.randint(0, config.MODEL.NUM_CLASSES, (batch,), device=device)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.amp else nullcontext())

    def compiled(model):
        if not args.compile:
            return model
        return torch.compile(model, dynamic=False, mode=None if args.compile_mode == 'default' else args.compile_mode)

    criterion = functools.partial(F.cross_entropy, label_smoothing=config.MODEL.LABEL_SMOOTHING)

    def step_fn(model, optimizer, before=None, key=None):
        # the step main_finetune runs: clip included, the fast path's CUDA graphs with --cuda-graphs
        fast = TrainStep(model, criterion, optimizer, torch.amp.GradScaler(device.type, enabled=False),
                         config.TRAIN.CLIP_GRAD, torch.bfloat16 if args.amp else None,
                         cuda_graphs=args.cuda_graphs) if train else None

        def train_step():
            if before:
                before()
            fast(images, targets, key=key() if key else None)

        def eval_step():
            if before:
                before()
            with torch.inference_mode(), autocast:
                model(images)
        return train_step if train else eval_step

    Attention.fused_attn = ATTN_CHOICES[args.attn]
    ours = build_model(config).to(device).train(train)
    models = {'ours': {'params': sum(p.numel() for p in ours.parameters()), 'attention': args.attn}}
    ours_run = compiled(ours)
    ours_opt = make_optimizer(ours, device) if train else None
    steps = 3 if train else 1  # a training step is three forwards (models/flops.py)
    cases = []
    for rho in args.rhos:
        d = drop_ratio(rho)
        set_rho = functools.partial(ours.set_patch_drop_ratio, d)  # as the patch scheduler does
        cases.append(Case('ours', rho, step_fn(ours_run, ours_opt, set_rho, ours.num_kept_tokens),
                          steps * batch * forward_flops(ours, d)['total'], ours.num_kept_tokens(d),
                          flop_ratio(ours, d)))
    optimizers = [('ours', ours, ours_opt)]
    if args.timm_model != 'none':
        ref, fused = build_timm_reference(args.timm_model, config)
        ref = ref.to(device).train(train)
        ref_opt = make_optimizer(ref, device) if train else None
        params = sum(p.numel() for p in ref.parameters())
        if params != models['ours']['params']:
            raise ValueError(f"--timm-model {args.timm_model} built from {args.cfg} has {params:,} parameters, "
                             f"ours {models['ours']['params']:,}: not the same architecture, so no reference "
                             "(pass --timm-model none to time ours alone)")
        models['timm'] = {'name': args.timm_model, 'params': params, 'fused_attn': fused}
        if not fused:
            print(f'warning: {args.timm_model} does not use fused attention (TIMM_FUSED_ATTN?)', flush=True)
        # The same architecture (same parameters): our FLOP count at rho = 1.
        cases.append(Case(f'timm {args.timm_model}', 1.0, step_fn(compiled(ref), ref_opt),
                          steps * batch * forward_flops(ours, 0.0)['total'], ours.num_tokens, 1.0))
        optimizers.append(('timm', ref, ref_opt))
    return cases, models, optimizers


# --- schedules ----------------------------------------------------------------------------------
def step_time_at(rho, step_s):
    """Step time at rho, linear between the measured keep rates (clamped at the ends)."""
    rhos = sorted(step_s)
    if rho <= rhos[0]:
        return step_s[rhos[0]]
    for lo, hi in zip(rhos, rhos[1:]):
        if rho <= hi:
            return step_s[lo] + (rho - lo) / (hi - lo) * (step_s[hi] - step_s[lo])
    return step_s[rhos[-1]]


def rho_histogram(config, iters_per_epoch):
    """{rho: number of optimizer steps} over the config's whole schedule."""
    ps = config.TRAIN.PATCH_SCHEDULER
    return _rho_histogram(ps.NAME.lower(), ps.START_PATCH_DROP_RATIO, ps.END_PATCH_DROP_RATIO,
                          iters_per_epoch, config.TRAIN.EPOCHS, ps.COOLDOWN_EPOCHS, ps.ROUND_TO)


@functools.lru_cache(maxsize=None)  # configs share schedules, and a schedule is 250k Python calls
def _rho_histogram(name, start, end, iters_per_epoch, epochs, cooldown_epochs, round_to):
    counts = collections.Counter(
        round(1.0 - patch_drop_ratio_at(step, name, start, end, iters_per_epoch, epochs, cooldown_epochs,
                                        round_to), 6)
        for step in range(epochs * iters_per_epoch))
    return dict(sorted(counts.items()))


def predict_training_time(config_paths, step_s, iters_per_epoch):
    """Per config: the mean step time over its schedule's rho distribution, and the hours."""
    rows = []
    for path in config_paths:
        config = get_config(argparse.Namespace(cfg=path, opts=None))
        hist = rho_histogram(config, iters_per_epoch)
        steps = sum(hist.values())
        mean_s = sum(n * step_time_at(rho, step_s) for rho, n in hist.items()) / steps
        paper_ms = sum(n * step_time_at(rho, PAPER_A100_MS) for rho, n in hist.items()) / steps
        rows.append({
            'config': os.path.relpath(path, REPO), 'schedule': config.TRAIN.PATCH_SCHEDULER.NAME,
            'epochs': config.TRAIN.EPOCHS, 'steps': steps,
            'mean_rho': sum(rho * n for rho, n in hist.items()) / steps,
            'rho_share': {str(rho): n / steps for rho, n in hist.items()},
            'mean_step_s': mean_s, 'hours': mean_s * steps / 3600,
            'saving': 1 - mean_s / step_time_at(1.0, step_s),
            'saving_with_paper_step_times': 1 - paper_ms / PAPER_A100_MS[1.0],
        })
    return rows


# --- modes --------------------------------------------------------------------------------------
def run_model_mode(args, config, device, train):
    cases, models, optimizers = build_cases(args, config, device, train)
    dtype = torch.bfloat16 if args.amp else torch.float32
    peak = matmul_peak(device, dtype, max(args.repeats, 3))
    graphs = train and args.cuda_graphs and device.type == 'cuda'
    load_before = load_average()
    run_round_robin(cases, device, args.warmup, args.repeats, setup_memory=graphs)
    load_after = load_average()
    memory_note = 'peak allocated during the step minus allocated before it (PyTorch, CUDA)'
    if graphs:
        memory_note = ('CUDA graphs: memory reserved over the warm-up step plus over the capture (the '
                       "graph's private pool), each from an emptied cache; a replay allocates nothing")
    elif device.type == 'cpu':
        if _release_freed_cpu_memory():
            memory_note = 'peak RSS during the step minus RSS before it (glibc told to unmap freed blocks)'
        else:
            memory_note = 'peak RSS during the step minus RSS before it'
    for case in cases:
        case.memory_mib = sum(case.setup_mib) if graphs else step_memory_mib(case.fn, device)
    for label, model, optimizer in optimizers:
        models[label]['state_mib'] = state_mib(model, optimizer)

    base = next((c for c in cases if c.label == 'ours' and c.rho == 1.0), None)
    rows = []
    for case in cases:
        median_s = statistics.median(case.times)
        ratio = median_s / statistics.median(base.times) if base else None
        rows.append({
            'model': case.label, 'rho': case.rho, 'kept_tokens': case.kept_tokens,
            'ms': 1e3 * median_s, 'ms_all': [1e3 * t for t in case.times],
            'images_per_s': args.batch_size / median_s,
            'ratio_to_ours_rho1': ratio, 'flop_ideal_ratio': case.ideal_ratio,
            'ratio_over_ideal': ratio / case.ideal_ratio if ratio else None,
            'gflop': case.flops / 1e9, 'fraction_of_peak': case.flops / median_s / peak,
            'step_memory_mib': case.memory_mib,
            'warmup_and_capture_reserved_mib': case.setup_mib if graphs else None,
            'first_call_s': case.first_s, 'graphs_compiled_first_call': case.graphs_in_first_call,
            'graphs_compiled_while_timed': case.graphs_while_timed,
        })
    result = {'matmul_peak_tflops': peak / 1e12, 'matmul_dtype': str(dtype).replace('torch.', ''),
              'load_average_before': load_before, 'load_average_after': load_after,
              'models': models, 'memory': memory_note, 'rows': rows}
    if train and base:
        step_s = {r['rho']: r['ms'] / 1e3 for r in rows if r['model'] == 'ours'}
        paths = args.predict if args.predict is not None else sorted(glob.glob(str(Path(args.cfg).parent / '*.yaml')))
        result['predictions'] = predict_training_time(paths, step_s, args.iters_per_epoch)
    return result


def _write_jpeg(job):
    """One ImageNet-like JPEG: 500 x 375, smooth, quality 90, drawn from its own seed."""
    import numpy as np
    from PIL import Image
    path, seed = job
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    image = np.asarray(coarse.resize((500, 375), Image.BICUBIC), dtype=np.int16)
    image = np.clip(image + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)
    Image.fromarray(image).save(path, quality=90)


def _write_synthetic_imagenet(root, num_train, num_val, seed=0, unique=256):
    """JPEGs in ImageFolder layout (2 classes). At most `unique` distinct images per split, written
    by one process per CPU; the other files are hard links to them (decoding costs the same, and
    thousands of JPEGs written one by one took longer than the loaders they feed)."""
    from concurrent.futures import ProcessPoolExecutor
    paths = {}
    for split, count in (('train', num_train), ('val', num_val)):
        for c in range(2):
            os.makedirs(os.path.join(root, split, f'class_{c}'), exist_ok=True)
        paths[split] = [os.path.join(root, split, f'class_{i % 2}', f'{i:05d}.jpg') for i in range(count)]
    jobs = [(path, (seed, s, i)) for s, split in enumerate(paths) for i, path in enumerate(paths[split][:unique])]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(_write_jpeg, jobs, chunksize=8))
    for split_paths in paths.values():
        for i in range(unique, len(split_paths)):
            source = split_paths[i % unique]
            try:
                os.link(source, split_paths[i])
            except OSError:  # a file system without hard links
                shutil.copyfile(source, split_paths[i])


def time_batches(iterator, skip, count, clock=time.perf_counter):
    """Seconds for `count` batches of `iterator` after `skip` untimed ones; -> (seconds, batches read)."""
    for _ in range(skip):
        next(iterator)
    start = clock()
    for _ in range(count):
        next(iterator)
    return clock() - start, skip + count


def _time_loader(loader, epoch, skip, batches):
    """Seconds for `batches` batches of a fresh pass over `loader` after `skip` untimed ones: start-up
    (DALI: the pipeline build) and the first w batches, which all w workers deliver at once (counting
    them overstated 16 workers by about 25%)."""
    from data import set_train_epoch
    set_train_epoch(loader, epoch)
    elapsed, _ = time_batches(iter(loader), skip, batches)
    return elapsed


def run_data_mode(args, config):
    from data import build_loader
    workers = args.workers or sorted({1, min(8, os.cpu_count() or 1)})
    batch = args.batch_size
    loaders = ('torch', 'dali') if args.loader == 'dali' else ('torch',)
    rounds = args.repeats if args.loader == 'dali' else 1
    rows = []
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix='pss_bench_data_') as root:
        # per worker count: w untimed batches, the timed ones, one spare
        num_train = batch * (max(workers) + args.data_batches + 1)
        _write_synthetic_imagenet(root, num_train, num_val=4)
        for w in workers:
            built = {}
            for name in loaders:
                cfg = config.clone()
                cfg.defrost()
                cfg.DATA.DATA_PATH, cfg.DATA.DATASET, cfg.DATA.NUM_WORKERS, cfg.DATA.LOADER = root, 'imagenet', w, name
                cfg.freeze()
                built[name] = build_loader(cfg)[2]
            seconds = {name: [] for name in loaders}
            for r in range(rounds):  # round-robin: a change in machine load hits both alike
                for name in loaders:
                    seconds[name].append(_time_loader(built[name], r, max(w, 1), args.data_batches))
            del built
            for name in loaders:
                rate = args.data_batches * batch / statistics.median(seconds[name])
                # DALI runs at least one thread (NUM_WORKERS 0: one); the default loader's 0 is the main process
                per = max(w, 1)
                rows.append({'loader': name, 'workers': w, 'images_per_s': rate, 'images_per_s_per_worker': rate / per,
                             'untimed_batches': max(w, 1), 'seconds': seconds[name]})
    result = {'rows': rows, 'images': '500 x 375 JPEG, quality 90', 'rounds': rounds,
              'load_average_before': load_before, 'load_average_after': load_average()}
    if args.loader == 'dali':
        by = {(r['loader'], r['workers']): r['images_per_s'] for r in rows}
        result['dali_over_torch'] = {w: by['dali', w] / by['torch', w] for w in workers}
    # How many workers each rho's step would need, from a train run on the same device.
    stem = f"train_{args.device.split(':')[0]}{'_amp' if args.amp else ''}"
    candidates = [Path(args.out) / f'{stem}_cuda_graphs.json', Path(args.out) / f'{stem}.json']  # fastest first
    train_json = next((path for path in candidates if path.exists()), candidates[-1])
    if train_json.exists():
        train = json.loads(train_json.read_text())
        per_worker = max(r['images_per_s_per_worker'] for r in rows if r['loader'] == 'torch')
        result['workers_needed'] = [
            {'rho': r['rho'], 'images_per_s': r['images_per_s'], 'workers': r['images_per_s'] / per_worker}
            for r in train['rows'] if r['model'] == 'ours']
        result['workers_needed_from'] = str(train_json)
    return result


# --- output -------------------------------------------------------------------------------------
def _fmt(value, spec):
    return '-' if value is None else format(value, spec)


def markdown(args, meta, result):
    lines = [f"## {args.mode}: {meta['device_name']}, batch {args.batch_size}, "
             f"{'bf16 autocast' if args.amp else 'fp32'}"
             f"{f', torch.compile ({args.compile_mode})' if args.compile else ''}"
             f"{', CUDA graphs (fast_step.TrainStep)' if args.cuda_graphs else ''}", '',
             f"`{meta['command']}`", '',
             f"{meta['date']}; torch {meta['torch']}, timm {meta['timm']}; load average "
             f"{result.get('load_average_before')} before, {result.get('load_average_after')} after.", '']
    if args.mode == 'data':
        lines += ['| loader | workers (DALI: threads) | images/s | images/s per worker |', '|---|---|---|---|']
        lines += [f"| {r['loader']} | {r['workers']} | {r['images_per_s']:.1f} | {r['images_per_s_per_worker']:.1f} |"
                  for r in result['rows']]
        lines += ['', f"Synthetic {result['images']}, training transform of the config (data.build_loader); "
                  f"median of {result['rounds']} round(s) of {args.data_batches} batches."]
        if 'dali_over_torch' in result:
            lines += ['', 'DALI over the default loader, per worker / thread: ' + ', '.join(
                f'{ratio:.2f}x at {w}' for w, ratio in result['dali_over_torch'].items()) + '.']
        if 'workers_needed' in result:
            lines += ['', '| rho | step images/s | workers needed |', '|---|---|---|']
            lines += [f"| {r['rho']:.1f} | {r['images_per_s']:.1f} | {r['workers']:.2f} |"
                      for r in result['workers_needed']]
        return '\n'.join(lines) + '\n'

    unit = 'step' if args.mode == 'train' else 'batch'
    lines += [f'| model | rho | tokens | ms/{unit} | images/s | ratio to ours rho=1 | FLOP-ideal ratio | '
              f'ratio / ideal | GFLOP/{unit} | % of matmul peak | {unit} memory (MiB) |',
              '|---|---|---|---|---|---|---|---|---|---|---|']
    for r in result['rows']:
        lines.append(f"| {r['model']} | {r['rho']:.1f} | {r['kept_tokens']} | {r['ms']:.1f} | "
                     f"{r['images_per_s']:.2f} | {_fmt(r['ratio_to_ours_rho1'], '.3f')} | "
                     f"{r['flop_ideal_ratio']:.3f} | {_fmt(r['ratio_over_ideal'], '.3f')} | {r['gflop']:.4g} | "
                     f"{100 * r['fraction_of_peak']:.1f} | {_fmt(r['step_memory_mib'], '.0f')} |")
    models = result['models']
    lines += ['', f"Matmul peak: {result['matmul_peak_tflops'] * 1e3:.1f} GFLOP/s ({result['matmul_dtype']}). "
              f"Medians of {args.repeats} round-robin rounds after {args.warmup} warm-up rounds. "
              f"Memory: {result['memory']}; persistent state (weights, buffers, optimizer moments): "
              + ', '.join(f"{k} {v['state_mib']:.0f} MiB" for k, v in models.items()) + '. '
              f"Ours: attention '{models['ours']['attention']}', {models['ours']['params']:,} parameters"
              + (f"; timm: fused attention {models['timm']['fused_attn']}, {models['timm']['params']:,} parameters."
                 if 'timm' in models else '.')]
    if args.compile:
        lines += ['', '| model | rho | first call (s, compile included) | graphs compiled in it | '
                  'graphs compiled while timed |', '|---|---|---|---|---|']
        lines += [f"| {r['model']} | {r['rho']:.1f} | {r['first_call_s']:.1f} | {r['graphs_compiled_first_call']} | "
                  f"{r['graphs_compiled_while_timed']} |" for r in result['rows']]
    if result.get('predictions'):
        lines += ['', f"Predicted training time at these step times ({args.iters_per_epoch} iterations per "
                  'epoch; saving against every step at rho = 1; last column: the same prediction with the '
                  f"paper's A100 step times, whose measured saving was {100 * PAPER_SAVING:.1f}%):", '',
                  '| config | schedule | mean rho | mean step (ms) | hours | saving | saving, paper step times |',
                  '|---|---|---|---|---|---|---|']
        lines += [f"| {p['config']} | {p['schedule']} | {p['mean_rho']:.3f} | {1e3 * p['mean_step_s']:.1f} | "
                  f"{p['hours']:.1f} | {100 * p['saving']:.1f}% | {100 * p['saving_with_paper_step_times']:.1f}% |"
                  for p in result['predictions']]
    return '\n'.join(lines) + '\n'


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == 'cpu':
        keep_freed_cpu_memory()  # as main_finetune.py: gradients re-use freed memory, no page faults
    if args.cuda_graphs and device.type != 'cuda':
        sys.exit(f'error: --cuda-graphs needs a CUDA device, not {args.device}')
    opts = list(args.opts or [])
    if args.mode == 'data':
        opts += ['MODEL.NUM_CLASSES', '2']  # the synthetic folder has two classes
    config = get_config(argparse.Namespace(cfg=args.cfg, opts=opts, batch_size=args.batch_size))
    torch.manual_seed(config.SEED)
    try:
        import timm
        timm_version = timm.__version__
    except ImportError:
        timm_version = None
    meta = {'command': 'python ' + ' '.join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:]),
            'date': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
            'device_name': device_name(device), 'torch': torch.__version__, 'timm': timm_version,
            'python': platform.python_version(), 'threads': torch.get_num_threads(), 'args': vars(args)}
    if args.mode == 'data':
        result = run_data_mode(args, config)
    else:
        result = run_model_mode(args, config, device, train=args.mode == 'train')

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    compiled = f"_compile{'' if args.compile_mode == 'default' else '_' + args.compile_mode}" if args.compile else ''
    graphs = '_cuda_graphs' if args.cuda_graphs else ''
    name = f"{args.mode}_{device.type}{'_amp' if args.amp else ''}{compiled}{graphs}"
    (out / f'{name}.json').write_text(json.dumps({'meta': meta, **result}, indent=1) + '\n')
    text = markdown(args, meta, result)
    (out / f'{name}.md').write_text(text)
    print(text, flush=True)


if __name__ == '__main__':
    main()
