"""Helpers of benchmarks/gpu_check.sh: data, run checks, the fast-step check, dependencies, the report.

    python benchmarks/gpu_check.py make-data ROOT [--classes 8 --train 64 --val 16 --size 224]
    python benchmarks/gpu_check.py check-run RUN_DIR --epochs E --steps-per-epoch S
    python benchmarks/gpu_check.py fast-step --device cuda --out FILE.json
    python benchmarks/gpu_check.py sigterm-resume RUN_DIR --stop-after N --epochs E --steps-per-epoch S \\
        --logs DIR -- python main_finetune.py ...
    python benchmarks/gpu_check.py install-missing --wheels .whl --target DIR
    python benchmarks/gpu_check.py pack REPORT_DIR OUT_DIR

make-data: an ImageFolder of JPEGs (class-coloured noise, so a model learns it in a few steps),
written by one process per CPU. check-run: a finished run folder holds every train_log.json
iteration exactly once, one val_log.json line per epoch and checkpoint.pth, so the logs of a run
that was stopped and resumed are continuous. fast-step: fast_step.TrainStep with CUDA graphs
against the same step eager (on CPU: the graphs' body run eagerly), see `fast_step_check`.
sigterm-resume: start the command, send it SIGTERM once the run has logged N steps (exit 3 and a
checkpoint expected), start it again (exit 0, resumed), then check-run. install-missing: the
packages gpu_check.sh needs that this Python lacks, from wheels, with `pip install --target` (a
system environment may be read-only; gpu_check.sh puts the target on PYTHONPATH). pack: what
OUT_DIR returns from the device, rewritten after every part: summary.json (every check's status),
gpu_check.log, and everything else of REPORT_DIR in one gpu_check.tar.gz (no checkpoints); then it
checks OUT_DIR against the device's limits on returned files. Each command exits 1 when its check fails.
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# part -> check-name prefixes, in the order gpu_check.sh runs them (most valuable first)
PARTS = {'setup': ('setup_',), 'fast_step': ('fast_step',), 'end_to_end': ('e2e_',), 'speed': ('speed_',),
         'profile': ('profile_',), 'data': ('data_',)}
# what a lent GPU machine returns from its output folder: files, size, depth, names
OUT_LIMITS = {'files': 8, 'file_bytes': 16 * 2 ** 20, 'total_bytes': 64 * 2 ** 20, 'folders_down': 2}
OUT_NAME = re.compile(r'^[A-Za-z0-9._-]+$')
ARCHIVE = 'gpu_check.tar.gz'
ARCHIVE_SKIP = ('.pth', '.tmp')  # checkpoints (1 GB each for ViT-B) and half-written files
ARCHIVE_MAX_FILE = 4 * 2 ** 20  # a bigger file is listed in the summary, not archived
LOG_TAIL_BYTES = 2 * 2 ** 20  # of gpu_check.log, returned loose as well


# --- data -----------------------------------------------------------------------------------------
def _write_images(job):
    folder, colour, count, size, seed = job
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    Path(folder).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = np.clip(colour + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(Path(folder) / f'{i:04d}.jpg', quality=90)


def make_data(root, classes, train, val, size, seed=0):
    import numpy as np
    from concurrent.futures import ProcessPoolExecutor
    colours = np.random.default_rng(seed).integers(30, 225, (classes, 3))  # one colour per class, both splits
    jobs = [(str(Path(root) / split / f'class_{c}'), colours[c], count, size, seed + 1 + 2 * c + (split == 'val'))
            for split, count in (('train', train), ('val', val)) for c in range(classes)]
    with ProcessPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
        list(pool.map(_write_images, jobs))
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
# A small ViT-B-shaped model (65 tokens) built from the ViT-B config, so that build_optimizer makes
# its layer-decay groups (12 here); clip 1.0 acts on most steps, so a stale clip factor shows too.
SMALL_OPTS = ('DATA.IMG_SIZE', '64', 'MODEL.VIT.PATCH_SIZE', '8', 'MODEL.VIT.EMBED_DIM', '128',
              'MODEL.VIT.DEPTH', '4', 'MODEL.VIT.NUM_HEADS', '4', 'MODEL.NUM_CLASSES', '10',
              'MODEL.DROP_PATH_RATE', '0.0', 'TRAIN.CLIP_GRAD', '1.0')
BASE_LR = 1e-3
# keys 65, 26, 13 tokens: each key's first step warms up, its second is captured, later ones replay
DROPS = (0.0, 0.6, 0.0, 0.6, 0.8, 0.6, 0.0, 0.8, 0.0, 0.6, 0.8, 0.0)
# a new LR every step, up and down (a replay that read a stale LR moves the weights differently)
LR_FACTORS = (1.0, 0.3, 1.6, 0.7, 1.3, 0.4, 1.8, 0.9, 0.5, 1.5, 0.6, 1.2)
OVERFLOW_AT = 6  # fp16: this step's loss is made inf; a replay, whose skip must happen on the device
# graphs against eager: relative to each statistic, and to each tensor's largest eager weight change
# (whose floor is the fp32 spacing of the weights, ~1e-7 near 1, against changes of ~1e-3). A replay
# that does nothing, or reads a stale LR, is off by 0.3 or more.
TOLERANCE = {'fp32': {'stats': 1e-5, 'change': 1e-3}, 'low': {'stats': 1e-2, 'change': 2e-2}}


class GraphBodyStep:
    """TrainStep's interface; with `cuda_graphs` every call runs the captured body eagerly: what a
    replay computes, on a device without CUDA graphs (the CPU stand-in; the tests use it)."""

    def __init__(self, model, criterion, optimizer, scaler, clip_grad, autocast_dtype, cuda_graphs=False):
        from fast_step import TrainStep
        self.step = TrainStep(model, criterion, optimizer, scaler, clip_grad, autocast_dtype)
        self.body = cuda_graphs
        self.graphs, self.warmed_up = {}, set()  # as TrainStep's: no capture happens here

    def __call__(self, samples, targets, key=None):
        if not self.body:
            return self.step(samples, targets, key=key)
        self.step._copy_inputs(samples, targets)
        with self.step._device_learning_rates():
            self.step._graphed_step()
        return self.step.static_stats


@contextmanager
def no_host_sync(enabled):
    """Within it, any host sync on CUDA raises (torch.cuda.set_sync_debug_mode('error'))."""
    import torch
    if not enabled:
        yield
        return
    torch.cuda.set_sync_debug_mode('error')
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(0)


def small_config(*opts):
    from config import get_config
    return get_config(argparse.Namespace(cfg=str(REPO / 'configs/vit-b/magnitude_cyclic_80_0.yaml'),
                                         opts=list(SMALL_OPTS) + list(opts)))


def train_steps(device, dtype, fp16, graphs, make_step=None, drops=DROPS, lr_factors=LR_FACTORS,
                overflow_at=None, one_batch=False, opts=()):
    """Train the small model over `drops` (one step each, a new LR per step in every group of
    build_optimizer; a batch per step, or one for all) -> {'stats': [steps, 2] loss and grad norm,
    'changes': {name: weight change}, 'graphs': graphs captured, 'overflow_skipped': bool or None}.
    Steps run with host syncs forbidden on CUDA, except a capture, whose torch.cuda.graph
    synchronises (a sync inside the captured step fails the capture itself)."""
    import torch
    import torch.nn.functional as F

    from fast_step import TrainStep
    from models import build_model
    from optimizer import build_optimizer
    config = small_config(*opts)
    torch.manual_seed(0)
    model = build_model(config).to(device).train()
    optimizer = build_optimizer(config, model)
    poison = torch.ones((), device=device)  # inf at the overflow step: no Python branch sees it

    def criterion(logits, targets):
        return F.cross_entropy(logits, targets) * poison

    scaler = torch.amp.GradScaler(device.type, enabled=fp16, init_scale=2.0 ** 12)
    make_step = make_step or (TrainStep if device.type == 'cuda' else GraphBodyStep)
    step = make_step(model, criterion, optimizer, scaler, config.TRAIN.CLIP_GRAD, dtype, cuda_graphs=graphs)
    names = [n for n, _ in model.named_parameters()]
    initial = [p.detach().clone() for p in model.parameters()]
    g = torch.Generator().manual_seed(1)
    size = config.DATA.IMG_SIZE
    batches = [(torch.randn(16, 3, size, size, generator=g).to(device),
                torch.randint(0, config.MODEL.NUM_CLASSES, (16,), generator=g).to(device))
               for _ in range(1 if one_batch else len(drops))]
    batches *= len(drops) if one_batch else 1
    cuda = device.type == 'cuda'
    stats, overflow_skipped = [], None
    for i, (drop, (x, y)) in enumerate(zip(drops, batches)):
        model.set_patch_drop_ratio(drop)
        for group in optimizer.param_groups:
            group['lr'] = BASE_LR * group['lr_scale'] * lr_factors[i]
        poison.fill_(float('inf') if i == overflow_at else 1.0)
        key = model.num_kept_tokens()
        capture = graphs and key in getattr(step, 'warmed_up', ()) and key not in getattr(step, 'graphs', {})
        before = [p.detach().clone() for p in model.parameters()] if i == overflow_at else None
        with no_host_sync(cuda and not capture):
            s = step(x, y, key=key)
        stats.append(s.detach().clone())  # a replay's result is overwritten by the next one
        if before is not None:
            overflow_skipped = all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    if cuda:
        torch.cuda.synchronize(device)
    return {'stats': torch.stack(stats).float().cpu(),
            'changes': {n: (p.detach() - p0).float().cpu() for n, p, p0 in zip(names, model.parameters(), initial)},
            'graphs': len(getattr(step, 'graphs', {})), 'overflow_skipped': overflow_skipped}


def compare_runs(reference, candidate, tolerance):
    """Problems (strings) and the worst relative errors of `candidate` against `reference`
    (train_steps results): per-step loss and gradient norm relative to the reference's, and each
    tensor's weight change relative to its largest reference change."""
    import torch
    problems = []
    ref, got = reference['stats'], candidate['stats']
    finite_ref, finite_got = torch.isfinite(ref).all(dim=1), torch.isfinite(got).all(dim=1)
    if not torch.equal(finite_ref, finite_got):
        problems.append(f'non-finite steps differ: eager {(~finite_ref).nonzero().flatten().tolist()}, '
                        f'graphs {(~finite_got).nonzero().flatten().tolist()}')
    both = finite_ref & finite_got
    rel = (got[both] - ref[both]).abs() / ref[both].abs().clamp_min(1e-12)  # [finite steps, 2]
    stat_err = rel.amax(dim=0).tolist()
    for col, label in enumerate(('loss', 'grad norm')):
        if stat_err[col] > tolerance['stats']:
            worst = both.nonzero().flatten()[rel[:, col].argmax()].item()
            problems.append(f"{label} differs by {stat_err[col]:.3g} (relative, tolerance {tolerance['stats']:g}) "
                            f'at step {worst}')
    change_err, worst_name = 0.0, None
    for name, r in reference['changes'].items():
        c = candidate['changes'][name]
        scale = r.abs().max().item()
        if scale > 0:
            err = (c - r).abs().max().item() / scale
        else:  # eager left it alone
            err = 0.0 if c.abs().max().item() == 0 else float('inf')
        if err > change_err:
            change_err, worst_name = err, name
    if change_err > tolerance['change']:
        problems.append(f'weight changes differ by {change_err:.3g} of the largest eager change '
                        f'(tolerance {tolerance["change"]:g}), worst in {worst_name}')
    return problems, {'loss_rel_err': stat_err[0], 'grad_norm_rel_err': stat_err[1],
                      'weight_change_rel_err': change_err, 'worst_tensor': worst_name}


