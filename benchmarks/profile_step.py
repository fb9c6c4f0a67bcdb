"""Where a training step's time goes: torch.profiler over a few steps at rho = 1 and rho = 0.2.

    python benchmarks/profile_step.py --cfg configs/vit-b/magnitude_cyclic_80_0.yaml --batch-size 128 \\
        --device cuda --amp [--cuda-graphs] [--rhos 1.0 0.2] [--steps 3] --out DIR
    python benchmarks/profile_step.py --cfg ... --batch-size 4 --device cpu --opts DATA.IMG_SIZE 32 ...  # dry run

Profiles the step main_finetune.py runs (fast_step.TrainStep; --cuda-graphs: replayed from CUDA
graphs) after --warmup untimed steps, each step ending with a device sync as in training.py. Per rho:
the wall time per step; on CUDA the time the GPU was busy (the union of its kernel, copy and
memset intervals within the profiled steps) and the fraction it sat idle; the device operations per
step; the operators with the most device time and those with the most CPU time (self time, per
step). Writes profile_<device>[_amp][_cuda_graphs].json and .md to --out and prints the markdown.
"""
import argparse
import datetime
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as `python benchmarks/profile_step.py` from anywhere

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

from benchmarks.train_step import device_name, drop_ratio, make_optimizer, synchronize  # noqa: E402
from config import get_config  # noqa: E402
from fast_step import TrainStep  # noqa: E402
from models import build_model  # noqa: E402

DEVICE_CATEGORIES = {'kernel', 'gpu_memcpy', 'gpu_memset'}
STEP_LABEL = 'pss_train_step'


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--cfg', required=True, help='model config (YAML)')
    p.add_argument('--opts', nargs='+', default=None, help='config overrides: KEY VALUE pairs')
    p.add_argument('--batch-size', type=int, default=128)
    p.add_argument('--device', default='cuda')
    p.add_argument('--amp', action='store_true', help='bf16 autocast')
    p.add_argument('--cuda-graphs', action='store_true', help='profile the CUDA-graph step (TRAIN.CUDA_GRAPHS)')
    p.add_argument('--rhos', type=float, nargs='+', default=[1.0, 0.2])
    p.add_argument('--warmup', type=int, default=3, help='untimed steps first (graphs: warm-up and capture)')
    p.add_argument('--steps', type=int, default=3, help='profiled steps per rho')
    p.add_argument('--top', type=int, default=10, help='operators listed per table')
    p.add_argument('--out', required=True, help='output folder')
    return p.parse_args(argv)


def union_length(intervals):
    """Total length covered by [start, end) intervals."""
    total, current_end = 0.0, float('-inf')
    for start, end in sorted(intervals):
        if end > current_end:
            total += end - max(start, current_end)
            current_end = end
    return total


def device_busy(trace_path):
    """(profiled step wall time, device busy time within it, device operations) in microseconds,
    from a Chrome trace: step windows are the STEP_LABEL annotations."""
    with open(trace_path) as f:
        events = json.load(f)['traceEvents']
    windows = [(e['ts'], e['ts'] + e['dur']) for e in events
               if e.get('name') == STEP_LABEL and e.get('ph') == 'X' and e.get('cat') == 'user_annotation']
    device = [(e['ts'], e['ts'] + e['dur']) for e in events
              if e.get('ph') == 'X' and e.get('cat') in DEVICE_CATEGORIES]
    wall = sum(end - start for start, end in windows)
    clipped = [(max(s, ws), min(e, we)) for s, e in device for ws, we in windows if s < we and e > ws]
    return wall, union_length(clipped), len(clipped)


def top_operators(averages, key, top, steps):
    rows = [(e.key, getattr(e, key, 0.0) or 0.0, e.count) for e in averages]
    rows = [r for r in rows if r[1] > 0 and r[0] != STEP_LABEL]
    rows.sort(key=lambda r: -r[1])
    return [{'name': name, 'ms_per_step': t / 1e3 / steps, 'calls_per_step': n / steps} for name, t, n in rows[:top]]


