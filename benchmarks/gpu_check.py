"""Helpers of benchmarks/gpu_check.sh: the synthetic dataset, the run checks, the fast-step check, the summary.

    python benchmarks/gpu_check.py make-data ROOT [--classes 8 --train 64 --val 16 --size 224]
    python benchmarks/gpu_check.py check-run RUN_DIR --epochs E --steps-per-epoch S
    python benchmarks/gpu_check.py fast-step --device cuda --out FILE.json
    python benchmarks/gpu_check.py summary OUT_DIR

make-data: an ImageFolder of JPEGs (class-coloured noise, so a model can learn it in a few steps).
check-run: a finished run folder holds every train_log.json iteration exactly once, one
val_log.json line per epoch and checkpoint.pth: the logs of a run that was stopped and resumed are
continuous. fast-step: fast_step.TrainStep with CUDA graphs against the same step eager, on a small
model over steps that change the kept-token count, in bf16 and in fp16 with the GradScaler (one
step made to overflow: it must be skipped, weights and optimizer step count unchanged, the scale
halved). On CPU it runs the graphs' body eagerly instead. summary: every part's status file
(status/*.json, written by gpu_check.sh) into summary.json, grouped by the four parts of issue 11.
Each command exits 1 when its check fails.
"""
import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PARTS = {'end_to_end': 'e2e_', 'profile': 'profile', 'speed': 'speed_', 'data': 'data'}


def make_data(root, classes, train, val, size, seed=0):
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    for split, count in (('train', train), ('val', val)):
        for c in range(classes):
            folder = Path(root) / split / f'class_{c}'
            folder.mkdir(parents=True, exist_ok=True)
            colour = rng.integers(30, 225, 3)
            for i in range(count):
                pixels = np.clip(colour + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f'{i:04d}.jpg', quality=90)
    print(f'{classes} classes, {train} training and {val} validation JPEGs each, {size} px, in {root}')
    return 0


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def check_run(run_dir, epochs, steps_per_epoch):
    run_dir = Path(run_dir)
    train = read_jsonl(run_dir / 'train_log.json')
    val = read_jsonl(run_dir / 'val_log.json')
    problems = []
    iterations = [r['iteration'] for r in train]
    if iterations != list(range(epochs * steps_per_epoch)):
        problems.append(f'train_log.json iterations are not 0..{epochs * steps_per_epoch - 1} exactly once: '
                        f'{len(iterations)} lines, first {iterations[:3]}, last {iterations[-3:]}')
    if [r['epoch'] for r in val] != list(range(epochs)):
        problems.append(f"val_log.json epochs {[r['epoch'] for r in val]}, expected 0..{epochs - 1}")
    if not (run_dir / 'checkpoint.pth').exists():
        problems.append('no checkpoint.pth')
    if any(not all(isinstance(r[k], (int, float)) for k in ('loss', 'time')) for r in train):
        problems.append('a train_log.json line without a numeric loss or time')
    result = {'run_dir': str(run_dir), 'train_lines': len(train), 'val_lines': len(val),
              'final_acc1': val[-1]['acc1'] if val else None, 'problems': problems}
    print(json.dumps(result))
    return 1 if problems else 0


# --- fast step ------------------------------------------------------------------------------------
def _small_setup(device, dtype, fp16, seed=0):
    import torch
    import torch.nn.functional as F

    from fast_step import TrainStep
    from models.vision_transformer import VisionTransformer
    torch.manual_seed(seed)
    model = VisionTransformer(img_size=64, patch_size=8, num_classes=10, embed_dim=128, depth=4, num_heads=4,
                              init_values=0.1, use_rel_pos_bias=True, use_mean_pooling=True).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05, fused=True)
    poison = torch.ones((), device=device)

    def criterion(logits, targets):
        return F.cross_entropy(logits, targets) * poison

    scaler = torch.amp.GradScaler(device.type, enabled=fp16, init_scale=2.0 ** 12)
    return model, optimizer, poison, lambda graphs: TrainStep(model, criterion, optimizer, scaler, 5.0, dtype,
                                                              cuda_graphs=graphs)