def rng_replays_differ(device, dtype, make_step=None):
    """Drop path and random selection under graphs: with the LR at 0 (weights fixed) and one batch,
    every replay's loss and gradient norm must differ, i.e. each replay draws new random numbers
    -> (problems, rows)."""
    problems, rows = [], []
    steps = 5  # warm-up, capture (and its replay), three replays
    for label, drop, opts in (('drop path', 0.0, ('MODEL.DROP_PATH_RATE', '0.3')),
                              ('random selection', 0.6, ('TRAIN.PATCH_DROP_FUNC', 'random'))):
        run = train_steps(device, dtype, False, True, make_step, drops=(drop,) * steps, lr_factors=(0.0,) * steps,
                          one_batch=True, opts=opts)
        stats = [tuple(s) for s in run['stats'][1:].tolist()]  # the capture's replay and the replays after it
        weights_fixed = all(c.abs().max().item() == 0 for c in run['changes'].values())
        rows.append({'randomness': label, 'replay_loss_and_grad_norm': stats, 'weights_fixed': weights_fixed})
        if len(set(stats)) != len(stats):
            problems.append(f'{label}: two replays gave the same loss and gradient norm: '
                            'the random numbers did not advance')
        if not weights_fixed:
            problems.append(f'{label}: weights moved at LR 0, so equal or different losses prove nothing')
    return problems, rows


