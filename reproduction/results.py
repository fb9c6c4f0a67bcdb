"""The finished runs as read back from <out>/runs, and the numbers measured from them."""
import os
from dataclasses import dataclass, field

import numpy as np
import yaml

from reproduction.plan import CONFIG_FILE, PRETRAIN_RUN, plan_runs
from viz.common import (IMAGE_PATCHES, PATCH_DISTRIBUTION, SWEEP, TRAIN_FIELDS, TRAIN_LOG, VAL_FIELDS, VAL_LOG,
                        keep_ratio, read_json, read_sweep, read_train_log, read_val_log)

INK_THRESHOLD = 0.3  # a patch is on the digit when its brightest pixel exceeds this (0 black, 1 white)


@dataclass
class RunResult:
    """One finished run as read from <out>/runs/<name>: logs as viz.common reads them (dicts of arrays)."""
    key: str
    seed: int
    train: dict
    val: dict
    sweep: dict
    config: dict = field(default_factory=dict)
    distribution: dict = None
    image_patches: dict = None


def read_run(run_dir, key, seed, extras=False):
    """The RunResult of the finished run in `run_dir`; `extras`: image_patches.json and patch_distribution.json
    too, where present."""
    found = {}
    for name, attr in ((PATCH_DISTRIBUTION, 'distribution'), (IMAGE_PATCHES, 'image_patches')):
        path = os.path.join(run_dir, name)
        if extras and os.path.exists(path):
            found[attr] = read_json(path)
    with open(os.path.join(run_dir, CONFIG_FILE)) as f:
        config = yaml.safe_load(f)
    return RunResult(key, seed, train=read_train_log(os.path.join(run_dir, TRAIN_LOG), TRAIN_FIELDS + ('cpu_time',)),
                     val=read_val_log(os.path.join(run_dir, VAL_LOG), VAL_FIELDS),
                     sweep=read_sweep(os.path.join(run_dir, SWEEP), ('acc1', 'throughput', 'num_images')),
                     config=config, **found)


def load_results(out, plan):
    """{setting key: [RunResult per seed]} from <out>/runs."""
    results = {}
    for run in plan_runs(plan):
        results.setdefault(run.setting.key, []).append(
            read_run(os.path.join(out, 'runs', run.name), run.setting.key, run.seed, run.extras))
    return results


def load_pretraining(out, name=PRETRAIN_RUN):
    """{'config', 'steps', 'final_loss'} of the pre-training in <out>/runs/<name>, or None if absent; the
    final loss is the mean reconstruction loss of its last epoch (train_log.json `loss` at its last step)."""
    run_dir = os.path.join(out, 'runs', name)
    if not os.path.exists(os.path.join(run_dir, TRAIN_LOG)):
        return None
    with open(os.path.join(run_dir, CONFIG_FILE)) as f:
        config = yaml.safe_load(f)
    log = read_train_log(os.path.join(run_dir, TRAIN_LOG), ('loss', 'time'))
    return {'config': config, 'steps': len(log['loss']), 'final_loss': float(log['loss'][-1]),
            'seconds': float(np.sum(log['time']))}


def training_seconds(run):
    """Wall-clock seconds of training: the sum of the per-iteration times (data loading included)."""
    return float(np.sum(run.train['time']))


def mean_keep_ratio(run):
    return float(np.mean(keep_ratio(run.train['patch_drop_ratio'])))


def final_top1(run):
    """Validation top-1 at rho = 1 after the last epoch."""
    return float(run.val['acc1'][-1])


def sweep_top1(run, rho):
    """Top-1 of the final checkpoint at keep rate `rho`, or None when the sweep did not measure it."""
    match = keep_ratio(run.sweep['drop_ratio']) == round(rho, 6)
    return float(run.sweep['acc1'][match][0]) if match.any() else None


def mean_std(values):
    """(mean, sample standard deviation; NaN for a single value)."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else float('nan')


def gap(a, b):
    """(mean of a − mean of b, median of a − median of b): every comparison of two schedules is judged on
    both, so that one seed far from the others cannot decide a verdict on its own."""
    return float(np.mean(a) - np.mean(b)), float(np.median(a) - np.median(b))



def present(results, keys):
    return [key for key in keys if results.get(key)]


def model_scale(results):
    """{'tokens', 'depth', 'steps'} of the baseline's first run (CLS included; optimizer steps)."""
    run = results['baseline'][0]
    vit, size = run.config['MODEL']['VIT'], run.config['DATA']['IMG_SIZE']
    return {'tokens': (size // vit['PATCH_SIZE']) ** 2 + 1, 'depth': vit['DEPTH'], 'steps': len(run.train['time'])}



def iteration_ms_by_rho(runs):
    """{rho: (iterations, median ms per iteration)} over all iterations of `runs` (the median: CPU timings
    have outliers)."""
    rho = np.concatenate([keep_ratio(r.train['patch_drop_ratio']) for r in runs])
    seconds = np.concatenate([r.train['time'] for r in runs])
    return {float(level): (int(np.sum(rho == level)), float(np.median(seconds[rho == level]) * 1000))
            for level in np.unique(rho)}


def interleaved_time_ratio(runs):
    """The runs' time over what the same iterations would take at rho = 1, from their own median time per
    iteration at each rho: sum_rho n_rho t_rho / (N t_1). Cyclic visits every rho in every epoch, so a change
    in machine load between runs, which skews comparisons of whole runs, cancels here. None without rho 1."""
    per_rho = iteration_ms_by_rho(runs)
    if 1.0 not in per_rho:
        return None
    total = sum(n * ms for n, ms in per_rho.values())
    return total / (sum(n for n, _ in per_rho.values()) * per_rho[1.0][1])


def num_val_images(results):
    run = next(r for runs in results.values() for r in runs)
    return int(run.sweep['num_images'][0])



def sweep_values(runs, rho):
    """Top-1 at keep rate `rho` of each run whose sweep measured it."""
    return [v for v in (sweep_top1(r, rho) for r in runs) if v is not None]


def sweep_rhos(results):
    return sorted({float(v) for runs in results.values() for r in runs for v in keep_ratio(r.sweep['drop_ratio'])},
                  reverse=True)



def ink_patches(data):
    """(B, grid_h, grid_w) bool: patches whose brightest pixel exceeds INK_THRESHOLD, from image_patches.json."""
    from viz.image_patches import check_image_patches

    d = check_image_patches(data)
    images, p = d['images'].mean(axis=-1), d['patch_size']  # (B, H, W) grey in [0, 1]
    b, h, w = images.shape
    return images.reshape(b, h // p, p, w // p, p).max(axis=(2, 4)) > INK_THRESHOLD, d


def ink_shares(data, rho):
    """(share of kept patches on ink, share of all patches on ink), %, at keep rate `rho`; None if not recorded."""
    ink, d = ink_patches(data)
    match = np.flatnonzero(keep_ratio(d['drop_ratios']) == round(rho, 6))
    if not len(match):
        return None
    kept = d['masks'][match[0]]
    return 100.0 * float(ink[kept].mean()), 100.0 * float(ink.mean())


def centre_corners(data, rho):
    """(centre %, corners %) of images keeping those positions at `rho`, or None if not recorded."""
    from viz.patch_distribution import centre_and_corners, kept_fractions

    drop_ratios, fractions = kept_fractions(data)
    match = np.flatnonzero(keep_ratio(drop_ratios) == round(rho, 6))
    if not len(match):
        return None
    centre, corners = centre_and_corners(fractions[match[0]])
    return 100.0 * centre, 100.0 * corners