def fast_step_check(device_name, out):
    """Graphs against eager (CUDA), or the graphs' body against eager (CPU); see the module docstring."""
    import torch
    device = torch.device(device_name)
    cuda = device.type == 'cuda'
    drops = [0.0, 0.6, 0.0, 0.6, 0.8, 0.6, 0.0, 0.8, 0.0, 0.6]  # keys 65, 26, 13: warm-up, capture, replays
    overflow_at = 6
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 3, 64, 64, generator=g).to(device), torch.randint(0, 10, (16,), generator=g).to(device))
               for _ in drops]
    results, problems = [], []
    cases = [('bfloat16', torch.bfloat16, False), ('float16', torch.float16, True)] if cuda else [('fp32', None, False)]
    for label, dtype, fp16 in cases:
        models, stats, skipped_ok = [], [], True
        start = time.perf_counter()
        for graphs in (False, True):
            model, optimizer, poison, make = _small_setup(device, dtype, fp16)
            step = make(graphs)
            run_stats = []
            for i, (drop, (x, y)) in enumerate(zip(drops, batches)):
                model.set_patch_drop_ratio(drop)
                poison.fill_(float('inf') if fp16 and i == overflow_at else 1.0)
                before = [p.detach().clone() for p in model.parameters()] if i == overflow_at else None
                if cuda or not graphs:
                    s = step(x, y, key=model.num_kept_tokens()).clone()
                else:  # CPU: the captured body, run eagerly
                    step._copy_inputs(x, y)
                    with step._device_learning_rates():
                        step._graphed_step()
                    s = step.static_stats.clone()
                run_stats.append(s.cpu())
                if before is not None and fp16:
                    skipped_ok &= all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
            if cuda:
                torch.cuda.synchronize()
            models.append(model)
            stats.append(torch.stack(run_stats))
            if graphs:
                graphs_made = len(step.graphs)
        max_diff = max((a - b).abs().max().item() for a, b in zip(models[0].parameters(), models[1].parameters()))
        scale = max(p.abs().max().item() for p in models[0].parameters())
        finite = torch.isfinite(stats[0]).all(dim=1)
        stat_diff = (stats[0][finite] - stats[1][finite]).abs().max().item()
        row = {'dtype': label, 'steps': len(drops), 'graphs_captured': graphs_made if cuda else 0,
               'max_weight_diff': max_diff, 'max_weight': scale, 'max_loss_or_norm_diff': stat_diff,
               'overflow_step_skipped_in_both': skipped_ok if fp16 else None, 'seconds': time.perf_counter() - start}
        # bf16 / fp16 kernels may differ between a capture and eager launches only in workspace
        # choices: allow a few low-precision ulps relative to the weights' size
        tolerance = 1e-5 if dtype is None else 2e-2
        if max_diff > tolerance * max(scale, 1.0):
            problems.append(f'{label}: weights differ by {max_diff:.3g} (weights up to {scale:.3g})')
        if fp16 and not skipped_ok:
            problems.append(f'{label}: the overflowing step changed the weights')
        if cuda and graphs_made != 3:
            problems.append(f'{label}: {graphs_made} graphs captured, expected 3 (one per kept-token count)')
        results.append(row)
    report = {'device': device_name, 'rows': results, 'problems': problems}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=1) + '\n')
    print(json.dumps(report, indent=1))
    return 1 if problems else 0


def summary(out_dir):
    out_dir = Path(out_dir)
    statuses = {}
    for path in sorted((out_dir / 'status').glob('*.json')):
        entry = json.loads(path.read_text())
        statuses[entry['name']] = entry
    parts = {}
    for part, prefix in PARTS.items():
        entries = {n: e for n, e in statuses.items() if n.startswith(prefix)}
        if not entries:
            status = 'not run'
        elif all(e['status'] in ('pass', 'skipped') for e in entries.values()):
            status = 'pass' if any(e['status'] == 'pass' for e in entries.values()) else 'skipped'
        else:
            status = 'fail'
        parts[part] = {'status': status, 'checks': entries}
    result = {'all_pass': all(p['status'] == 'pass' for p in parts.values()), 'parts': parts,
              'other': {n: e for n, e in statuses.items() if not any(n.startswith(p) for p in PARTS.values())}}
    (out_dir / 'summary.json').write_text(json.dumps(result, indent=1) + '\n')
    for part, entry in parts.items():
        print(f"{part:12s} {entry['status']:8s} " + ', '.join(f"{n} {e['status']}" for n, e in entry['checks'].items()))
    return 0 if result['all_pass'] else 1


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='command', required=True)
    d = sub.add_parser('make-data')
    d.add_argument('root')
    d.add_argument('--classes', type=int, default=8)
    d.add_argument('--train', type=int, default=64)
    d.add_argument('--val', type=int, default=16)
    d.add_argument('--size', type=int, default=224)
    c = sub.add_parser('check-run')
    c.add_argument('run_dir')
    c.add_argument('--epochs', type=int, required=True)
    c.add_argument('--steps-per-epoch', type=int, required=True)
    f = sub.add_parser('fast-step')
    f.add_argument('--device', default='cuda')
    f.add_argument('--out', required=True)
    s = sub.add_parser('summary')
    s.add_argument('out_dir')
    args = p.parse_args(argv)
    if args.command == 'make-data':
        return make_data(args.root, args.classes, args.train, args.val, args.size)
    if args.command == 'check-run':
        return check_run(args.run_dir, args.epochs, args.steps_per_epoch)
    if args.command == 'fast-step':
        return fast_step_check(args.device, args.out)
    return summary(args.out_dir)


if __name__ == '__main__':
    sys.exit(main())