def fast_step_check(device_name, out, make_step=None):
    """CUDA graphs against eager on the small model: bf16, and fp16 with the GradScaler (one step
    made to overflow: skipped in both); on CPU fp32 with the graphs' body run eagerly. Eager runs
    twice, so the report shows eager's own run-to-run noise next to the graphs' difference."""
    import torch
    device = torch.device(device_name)
    cuda = device.type == 'cuda'
    cases = [('bfloat16', torch.bfloat16, False), ('float16', torch.float16, True)] if cuda else [('fp32', None, False)]
    problems, rows = [], []
    for label, dtype, fp16 in cases:
        tolerance = TOLERANCE['fp32' if dtype is None else 'low']
        start = time.perf_counter()
        overflow_at = OVERFLOW_AT if fp16 else None
        try:
            eager = train_steps(device, dtype, fp16, False, make_step, overflow_at=overflow_at)
            eager_again = train_steps(device, dtype, fp16, False, make_step, overflow_at=overflow_at)
            graphs = train_steps(device, dtype, fp16, True, make_step, overflow_at=overflow_at)
        except RuntimeError as e:  # a host sync under set_sync_debug_mode('error'), or a failed capture
            problems.append(f'{label}: {e}'.split('\n')[0])
            rows.append({'dtype': label, 'error': str(e)})
            continue
        found, errors = compare_runs(eager, graphs, tolerance)
        _, noise = compare_runs(eager, eager_again, tolerance)
        problems += [f'{label}: {p}' for p in found]
        if fp16 and not (eager['overflow_skipped'] and graphs['overflow_skipped']):
            problems.append(f"{label}: the overflowing step changed the weights (eager skipped: "
                            f"{eager['overflow_skipped']}, graphs skipped: {graphs['overflow_skipped']})")
        keys = len(set(DROPS))
        if cuda and graphs['graphs'] != keys:
            problems.append(f"{label}: {graphs['graphs']} graphs captured, expected {keys} (one per kept-token count)")
        rows.append({'dtype': label, 'steps': len(DROPS), 'graphs_captured': graphs['graphs'], 'tolerance': tolerance,
                     'graphs_vs_eager': errors, 'eager_vs_eager': noise,
                     'overflow_step_skipped': [eager['overflow_skipped'], graphs['overflow_skipped']] if fp16 else None,
                     'seconds': time.perf_counter() - start})
    try:
        rng_problems, rng_rows = rng_replays_differ(device, torch.bfloat16 if cuda else None, make_step)
    except RuntimeError as e:
        rng_problems, rng_rows = [f'random numbers: {e}'.split('\n')[0]], []
    problems += rng_problems
    report = {'device': device_name, 'host_syncs_forbidden': cuda, 'rows': rows, 'rng': rng_rows,
              'problems': problems}
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=1) + '\n')
    print(json.dumps(report, indent=1))
    return 1 if problems else 0