def profile_rho(args, step, model, images, targets, rho, device):
    model.set_patch_drop_ratio(drop_ratio(rho))
    key = model.num_kept_tokens()
    for _ in range(args.warmup):
        step(images, targets, key=key)
    synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            with record_function(STEP_LABEL):
                step(images, targets, key=key)
                synchronize(device)  # as training.py: the step's one sync
    wall_s = (time.perf_counter() - start) / args.steps
    averages = prof.key_averages()
    device_key = 'self_device_time_total' if hasattr(averages[0], 'self_device_time_total') else 'self_cuda_time_total'
    row = {'rho': rho, 'kept_tokens': key, 'wall_ms_per_step': 1e3 * wall_s,
           'top_by_cpu_time': top_operators(averages, 'self_cpu_time_total', args.top, args.steps)}
    if device.type == 'cuda':
        with tempfile.TemporaryDirectory() as tmp:
            trace = os.path.join(tmp, 'trace.json')
            prof.export_chrome_trace(trace)
            wall_us, busy_us, operations = device_busy(trace)
        row.update({'profiled_ms_per_step': wall_us / 1e3 / args.steps,
                    'gpu_busy_ms_per_step': busy_us / 1e3 / args.steps,
                    'gpu_idle_fraction': 1 - busy_us / wall_us if wall_us else None,
                    'device_operations_per_step': operations / args.steps,
                    'top_by_device_time': top_operators(averages, device_key, args.top, args.steps)})
    return row


def markdown(meta, rows):
    lines = [f"## Profile: {meta['device_name']}, batch {meta['args']['batch_size']}, "
             f"{'bf16 autocast' if meta['args']['amp'] else 'fp32'}, "
             f"{'CUDA graphs' if meta['args']['cuda_graphs'] else 'eager'}", '', f"`{meta['command']}`", '',
             f"{meta['date']}; torch {meta['torch']}; {meta['args']['steps']} profiled steps per rho after "
             f"{meta['args']['warmup']} warm-up steps.", '',
             '| rho | tokens | wall ms/step | GPU busy ms/step | GPU idle | device ops/step |',
             '|---|---|---|---|---|---|']
    for r in rows:
        idle = r.get('gpu_idle_fraction')
        lines.append(f"| {r['rho']:.1f} | {r['kept_tokens']} | {r['wall_ms_per_step']:.2f} | "
                     f"{r.get('gpu_busy_ms_per_step', float('nan')):.2f} | "
                     f"{'-' if idle is None else f'{100 * idle:.1f}%'} | {r.get('device_operations_per_step', '-')} |")
    for r in rows:
        for key, title in (('top_by_device_time', 'device time'), ('top_by_cpu_time', 'CPU time (self)')):
            if key not in r:
                continue
            lines += ['', f"Top operators by {title}, rho = {r['rho']:.1f} (per step):", '',
                      '| operator | ms | calls |', '|---|---|---|']
            lines += [f"| `{o['name']}` | {o['ms_per_step']:.3f} | {o['calls_per_step']:.0f} |" for o in r[key]]
    return '\n'.join(lines) + '\n'


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.cuda_graphs and device.type != 'cuda':
        sys.exit(f'error: --cuda-graphs needs a CUDA device, not {args.device}')
    config = get_config(argparse.Namespace(cfg=args.cfg, opts=args.opts, batch_size=args.batch_size))
    torch.manual_seed(config.SEED)
    model = build_model(config).to(device).train()
    images = torch.randn(args.batch_size, config.MODEL.VIT.IN_CHANS, config.DATA.IMG_SIZE, config.DATA.IMG_SIZE,
                         device=device)
    targets = torch.randint(0, config.MODEL.NUM_CLASSES, (args.batch_size,), device=device)
    criterion = functools.partial(F.cross_entropy, label_smoothing=config.MODEL.LABEL_SMOOTHING)
    step = TrainStep(model, criterion, make_optimizer(model, device), torch.amp.GradScaler(device.type, enabled=False),
                     config.TRAIN.CLIP_GRAD, torch.bfloat16 if args.amp else None, cuda_graphs=args.cuda_graphs)
    rows = [profile_rho(args, step, model, images, targets, rho, device) for rho in args.rhos]
    meta = {'command': 'python ' + ' '.join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:]),
            'date': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
            'device_name': device_name(device), 'torch': torch.__version__, 'args': vars(args)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"profile_{device.type}{'_amp' if args.amp else ''}{'_cuda_graphs' if args.cuda_graphs else ''}"
    (out / f'{name}.json').write_text(json.dumps({'meta': meta, 'rows': rows}, indent=1) + '\n')
    text = markdown(meta, rows)
    (out / f'{name}.md').write_text(text)
    print(text, flush=True)


if __name__ == '__main__':
    main()