# --- SIGTERM and resume ---------------------------------------------------------------------------
def count_lines(path):
    try:
        with open(path) as f:
            return sum(1 for line in f if line.strip())
    except FileNotFoundError:
        return 0


def sigterm_resume(run_dir, command, stop_after, epochs, steps_per_epoch, logs, poll_s=0.05):
    """Run `command`; SIGTERM it once run_dir/train_log.json has `stop_after` lines (exit 3 and a
    checkpoint expected); run it again (exit 0, 'resuming at epoch E, step S'); check the logs."""
    logs = Path(logs)
    logs.mkdir(parents=True, exist_ok=True)
    train_log = Path(run_dir) / 'train_log.json'
    with open(logs / 'first.log', 'w') as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)  # the signal goes to python itself
        while proc.poll() is None and count_lines(train_log) < stop_after:
            time.sleep(poll_s)
        if proc.poll() is not None:
            print(f'first run ended (exit {proc.returncode}) before {stop_after} steps were logged')
            return 1
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait()
    first = (logs / 'first.log').read_text()
    print(f'first run: SIGTERM after {count_lines(train_log)} logged steps, exit {rc} (3 expected)')
    stopped = re.search(r'SIGTERM received: checkpoint written (at epoch \d+, step \d+|after epoch \d+)', first)
    if rc != 3 or not stopped:
        print('the first run did not stop with a checkpoint')
        return 1
    with open(logs / 'second.log', 'w') as out:
        rc = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode
    resumed = re.search(r'resuming at epoch \d+, step \d+', (logs / 'second.log').read_text())
    print(f"first run: {stopped.group(0)}; second run: exit {rc} (0 expected), "
          f"{resumed.group(0) if resumed else 'no resume line'}")
    if rc != 0 or not resumed:
        return 1
    return check_run(run_dir, epochs, steps_per_epoch)


# --- dependencies ---------------------------------------------------------------------------------
# import name -> distribution: what the scripts gpu_check.sh runs import beyond torch
REQUIRED = {'yacs': 'yacs', 'termcolor': 'termcolor', 'timm': 'timm', 'yaml': 'PyYAML', 'PIL': 'pillow',
            'numpy': 'numpy', 'torchvision': 'torchvision', 'matplotlib': 'matplotlib'}


def install_missing(wheels, target, required=None):
    """pip install --no-index --no-deps --target `target` the distributions of `required` whose
    module this Python cannot import, from the wheel folder `wheels`; -> exit status."""
    import importlib.util
    required = REQUIRED if required is None else required
    missing = [dist for module, dist in required.items() if importlib.util.find_spec(module) is None]
    if not missing:
        print('nothing to install: every package is there')
        return 0
    if not Path(wheels).is_dir():
        print(f"missing: {' '.join(missing)}, and no wheel folder {wheels} (benchmarks/fetch_wheels.sh fills it)")
        return 1
    pip = [sys.executable, '-m', 'pip', 'install', '-q', '--no-index', '--no-deps', '--no-compile', '--upgrade',
           '--disable-pip-version-check', '--find-links', str(wheels), '--target', str(target)]
    result = subprocess.run(pip + missing, capture_output=True, text=True)
    print(f"missing: {' '.join(missing)}; pip install --target {target}: exit {result.returncode}")
    if result.returncode:
        print(result.stdout + result.stderr)
    return 1 if result.returncode else 0


# --- report ---------------------------------------------------------------------------------------
def read_statuses(report_dir):
    statuses = {}
    for path in sorted((Path(report_dir) / 'status').glob('*.json')):
        entry = json.loads(path.read_text())
        statuses[entry['name']] = entry
    return statuses


def part_status(entries):
    states = {e['status'] for e in entries.values()}
    if not entries:
        return 'not run'
    if 'fail' in states:
        return 'fail'
    if 'not_reached' in states:
        return 'incomplete'
    return 'pass' if 'pass' in states else 'skipped'


def summary(report_dir, meta=None):
    """summary.json's content: one status per part and per check (status/*.json)."""
    statuses = read_statuses(report_dir)
    parts = {}
    for part, prefixes in PARTS.items():
        entries = {n: e for n, e in statuses.items() if n.startswith(prefixes)}
        parts[part] = {'status': part_status(entries), 'checks': entries}
    other = {n: e for n, e in statuses.items() if not any(n.startswith(p) for ps in PARTS.values() for p in ps)}
    return {'all_pass': all(p['status'] == 'pass' for p in parts.values()), **(meta or {}), 'parts': parts,
            'other': other}


def _write_atomic(path, data):
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_bytes(data)
    os.replace(tmp, path)


def out_problems(out_dir):
    """Ways in which out_dir breaks the device's limits on what comes back (OUT_LIMITS)."""
    out_dir = Path(out_dir)
    files = [p for p in out_dir.rglob('*') if not p.is_dir()]
    problems = []
    if len(files) > OUT_LIMITS['files']:
        problems.append(f"{len(files)} files, at most {OUT_LIMITS['files']} come back")
    total = 0
    for p in files:
        rel = p.relative_to(out_dir)
        if p.is_symlink() or not p.is_file():
            problems.append(f'{rel}: not a plain file')
            continue
        size = p.stat().st_size
        total += size
        if size > OUT_LIMITS['file_bytes']:
            problems.append(f'{rel}: {size} bytes, over {OUT_LIMITS["file_bytes"]}')
        if len(rel.parts) - 1 > OUT_LIMITS['folders_down']:
            problems.append(f"{rel}: more than {OUT_LIMITS['folders_down']} folders down")
        if not all(OUT_NAME.match(part) for part in rel.parts):
            problems.append(f'{rel}: a name with characters other than letters, digits, ".", "_", "-"')
    if total > OUT_LIMITS['total_bytes']:
        problems.append(f"{total} bytes in all, over {OUT_LIMITS['total_bytes']}")
    return problems


def pack(report_dir, out_dir, meta=None):
    """OUT_DIR <- summary.json, gpu_check.log (its last 2 MiB) and gpu_check.tar.gz (REPORT_DIR
    without checkpoints); each replaced atomically, so a run killed mid-pack leaves the last full set.
    -> 1 if OUT_DIR breaks the device's limits."""
    report_dir, out_dir = Path(report_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    left_out = []
    tmp = out_dir / (ARCHIVE + '.tmp')
    with tarfile.open(tmp, 'w:gz', compresslevel=6) as tar:
        for path in sorted(report_dir.rglob('*')):
            if not path.is_file() or path.is_symlink() or path.name.endswith(ARCHIVE_SKIP):
                continue
            if path.stat().st_size > ARCHIVE_MAX_FILE:
                left_out.append(f'{path.relative_to(report_dir)} ({path.stat().st_size} bytes)')
                continue
            tar.add(path, arcname=str(Path('gpu_check') / path.relative_to(report_dir)), recursive=False)
    os.replace(tmp, out_dir / ARCHIVE)
    result = summary(report_dir, meta)
    versions = report_dir / 'versions.json'  # written by gpu_check.sh's setup
    if versions.exists():
        result['versions'] = json.loads(versions.read_text())
    result['archive'] = {'name': ARCHIVE, 'left_out': left_out}
    _write_atomic(out_dir / 'summary.json', (json.dumps(result, indent=1) + '\n').encode())
    log = report_dir / 'gpu_check.log'
    if log.exists():
        with open(log, 'rb') as f:
            f.seek(max(0, log.stat().st_size - LOG_TAIL_BYTES))
            _write_atomic(out_dir / 'gpu_check.log', f.read())
    problems = out_problems(out_dir)
    for problem in problems:
        print(f'OUT_DIR {out_dir}: {problem}', file=sys.stderr)
    return 1 if problems else 0


def print_summary(out_dir):
    result = json.loads((Path(out_dir) / 'summary.json').read_text())
    for part, entry in result['parts'].items():
        checks = ', '.join(f"{n} {e['status']}" for n, e in entry['checks'].items())
        print(f"{part:11s} {entry['status']:10s} {checks}")
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
    t = sub.add_parser('sigterm-resume')
    t.add_argument('run_dir')
    t.add_argument('--stop-after', type=int, required=True, help='logged steps before the SIGTERM')
    t.add_argument('--epochs', type=int, required=True)
    t.add_argument('--steps-per-epoch', type=int, required=True)
    t.add_argument('--logs', required=True, help='folder for first.log and second.log')
    i = sub.add_parser('install-missing')
    i.add_argument('--wheels', default='.whl')
    i.add_argument('--target', required=True)
    k = sub.add_parser('pack')
    k.add_argument('report_dir')
    k.add_argument('out_dir')
    k.add_argument('--meta', default='{}', help='JSON object added to summary.json')
    k.add_argument('--print', action='store_true', help='then print one line per part; exit 1 unless all pass')
    argv = sys.argv[1:] if argv is None else list(argv)
    cmd = argv[argv.index('--') + 1:] if '--' in argv else []  # sigterm-resume's training command
    args = p.parse_args(argv[:len(argv) - len(cmd) - 1] if '--' in argv else argv)
    if args.command == 'make-data':
        return make_data(args.root, args.classes, args.train, args.val, args.size)
    if args.command == 'check-run':
        return check_run(args.run_dir, args.epochs, args.steps_per_epoch)
    if args.command == 'fast-step':
        return fast_step_check(args.device, args.out)
    if args.command == 'sigterm-resume':
        if not cmd:
            p.error('sigterm-resume: give the training command after --')
        return sigterm_resume(args.run_dir, cmd, args.stop_after, args.epochs, args.steps_per_epoch, args.logs)
    if args.command == 'install-missing':
        return install_missing(args.wheels, args.target)
    status = pack(args.report_dir, args.out_dir, json.loads(args.meta))
    if args.print:  # and exit 1 unless every part passed
        status = print_summary(args.out_dir) or status
    return status


if __name__ == '__main__':
    sys.exit(main())
