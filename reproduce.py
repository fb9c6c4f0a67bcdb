"""Reproduce the paper's five claims at laptop scale, on the digits demo, and write the results with a README.

    python reproduce.py                          # full: 5 schedules x 3 seeds, 30 epochs -> results/
    python reproduce.py --quick                  # a few minutes: smaller everything -> results_quick/
    python reproduce.py --seeds 0 1 2 --epochs 30 --out results --work output/reproduce

Trains the baseline (configs/demo/baseline.yaml), Fixed(0.6) (magnitude_fixed_40.yaml), Linear(0.2, 1.0)
(magnitude_linear.yaml), Cyclic(0.2, 1.0) with magnitude selection (magnitude_cyclic.yaml) and Cyclic
with random selection (random_cyclic.yaml), one seed after another, each by launching main_finetune.py
as a plain one-process subprocess (OMP_NUM_THREADS removed, so torch uses every core; the runs go one
at a time, since two runs on 2 cores only slow each other). On every final checkpoint it runs
sweep_drop.py (rho 1.0 to 0.2), and on the first seed of each schedule image_patches.py and
patch_distribution.py.

Wall time on 2 quiet CPU cores: 54 minutes for the full command, measured for the committed results/
(2.5 to 4 minutes of training per run x 15 runs, about 13 s per sweep, 10 s each for image_patches.py
and patch_distribution.py, most of which is importing torch);
--quick takes about 4 minutes (1 seed, 2 epochs, 16 px images, a 2-block model; `--quick --seeds 0 1`
also draws the spread over seeds). Progress (run k of n, elapsed, ETA) is printed as it goes.

Outputs:
  <work>/demo/<run>/      everything the scripts write, checkpoints included (default work folder:
                          output/reproduce, or output/reproduce_quick with --quick; output/ is ignored by git)
  <work>/logs/<run>.<stage>.txt   each subprocess's console output
  <out>/runs/<run>/       the small files of each run: config.yaml, train_log.json, val_log.json,
                          sweep_drop.json, and for the first seed image_patches.json, patch_distribution.json
  <out>/figures/*.png     overview, sweep over rho (mean and min-max over seeds), training curves against
                          wall-clock time, time per iteration by rho, kept patches, patch distribution (viz/)
  <out>/timings.json      seconds each stage of each run took (kept across resumed invocations)
  <out>/README.md         a table per claim with the numbers measured here next to the paper's, and a
                          verdict per claim computed from them with the criterion stated
Run names are <config>_seed<k>, e.g. magnitude_cyclic_seed1. A run whose outputs are complete (in
<out>/runs, or else in <work>) is skipped, so a killed reproduce.py continues where it stopped when
run again with the same arguments; outputs made with other settings (epochs, image size) are an
error rather than silently mixed in.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import yaml

from viz.common import (IMAGE_PATCHES, PATCH_DISTRIBUTION, SWEEP, TRAIN_FIELDS, TRAIN_LOG, VAL_FIELDS, VAL_LOG,
                        VizInputError, keep_ratio, read_json, read_sweep, read_train_log, read_val_log,
                        save_figure)

ROOT = os.path.dirname(os.path.abspath(__file__))
MODEL_NAME = 'demo'  # MODEL.NAME of configs/demo: the first level of main_finetune.py's output folder
CONFIG_FILE = 'config.yaml'
TIMINGS_FILE = 'timings.json'


class ReproduceError(RuntimeError):
    """A stage failed or an output folder holds a different experiment; the message says which and what to do."""


# -----------------------------------------------------------------------------
# What is run
# -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    key: str     # short name used in tables and by the claims
    config: str  # file in configs/demo/
    label: str   # legend and table label


SETTINGS = (
    Setting('baseline', 'baseline.yaml', 'baseline'),
    Setting('fixed', 'magnitude_fixed_40.yaml', 'Fixed(0.6)'),
    Setting('linear', 'magnitude_linear.yaml', 'Linear(0.2, 1.0)'),
    Setting('cyclic', 'magnitude_cyclic.yaml', 'Cyclic(0.2, 1.0)'),
    Setting('random_cyclic', 'random_cyclic.yaml', 'Cyclic(0.2, 1.0), random'),
)
SETTING_BY_KEY = {s.key: s for s in SETTINGS}
PAPER_SCHEDULES = ('fixed', 'linear', 'cyclic')  # the PSS schedules the paper reports numbers for
PSS_SETTINGS = ('fixed', 'linear', 'cyclic', 'random_cyclic')

FULL_SWEEP_DROP_RATIOS = tuple(round(0.1 * i, 1) for i in range(9))  # rho 1.0, 0.9, ..., 0.2
GRID_DROP_RATIOS = (0.0, 0.2, 0.4, 0.6, 0.8)  # the training grid: rho 1.0, 0.8, ..., 0.2
# patch_distribution.py's default adds 0.0 first (the original's list); every image keeps every position
# there, so it tells nothing, and the committed results/ were made without it
DISTRIBUTION_DROP_RATIOS = (0.2, 0.4, 0.6, 0.8)


@dataclass(frozen=True)
class Plan:
    seeds: tuple
    epochs: int
    opts: tuple = ()  # extra KEY VALUE overrides for every script (model and image size in --quick)
    sweep_drop_ratios: tuple = FULL_SWEEP_DROP_RATIOS
    image_drop_ratios: tuple = GRID_DROP_RATIOS
    distribution_drop_ratios: tuple = DISTRIBUTION_DROP_RATIOS

    def overrides(self, seed):
        """{config key: value} that every script of the run with `seed` gets through --opts."""
        pairs = dict(zip(self.opts[::2], self.opts[1::2]))
        pairs.update({'SEED': str(seed), 'TRAIN.EPOCHS': str(self.epochs)})
        return pairs


FULL_SEEDS, FULL_EPOCHS = (0, 1, 2), 30
# --quick: 16 px digits in 4 px patches (17 tokens), a 48-wide 2-block ViT, 2 epochs, 1 seed, the
# sweep on the 0.2 grid only. Enough to run every stage and every figure; not to judge the claims.
QUICK_SEEDS, QUICK_EPOCHS = (0,), 2
QUICK_OPTS = ('DATA.IMG_SIZE', '16', 'MODEL.VIT.PATCH_SIZE', '4', 'MODEL.VIT.EMBED_DIM', '48',
              'MODEL.VIT.DEPTH', '2', 'MODEL.VIT.NUM_HEADS', '3')


def make_plan(quick=False, seeds=None, epochs=None):
    """The full or --quick plan, with --seeds / --epochs applied. The warm-up (3 epochs in
    configs/demo) is shortened to a tenth of the epochs for runs under 30 epochs, at least 1 epoch."""
    epochs = epochs if epochs is not None else (QUICK_EPOCHS if quick else FULL_EPOCHS)
    if epochs < 1:
        raise ReproduceError(f'--epochs must be at least 1, got {epochs}')
    seeds = tuple(seeds) if seeds else (QUICK_SEEDS if quick else FULL_SEEDS)
    if len(set(seeds)) != len(seeds):
        raise ReproduceError(f'--seeds: {list(seeds)} repeats a seed')
    opts = QUICK_OPTS if quick else ()
    if epochs < FULL_EPOCHS:
        opts += ('TRAIN.WARMUP_EPOCHS', str(max(1, epochs // 10)))
    if quick:
        return Plan(seeds, epochs, opts, sweep_drop_ratios=GRID_DROP_RATIOS)
    return Plan(seeds, epochs, opts)


def run_name(setting, seed):
    return f'{os.path.splitext(setting.config)[0]}_seed{seed}'


@dataclass
class Run:
    setting: Setting
    seed: int
    extras: bool  # image_patches.py and patch_distribution.py too (the first seed of each schedule)

    @property
    def name(self):
        return run_name(self.setting, self.seed)


def plan_runs(plan):
    """Seed-major order, so that a stopped reproduce.py has every schedule at the first seeds."""
    return [Run(setting, seed, extras=seed == plan.seeds[0]) for seed in plan.seeds for setting in SETTINGS]


# -----------------------------------------------------------------------------
# Skip if done
# -----------------------------------------------------------------------------
def check_config(run_dir, expected):
    """ReproduceError if <run_dir>/config.yaml was resolved with other values for the `expected`
    {key: value} overrides: outputs of another experiment must not be mixed into this one."""
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.exists(path):
        return
    with open(path) as f:
        config = yaml.safe_load(f)
    for key, value in expected.items():
        node = config
        for part in key.split('.'):
            node = node.get(part) if isinstance(node, dict) else None
        if node != yaml.safe_load(str(value)):
            raise ReproduceError(f"{path}: {key} is {node!r}, but this command sets {value}; the folder holds "
                                 f"another experiment: pass another --out / --work, or delete '{run_dir}'")


def logged_epochs(run_dir):
    """The epochs in <run_dir>/val_log.json (each validated epoch is complete), or an empty set."""
    path = os.path.join(run_dir, VAL_LOG)
    if not os.path.exists(path):
        return set()
    try:
        return set(read_val_log(path, ('epoch',))['epoch'].tolist())
    except VizInputError:
        return set()  # half a line after a crash: main_finetune.py truncates it when it resumes


def train_done(run_dir, epochs):
    done = logged_epochs(run_dir)
    if done - set(range(epochs)):
        raise ReproduceError(f"{os.path.join(run_dir, VAL_LOG)} has epochs up to {max(done)}, but this command "
                             f"trains {epochs}: pass another --out / --work, or delete '{run_dir}'")
    return done == set(range(epochs))


def _ratios(values):
    return {round(float(v), 6) for v in values}


def covers(path, drop_ratios, read_ratios):
    """Whether the output file at `path` exists, reads, and lists every one of `drop_ratios`
    (`read_ratios(path)` gives the ratios it lists)."""
    if not os.path.exists(path):
        return False
    try:
        return _ratios(drop_ratios) <= _ratios(read_ratios(path))
    except VizInputError:
        return False


def sweep_ratios(path):
    return read_sweep(path, ('drop_ratio',))['drop_ratio']


def json_ratios(path):
    """The drop ratios of image_patches.json / patch_distribution.json."""
    return read_json(path, ('drop_ratios',))['drop_ratios']


STAGES = ('train', 'sweep', 'image_patches', 'patch_distribution')
STAGE_OUTPUTS = {'sweep': SWEEP, 'image_patches': IMAGE_PATCHES, 'patch_distribution': PATCH_DISTRIBUTION}


def missing_stages(run_dir, plan, run):
    """The stages of `run` whose outputs in `run_dir` are absent or incomplete, in pipeline order.
    Retraining invalidates everything computed from the old checkpoint, so 'train' brings all stages."""
    check_config(run_dir, plan.overrides(run.seed))
    stages = list(STAGES if run.extras else STAGES[:2])
    if not train_done(run_dir, plan.epochs):
        return stages
    done = {'train': True, 'sweep': covers(os.path.join(run_dir, SWEEP), plan.sweep_drop_ratios, sweep_ratios)}
    if run.extras:
        done['image_patches'] = covers(os.path.join(run_dir, IMAGE_PATCHES), plan.image_drop_ratios, json_ratios)
        done['patch_distribution'] = covers(os.path.join(run_dir, PATCH_DISTRIBUTION),
                                            plan.distribution_drop_ratios, json_ratios)
    return [stage for stage in stages if not done[stage]]


# -----------------------------------------------------------------------------
# Running
# -----------------------------------------------------------------------------
def stage_command(stage, run, plan, work):
    """The argument list (after the interpreter) that runs `stage` of `run`."""
    cfg = os.path.join('configs', 'demo', run.setting.config)
    opts = [item for pair in plan.overrides(run.seed).items() for item in pair]
    common = ['--cfg', cfg, '--output', work, '--tag', run.name, '--opts', *opts]
    if stage == 'train':
        return ['main_finetune.py', *common]
    checkpoint = os.path.join(work, MODEL_NAME, run.name, 'checkpoint.pth')
    ratios = {'sweep': plan.sweep_drop_ratios, 'image_patches': plan.image_drop_ratios,
              'patch_distribution': plan.distribution_drop_ratios}[stage]
    script = {'sweep': 'sweep_drop.py', 'image_patches': 'image_patches.py',
              'patch_distribution': 'patch_distribution.py'}[stage]
    return [script, *common, '--pretrained', checkpoint, '--drop-ratios', *map(str, ratios)]


def run_command(args, log_path):
    """Run `python <args>` in the repo root with its output in `log_path`; ReproduceError if it fails."""
    env = {k: v for k, v in os.environ.items() if k != 'OMP_NUM_THREADS'}  # let torch use every core
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, 'w') as log:
        process = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            status = process.wait()
        except KeyboardInterrupt:
            # The child got the same Ctrl-C: main_finetune.py finishes its step and writes a checkpoint.
            process.wait()
            raise
    if status != 0:
        with open(log_path) as f:
            tail = ''.join(f.readlines()[-15:])
        raise ReproduceError(f"'python {' '.join(args)}' exited with status {status}; the end of {log_path}:\n{tail}")


def copy_small_files(src_dir, dst_dir, run):
    """Copy the run's logs, config and JSON results (no checkpoints, no PDFs) to dst_dir."""
    os.makedirs(dst_dir, exist_ok=True)
    names = [CONFIG_FILE, TRAIN_LOG, VAL_LOG, SWEEP] + ([IMAGE_PATCHES, PATCH_DISTRIBUTION] if run.extras else [])
    for name in names:
        src = os.path.join(src_dir, name)
        if not os.path.exists(src):
            raise ReproduceError(f"'{src}' is missing after its stage ran")
        shutil.copyfile(src, os.path.join(dst_dir, name))


def format_seconds(seconds):
    return str(datetime.timedelta(seconds=int(round(seconds))))


def estimate_seconds(stage_lists, stage_seconds):
    """Seconds for the stages in `stage_lists` (one list per run) at the mean duration of each stage in
    `stage_seconds` {stage: [seconds]}; None while a stage has not been timed yet."""
    total = 0.0
    for stages in stage_lists:
        for stage in stages:
            if not stage_seconds.get(stage):
                return None
            total += float(np.mean(stage_seconds[stage]))
    return total


def progress_line(k, n, name, stages, elapsed, eta_seconds):
    """'[k/n] name: stages (elapsed ..., ETA ...)'."""
    eta = 'after the first run' if eta_seconds is None else format_seconds(eta_seconds)
    return f'[{k}/{n}] {name}: {", ".join(stages)} (elapsed {format_seconds(elapsed)}, ETA {eta})'


def read_timings(out):
    path = os.path.join(out, TIMINGS_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def write_timings(out, timings):
    os.makedirs(out, exist_ok=True)
    tmp = os.path.join(out, TIMINGS_FILE + '.tmp')
    with open(tmp, 'w') as f:
        json.dump(timings, f, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(out, TIMINGS_FILE))


def execute(plan, out, work, runner=run_command, log=print):
    """Run every stage not yet done and copy each finished run's small files to <out>/runs.
    Returns {'ran': [(run, stages)], 'skipped': [run names]}."""
    runs = plan_runs(plan)
    timings = read_timings(out)
    start = time.time()
    stage_seconds, ran, skipped = {}, [], []
    for k, run in enumerate(runs, 1):
        out_dir = os.path.join(out, 'runs', run.name)
        if not missing_stages(out_dir, plan, run):
            skipped.append(run.name)
            log(f'[{k}/{len(runs)}] {run.name}: done, skipped')
            continue
        work_dir = os.path.join(work, MODEL_NAME, run.name)
        stages = missing_stages(work_dir, plan, run)
        # the ETA assumes that every later run has all its stages to do (skipped ones make it shorter)
        later = [STAGES if r.extras else STAGES[:2] for r in runs[k:]]
        eta = estimate_seconds([stages] + later, stage_seconds)
        log(progress_line(k, len(runs), run.name, stages or ['copy'], time.time() - start, eta))
        if 'train' in stages:  # stale results of an earlier checkpoint must not survive a retraining
            for name in STAGE_OUTPUTS.values():
                if os.path.exists(os.path.join(work_dir, name)):
                    os.remove(os.path.join(work_dir, name))
        for stage in stages:
            stage_start = time.time()
            runner(stage_command(stage, run, plan, work), os.path.join(work, 'logs', f'{run.name}.{stage}.txt'))
            seconds = time.time() - stage_start
            stage_seconds.setdefault(stage, []).append(seconds)
            timings.setdefault(run.name, {})[stage] = seconds
            write_timings(out, timings)
        left = missing_stages(work_dir, plan, run)
        if left:
            raise ReproduceError(f"{run.name}: {', '.join(left)} left incomplete output in '{work_dir}'")
        copy_small_files(work_dir, out_dir, run)
        if stages:
            ran.append((run.name, stages))
    return {'ran': ran, 'skipped': skipped, 'seconds': time.time() - start}


# -----------------------------------------------------------------------------
# Reading the results
# -----------------------------------------------------------------------------
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


def load_results(out, plan):
    """{setting key: [RunResult per seed]} from <out>/runs."""
    results = {}
    for run in plan_runs(plan):
        run_dir = os.path.join(out, 'runs', run.name)
        extras = {}
        for name, attr in ((PATCH_DISTRIBUTION, 'distribution'), (IMAGE_PATCHES, 'image_patches')):
            path = os.path.join(run_dir, name)
            if run.extras and os.path.exists(path):
                extras[attr] = read_json(path)
        with open(os.path.join(run_dir, CONFIG_FILE)) as f:
            config = yaml.safe_load(f)
        results.setdefault(run.setting.key, []).append(RunResult(
            run.setting.key, run.seed,
            train=read_train_log(os.path.join(run_dir, TRAIN_LOG), TRAIN_FIELDS + ('cpu_time',)),
            val=read_val_log(os.path.join(run_dir, VAL_LOG), VAL_FIELDS),
            sweep=read_sweep(os.path.join(run_dir, SWEEP), ('acc1', 'throughput', 'num_images')),
            config=config, **extras))
    return results


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


def fmt_mean_std(values, digits=2):
    mean, std = mean_std(values)
    return f'{mean:.{digits}f}' if np.isnan(std) else f'{mean:.{digits}f} ± {std:.{digits}f}'


def fmt(value, digits=2, signed=False, suffix=''):
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return '—'
    return f'{value:+.{digits}f}{suffix}' if signed else f'{value:.{digits}f}{suffix}'


def md_table(header, rows):
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(str(cell) for cell in row) + ' |' for row in rows]
    return '\n'.join(lines)


# -----------------------------------------------------------------------------
# The claims: tables and verdicts computed from the numbers
# -----------------------------------------------------------------------------
# The paper's numbers (PAPER.md): SimMIM ViT-B fine-tuned on ImageNet, 4 x A100.
PAPER_TOP1 = {'baseline': 83.72, 'fixed': 83.08, 'linear': 83.28, 'cyclic': 83.46}
PAPER_SWEEP = {
    'baseline': {1.0: 83.71, 0.8: 82.67, 0.6: 79.76, 0.4: 72.30, 0.2: 48.95},
    'fixed': {1.0: 83.08, 0.8: 82.70, 0.6: 81.57, 0.4: 78.10},
    'linear': {1.0: 83.28, 0.8: 82.70, 0.6: 81.13, 0.4: 76.72},
    'cyclic': {1.0: 83.44, 0.8: 82.78, 0.6: 81.41, 0.4: 78.23, 0.2: 68.74},
}
PAPER_HOURS = {'baseline': 24.62, 'cyclic': 16.99}
PAPER_MEAN_RHO = {'baseline': 1.0, 'fixed': 0.6, 'linear': 0.644, 'cyclic': 0.644}
PAPER_ITERATION_MS = {1.0: 352, 0.8: 304, 0.6: 215, 0.4: 161, 0.2: 130}
PAPER_CENTRE_CORNERS = (66.0, 54.0)  # % of images keeping a centre / corner position, magnitude, rho 0.6

# The criteria, stated in the README next to each verdict.
MIN_TIME_SAVING_SHARE = 0.5   # claim 1: at least half the saving that time proportional to mean rho predicts
MAX_TOP1_DROP = 1.0           # claim 2: points below the baseline at rho = 1 (the paper's largest: 0.64)
MIN_ROBUSTNESS_GAIN = 3.0     # claim 3: points above the baseline at rho 0.4 and 0.2 (the paper: 5.9, 19.8)
CYCLIC_TOLERANCE = 0.5        # claim 4: points cyclic may trail linear (about 2 of 360 validation images)
MIN_CENTRE_EXCESS = 5.0       # claim 5: centre minus corner keep rate, points (the paper: 66 - 54 = 12)
OUTLIER_POINTS = 5.0          # a seed this far from its schedule's median top-1 at rho = 1 is named in the verdicts
MIN_INK_EXCESS = 5.0          # claim 5: kept patches' ink share minus all patches' ink share, points
INK_THRESHOLD = 0.3           # a patch is on the digit when its brightest pixel exceeds this (0 black, 1 white)
ROBUSTNESS_RHOS = (0.4, 0.2)
CENTRE_RHO = 0.6


@dataclass
class Claim:
    number: int
    title: str
    paper: str           # the claim as the paper states it, with its numbers
    criterion: str       # how the verdict is computed here
    tables: list         # markdown tables (strings)
    status: str          # 'holds', 'partly holds', 'does not hold', or 'not measured'
    sentence: str        # one plain sentence with the deciding numbers
    why_not: str = ''    # likely reasons, when it does not (fully) hold


def status_from(passed):
    if not passed:
        return 'not measured'
    return 'holds' if all(passed) else 'partly holds' if any(passed) else 'does not hold'


def present(results, keys):
    return [key for key in keys if results.get(key)]


def model_scale(results):
    """{'tokens', 'depth', 'steps'} of the baseline's first run (CLS included; optimizer steps)."""
    run = results['baseline'][0]
    vit, size = run.config['MODEL']['VIT'], run.config['DATA']['IMG_SIZE']
    return {'tokens': (size // vit['PATCH_SIZE']) ** 2 + 1, 'depth': vit['DEPTH'], 'steps': len(run.train['time'])}


def claim_time(results):
    scale = model_scale(results)
    base = mean_std([training_seconds(r) for r in results['baseline']])[0]
    rows, passed, shares, data_shares = [], {}, {}, []
    for key in present(results, [s.key for s in SETTINGS]):
        runs = results[key]
        seconds = [training_seconds(r) for r in runs]
        rho = float(np.mean([mean_keep_ratio(r) for r in runs]))
        ratio = float(np.mean(seconds)) / base
        data_share = float(np.mean([np.sum(r.train['cpu_time']) / np.sum(r.train['time']) for r in runs]))
        data_shares.append(data_share)
        share = (1 - ratio) / (1 - rho) if rho < 0.999 else None
        if key != 'baseline':
            passed[key] = ratio <= 1 - MIN_TIME_SAVING_SHARE * (1 - rho)
            shares[key] = share
        paper_ratio = PAPER_HOURS[key] / PAPER_HOURS['baseline'] if key in PAPER_HOURS else None
        rows.append([SETTING_BY_KEY[key].label, f'{rho:.3f}', fmt(PAPER_MEAN_RHO.get(key), 3),
                     fmt_mean_std(seconds, 1), f'{ratio:.2f}', fmt(share, 2), fmt(paper_ratio, 2),
                     f'{100 * data_share:.0f}%'])
    table = md_table(['schedule', 'mean ρ', 'paper mean ρ', 'training time (s)', '× baseline',
                      'share of proportional saving', 'paper × baseline', 'data loading share'], rows)
    tables = [table]

    per_rho = iteration_ms_by_rho(results['cyclic']) if results.get('cyclic') else {}
    interleaved = interleaved_time_ratio(results['cyclic']) if results.get('cyclic') else None
    if per_rho:
        top = per_rho[1.0][1] if 1.0 in per_rho else None
        rows = [[f'{rho:.1f}', n, f'{ms:.1f}', fmt(ms / top if top else None), fmt(PAPER_ITERATION_MS.get(rho), 0),
                 fmt(PAPER_ITERATION_MS[rho] / PAPER_ITERATION_MS[1.0] if rho in PAPER_ITERATION_MS else None)]
                for rho, (n, ms) in sorted(per_rho.items(), reverse=True)]
        paper_mix = sum(PAPER_ITERATION_MS[rho] * (1 if rho == 0.2 else 2) for rho in PAPER_ITERATION_MS) / 9
        rows.append(['schedule mix', sum(n for n, _ in per_rho.values()), '', fmt(interleaved), '',
                     fmt(paper_mix / PAPER_ITERATION_MS[1.0])])
        tables.append(md_table(['ρ', 'Cyclic iterations', 'median ms per iteration', '× ρ = 1', 'paper ms',
                                'paper × ρ = 1'], rows))
    if interleaved is not None:
        rho = float(np.mean([mean_keep_ratio(r) for r in results['cyclic']]))
        passed['cyclic, per iteration'] = interleaved <= 1 - MIN_TIME_SAVING_SHARE * (1 - rho)
    status = status_from(list(passed.values()))
    key = 'cyclic' if 'cyclic' in passed else next(iter(passed), None)
    if key is None:
        sentence = 'only the baseline was measured'
    else:
        ratio = float(np.mean([training_seconds(r) for r in results[key]])) / base
        rho = float(np.mean([mean_keep_ratio(r) for r in results[key]]))
        schedules = [ok for name, ok in passed.items() if name in SETTING_BY_KEY]
        sentence = (f"{SETTING_BY_KEY[key].label}'s mean training time is {ratio:.2f} × the baseline's at mean ρ "
                    f'{rho:.3f}, {fmt(shares[key], 2)} of the proportional saving (the paper: 0.69 × at 0.644, '
                    f'0.87 of it); {sum(schedules)} of {len(schedules)} PSS schedules save at least half of it')
        if interleaved is not None:
            sentence += (f', and the Cyclic runs\' own median times per iteration at each ρ give '
                         f'{interleaved:.2f} × for its mix of ρ')
    return Claim(
        1, 'Training time falls roughly with the mean keep rate',
        'Cyclic and linear keep ρ = 0.644 of the tokens on average; ViT-B fine-tuning took 16.99 h instead '
        'of 24.62 h (0.69 ×).',
        f'per PSS schedule, the training time (sum of the per-iteration `time` in train_log.json, data '
        f'loading included, validation excluded; mean over seeds) over the baseline\'s must be at most '
        f'1 − {MIN_TIME_SAVING_SHARE} × (1 − mean ρ), i.e. it must realise at least half the saving that '
        f'time proportional to the mean ρ would give; and so must the Cyclic runs\' schedule mix priced at their '
        f'own median time per iteration at each ρ (last row of the second table: Cyclic visits every ρ in every '
        f'epoch, so a change of machine load between runs cancels there). Holds if all of these do, partly if '
        f'some do.',
        tables, status, sentence,
        why_not='' if status == 'holds' else (
            f'a step of this {scale["depth"]}-block model on {scale["tokens"]} tokens costs little compute, so '
            f'the costs that do not shrink with the token count weigh more: loading and augmenting the batch on '
            f'the CPU ({100 * min(data_shares):.0f}% to {100 * max(data_shares):.0f}% of the step time here), the '
            f'optimizer update of every weight, and per-layer Python overhead. ViT-B on 197 tokens on A100s spends '
            f'nearly all of its step in token-proportional attention and MLP work. CPU timings also move with '
            f'whatever else runs on the machine; where the two measures above disagree, that is the likely cause.'))


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


def outlier_seeds(results, keys):
    """'<label> seed k ends at x% (its other seeds: y%, z%)' for each run whose final top-1 at rho = 1 is more
    than OUTLIER_POINTS from the median over the seeds of its schedule."""
    notes = []
    for key in present(results, keys):
        values = [final_top1(r) for r in results[key]]
        median = float(np.median(values))
        for k, (r, value) in enumerate(zip(results[key], values)):
            if abs(value - median) > OUTLIER_POINTS:
                others = ', '.join(f'{v:.2f}%' for j, v in enumerate(values) if j != k)
                notes.append(f'{SETTING_BY_KEY[key].label} seed {r.seed} ends at {value:.2f}% at ρ = 1 '
                             f'(its other seeds: {others})')
    return notes


def with_outliers(sentence, notes):
    return sentence + ('; one seed stands apart: ' + '; '.join(notes) if notes else '')


def claim_accuracy(results):
    scale = model_scale(results)
    base_values = [final_top1(r) for r in results['baseline']]
    base = float(np.mean(base_values))
    rows, passed, drops = [], {}, {}
    for key in present(results, [s.key for s in SETTINGS]):
        values = [final_top1(r) for r in results[key]]
        mean_gap, median_gap = gap(values, base_values)
        if key in PAPER_SCHEDULES:
            passed[key], drops[key] = min(mean_gap, median_gap) >= -MAX_TOP1_DROP, (mean_gap, median_gap)
        paper = PAPER_TOP1.get(key)
        rows.append([SETTING_BY_KEY[key].label, len(values), fmt_mean_std(values),
                     '—' if key == 'baseline' else f'{mean_gap:+.2f} / {median_gap:+.2f}',
                     fmt(paper), fmt(paper - PAPER_TOP1['baseline'] if paper and key != 'baseline' else None,
                                     signed=True)])
    status = status_from(list(passed.values()))
    parts = []
    for ok, where in ((True, 'at most'), (False, 'more than')):
        names = [f'{SETTING_BY_KEY[k].label} ({drops[k][0]:+.2f} / {drops[k][1]:+.2f})'
                 for k, good in passed.items() if good == ok]
        if names:
            parts.append(f'{where} {MAX_TOP1_DROP:.1f} point below the baseline\'s {base:.2f}% at ρ = 1 (mean / '
                         f'median over seeds): ' + ', '.join(names))
    n = num_val_images(results)
    return Claim(
        2, 'Accuracy at ρ = 1 drops only a little',
        'Top-1 at ρ = 1: baseline 83.72%, Cyclic 83.46%, Linear 83.28%, Fixed(0.6) 83.08%.',
        f'per schedule the paper reports (Fixed, Linear, Cyclic with magnitude selection), the final validation '
        f'top-1 at ρ = 1 may be at most {MAX_TOP1_DROP:.1f} point below the baseline\'s (the paper\'s largest drop '
        f'is 0.64), both on the mean and on the median over seeds. Cyclic with random selection is shown but not '
        f'judged. One validation image is {100 / n:.2f} points here.',
        [md_table(['schedule', 'seeds', 'top-1 at ρ = 1 (%)', 'vs baseline (mean / median)', 'paper top-1 (%)',
                   'paper vs baseline'], rows)],
        status, with_outliers('; '.join(parts), outlier_seeds(results, [s.key for s in SETTINGS])),
        why_not='' if status == 'holds' else (
            f'these models are trained from scratch for {scale["steps"]} steps, where the paper fine-tunes a '
            'pre-trained ViT-B that already solves most of the task. A model that is still learning pays for '
            'every token it does not see, and a PSS schedule shows it on average only a fraction ρ of them.'))


def sweep_values(runs, rho):
    """Top-1 at keep rate `rho` of each run whose sweep measured it."""
    return [v for v in (sweep_top1(r, rho) for r in runs) if v is not None]


def sweep_rhos(results):
    return sorted({float(v) for runs in results.values() for r in runs for v in keep_ratio(r.sweep['drop_ratio'])},
                  reverse=True)


def claim_robustness(results):
    rows, passed, gaps = [], {}, {}
    for rho in sweep_rhos(results):
        base, cyc = sweep_values(results['baseline'], rho), sweep_values(results.get('cyclic', []), rho)
        both = gap(cyc, base) if base and cyc else None
        if rho in ROBUSTNESS_RHOS and both is not None:
            passed[rho], gaps[rho] = min(both) >= MIN_ROBUSTNESS_GAIN, both
        pb, pc = PAPER_SWEEP['baseline'].get(rho), PAPER_SWEEP['cyclic'].get(rho)
        rows.append([f'{rho:.1f}', fmt_mean_std(base) if base else '—', fmt_mean_std(cyc) if cyc else '—',
                     f'{both[0]:+.2f} / {both[1]:+.2f}' if both else '—', fmt(pb), fmt(pc),
                     fmt(pc - pb if pb and pc else None, signed=True)])
    status = status_from(list(passed.values()))
    sentence = ('Cyclic minus baseline top-1 (mean / median over seeds): '
                + ', '.join(f'{gaps[rho][0]:+.2f} / {gaps[rho][1]:+.2f} points at ρ {rho:.1f}' for rho in gaps)
                + ' (the paper: +5.93 at 0.4, +19.79 at 0.2)') if gaps else 'ρ 0.4 and 0.2 were not measured'
    return Claim(
        3, 'PSS models are far more robust at low ρ',
        'At ρ = 0.4 at inference: baseline 72.30%, Cyclic 78.23%; at ρ = 0.2: 48.95% vs 68.74%.',
        f'at each of ρ = {", ".join(map(str, ROBUSTNESS_RHOS))} the Cyclic (magnitude) models\' top-1 must '
        f'exceed the baseline\'s by at least {MIN_ROBUSTNESS_GAIN:.0f} points (the paper\'s gaps: 5.9 and 19.8), '
        f'both on the mean and on the median over seeds. Both models select by magnitude at inference, as in the '
        f'paper.',
        [md_table(['ρ', 'baseline top-1 (%)', 'Cyclic top-1 (%)', 'Cyclic − baseline (mean / median)',
                   'paper baseline', 'paper Cyclic', 'paper gap'], rows)],
        status, sentence,
        why_not='' if status == 'holds' else (
            'a digit occupies a few patches of a blank background, so magnitude selection at low ρ can keep most '
            'of the ink and the baseline loses less than on ImageNet photos; and a model trained from scratch '
            'for a few epochs has had little time to learn from the reduced token sets.'))


def claim_cyclic_vs_linear(results):
    rows, passed, diffs = [], {}, {}
    for rho in sweep_rhos(results):
        lin, cyc = sweep_values(results.get('linear', []), rho), sweep_values(results.get('cyclic', []), rho)
        both = gap(cyc, lin) if lin and cyc else None
        if both is not None:
            passed[rho], diffs[rho] = min(both) >= -CYCLIC_TOLERANCE, both
        pl, pc = PAPER_SWEEP['linear'].get(rho), PAPER_SWEEP['cyclic'].get(rho)
        rows.append([f'{rho:.1f}', fmt_mean_std(lin) if lin else '—', fmt_mean_std(cyc) if cyc else '—',
                     f'{both[0]:+.2f} / {both[1]:+.2f}' if both else '—', fmt(pl), fmt(pc),
                     fmt(pc - pl if pl and pc else None, signed=True)])
    cost = []
    for key in present(results, ('linear', 'cyclic')):
        seconds = [training_seconds(r) for r in results[key]]
        rho = float(np.mean([mean_keep_ratio(r) for r in results[key]]))
        cost.append([SETTING_BY_KEY[key].label, f'{rho:.3f}', fmt_mean_std(seconds, 1)])
    status = status_from(list(passed.values()))
    if diffs:
        worst_mean = min(diffs, key=lambda rho: diffs[rho][0])
        worst_median = min(diffs, key=lambda rho: diffs[rho][1])
        sentence = with_outliers(
            f'Cyclic is within {CYCLIC_TOLERANCE} point of Linear or above it, on the mean and on the median over '
            f'seeds, at {sum(passed.values())} of {len(passed)} ρ; its smallest margins are '
            f'{diffs[worst_mean][0]:+.2f} points on the mean (ρ {worst_mean:.1f}) and {diffs[worst_median][1]:+.2f} '
            f'on the median (ρ {worst_median:.1f})', outlier_seeds(results, ('linear', 'cyclic')))
    else:
        sentence = 'Linear and Cyclic were not both measured'
    return Claim(
        4, 'Cyclic is at least as good as Linear at every ρ, at the same cost',
        'Cyclic − Linear top-1: +0.16 / +0.08 / +0.28 / +1.51 points at ρ 1.0 / 0.8 / 0.6 / 0.4; both keep '
        '0.644 of the tokens on average.',
        f'at every ρ of the sweep, Cyclic\'s top-1 must be at least Linear\'s minus {CYCLIC_TOLERANCE} point '
        f'(about 2 of the validation images; seed noise), both on the mean and on the median over seeds. Holds if '
        f'it is at every ρ, partly if at some.',
        [md_table(['ρ', 'Linear top-1 (%)', 'Cyclic top-1 (%)', 'Cyclic − Linear (mean / median)', 'paper Linear',
                   'paper Cyclic', 'paper difference'], rows),
         md_table(['schedule', 'mean ρ', 'training time (s)'], cost)],
        status, sentence,
        why_not='' if status == 'holds' else (
            'the two schedules visit the same ρ levels equally often and differ only in order; with epochs of a '
            'few dozen steps and a model trained from scratch, Linear\'s full-ρ final epochs may matter more than '
            'on a converged pre-trained model, and the differences are of the size of the seed spread.'))


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


def claim_centre(results):
    rows, measured = [], {}
    for key in present(results, [s.key for s in SETTINGS]):
        run = results[key][0]
        cc = centre_corners(run.distribution, CENTRE_RHO) if run.distribution else None
        ink = ink_shares(run.image_patches, CENTRE_RHO) if run.image_patches else None
        measured[key] = (cc, ink)
        paper = PAPER_CENTRE_CORNERS if key == 'cyclic' else (None, None)
        rows.append([SETTING_BY_KEY[key].label, fmt(cc and cc[0], 1, suffix='%'), fmt(cc and cc[1], 1, suffix='%'),
                     fmt(cc and cc[0] - cc[1], 1, signed=True), fmt(ink and ink[0], 1, suffix='%'),
                     fmt(ink and ink[1], 1, suffix='%'), fmt(paper[0], 0, suffix='%'), fmt(paper[1], 0, suffix='%')])
    cc, ink = measured.get('cyclic', (None, None))
    passed, parts = [], []
    if cc:
        passed.append(cc[0] - cc[1] >= MIN_CENTRE_EXCESS)
        parts.append(f'the Cyclic (magnitude) model keeps a centre position for {cc[0]:.0f}% of the images and a '
                     f'corner for {cc[1]:.0f}% at ρ {CENTRE_RHO} (the paper: 66% and 54%)')
    if ink:
        passed.append(ink[0] - ink[1] >= MIN_INK_EXCESS)
        parts.append(f'{ink[0]:.0f}% of its kept patches lie on the digit, where {ink[1]:.0f}% of all patches do')
    status = status_from(passed)
    return Claim(
        5, 'Magnitude selection keeps patches near the centre and on the object',
        'At ρ = 0.6 a centre position is kept for about 66% of ImageNet images, a corner for about 54%.',
        f'for the Cyclic (magnitude) model at ρ = {CENTRE_RHO}: the centre position (the middle 2 × 2 block) must '
        f'be kept for at least {MIN_CENTRE_EXCESS:.0f} points more of the validation images than the 4 corners, '
        f'and the share of its kept patches that lie on the digit (a pixel brighter than {INK_THRESHOLD} of white, '
        f'on the images of image_patches.json) must exceed the share of all patches on the digit by at least '
        f'{MIN_INK_EXCESS:.0f} points. Holds if both do, partly if one does. The other rows are for comparison '
        f'(random selection should keep every position for about ρ of the images).',
        [md_table(['schedule (first seed)', 'centre kept', 'corners kept', 'centre − corners',
                   'kept patches on the digit', 'all patches on the digit', 'paper centre', 'paper corners'], rows)],
        status, '; '.join(parts) if parts else 'no patch distribution was measured',
        why_not='' if status == 'holds' else (
            'the digits are white strokes on a black background that is the same in every blank patch, so '
            'magnitude selection tells the blank patches apart only by the position embedding added before '
            'selection; whether ink or background patches have the larger embedding norm depends on what a '
            'short run from scratch learned, not on the photographic content the paper\'s statement is about.'))


def all_claims(results):
    return [claim_time(results), claim_accuracy(results), claim_robustness(results),
            claim_cyclic_vs_linear(results), claim_centre(results)]


def sweep_table(results):
    """Every schedule at every rho of the sweep: measured mean ± std, the paper's value in brackets."""
    keys = present(results, [s.key for s in SETTINGS])
    rows = []
    for rho in sweep_rhos(results):
        row = [f'{rho:.1f}']
        for key in keys:
            values = sweep_values(results[key], rho)
            paper = PAPER_SWEEP.get(key, {}).get(rho)
            cell = fmt_mean_std(values) if values else '—'
            row.append(cell + (f' ({paper:.2f})' if paper is not None else ''))
        rows.append(row)
    return md_table(['ρ'] + [SETTING_BY_KEY[k].label for k in keys], rows)


# -----------------------------------------------------------------------------
# Figures
# -----------------------------------------------------------------------------
def make_figures(results, fig_dir):
    """Draw the viz/ figures into fig_dir; returns [(file name, caption)]."""
    from viz.image_patches import plot_image_patches
    from viz.overview import plot_overview
    from viz.patch_distribution import plot_patch_distribution
    from viz.sweep_drop_ratio import plot_sweep_drop_ratio
    from viz.train_times import epoch_records, plot_train_times
    from viz.training_curves import plot_training_curves

    runs = [(SETTING_BY_KEY[key].label, r) for key in present(results, SETTING_BY_KEY) for r in results[key]]
    first = [(SETTING_BY_KEY[key].label, results[key][0]) for key in present(results, SETTING_BY_KEY)]
    figures = []

    def save(fig, name, caption):
        save_figure(fig, os.path.join(fig_dir, name))
        figures.append((name, caption))

    save(plot_overview([(label, r.train, r.val, r.sweep) for label, r in runs]), 'overview.png',
         'Left: validation top-1 at ρ = 1 after each epoch against wall-clock time (one line per seed). '
         'Right: top-1 against ρ at inference, mean over seeds with the min-max band; the numbers are the '
         'baseline\'s images/s (the models share an architecture, so the others\' are alike).')
    save(plot_sweep_drop_ratio([(label, r.sweep) for label, r in runs]), 'sweep_drop.png',
         'Dynamic inference: top-1 of each final model against ρ, mean over seeds and min-max band.')
    save(plot_training_curves([(label, r.train, r.val) for label, r in runs]), 'training_curves.png',
         'Training loss, validation top-1 and loss against iterations / epochs (left) and wall-clock time (right).')
    save(plot_train_times([(f'{label} (seed {r.seed})', epoch_records(r.train)) for label, r in first]),
         'train_times.png', 'Time per training iteration over the last epoch, coloured by ρ, with the mean per ρ.')
    with_distribution = [(label, r.distribution) for label, r in first if r.distribution]
    if with_distribution:
        labels, data = zip(*with_distribution)
        save(plot_patch_distribution(list(data), labels=list(labels)), 'patch_distribution.png',
             'Fraction of the validation images that keep each patch position, per ρ (first seed of each schedule).')
    for (label, r), key in zip(first, present(results, SETTING_BY_KEY)):
        if r.image_patches:
            save(plot_image_patches(r.image_patches, max_images=4, title=f'{label} (seed {r.seed})'),
                 f'image_patches_{key}.png', f'{label}: kept patches (outlined) and the prediction at each ρ.')
    return figures


# -----------------------------------------------------------------------------
# README
# -----------------------------------------------------------------------------
def git_commit():
    try:
        commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return 'unknown (not a git checkout)'
    return commit + (' with uncommitted changes to tracked files' if dirty else '')


def machine_description():
    model = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(['lscpu'], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith('Model name:'):
                model = line.split(':', 1)[1].strip()
                break
    except (OSError, subprocess.CalledProcessError):
        pass
    import torch  # only for the version and the device that trained

    device = f'GPU {torch.cuda.get_device_name(0)}' if torch.cuda.is_available() else 'CPU only'
    return (f'{model}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads), {device}; '
            f'Python {platform.python_version()}, torch {torch.__version__}')


def setup_description(results, plan):
    run, scale = results['baseline'][0], model_scale(results)
    vit, data, train = run.config['MODEL']['VIT'], run.config['DATA'], run.config['TRAIN']
    steps = scale['steps'] // train['EPOCHS']
    return (f"scikit-learn's 8 × 8 handwritten digits upscaled to {data['IMG_SIZE']} px ({num_val_images(results)} "
            f"validation images, an 80/20 split), {vit['PATCH_SIZE']} px patches ({scale['tokens']} tokens with "
            f"CLS), a ViT of width {vit['EMBED_DIM']}, depth {vit['DEPTH']} and {vit['NUM_HEADS']} heads with "
            f"absolute and relative position embeddings, trained from scratch for {train['EPOCHS']} epochs of "
            f"{steps} steps of {data['BATCH_SIZE']} images (AdamW, cosine LR, {train['WARMUP_EPOCHS']} warm-up "
            f'epoch(s)), {len(plan.seeds)} seed(s) per schedule ({", ".join(map(str, plan.seeds))}). The paper '
            f'fine-tunes a pre-trained ViT-B on ImageNet at 224 px (197 tokens) for 100 epochs on 4 A100s.')


def render_readme(claims, meta, figures=(), sweep=''):
    """results/README.md from the claims (with their tables and verdicts) and `meta`
    {'command', 'commit', 'machine', 'wall_time', 'setup', 'date'}."""
    lines = ['# PSS at laptop scale: the paper\'s claims on the digits demo', '',
             'Written by `reproduce.py`; every number below is computed from the files in `runs/`. '
             'Do not edit by hand: rerun the command.', '',
             f"- command: `{meta['command']}`", f"- commit: {meta['commit']}", f"- machine: {meta['machine']}",
             f"- wall time: {meta['wall_time']}", f"- date: {meta['date']}", '',
             f"Setup: {meta['setup']}", '', '## Verdicts', '',
             md_table(['#', 'claim', 'verdict here'],
                      [[c.number, c.title, f'**{c.status}**: {c.sentence}'] for c in claims]), '',
             'Each verdict follows from the numbers by the criterion stated under its claim; the experiment was not '
             'tuned to make any claim pass.', '']
    if figures:
        lines += ['## Figures', '']
        for name, caption in figures:
            lines += [f'![{name}](figures/{name})', '', caption, '']
    for c in claims:
        lines += [f'## Claim {c.number}: {c.title}', '', f'Paper: {c.paper}', '', f'Criterion: {c.criterion}', '']
        for table in c.tables:
            lines += [table, '']
        lines += [f'**{c.status.capitalize()}**: {c.sentence}.', '']
        if c.why_not:
            lines += [f'Why not at this scale (likely reasons, not measured): {c.why_not}', '']
    if sweep:
        lines += ['## Top-1 (%) of every schedule against ρ at inference', '',
                  'Mean ± standard deviation over seeds; the paper\'s ImageNet value in brackets.', '', sweep, '']
    return '\n'.join(lines)


def write_report(out, plan, command, invocation_seconds, ran_anything=True):
    results = load_results(out, plan)
    claims = all_claims(results)
    figures = make_figures(results, os.path.join(out, 'figures'))
    timings = read_timings(out)
    total = sum(seconds for stages in timings.values() for seconds in stages.values())
    train = sum(stages.get('train', 0.0) for stages in timings.values())
    meta = {'command': command, 'commit': git_commit(), 'machine': machine_description(),
            'wall_time': (f'{format_seconds(total)} in the stages ({format_seconds(train)} training, the rest '
                          f'sweeps and plots; summed over invocations if it was resumed); '
                          + (f'this invocation {format_seconds(invocation_seconds)}' if ran_anything else
                             'this invocation found every stage done and only rewrote the report')),
            'setup': setup_description(results, plan), 'date': datetime.date.today().isoformat()}
    text = render_readme(claims, meta, figures, sweep_table(results))
    with open(os.path.join(out, 'README.md'), 'w') as f:
        f.write(text)
    return claims


# -----------------------------------------------------------------------------
def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quick', action='store_true', help='a few minutes: 1 seed, 2 epochs, 16 px, tiny model')
    parser.add_argument('--seeds', type=int, nargs='+', help='seeds per schedule (default: 0 1 2; --quick: 0)')
    parser.add_argument('--epochs', type=int, help='training epochs (default: 30; --quick: 2)')
    parser.add_argument('--out', help='results folder (default: results; --quick: results_quick)')
    parser.add_argument('--work', help='training outputs with checkpoints (default: output/reproduce[_quick])')
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = get_parser().parse_args(argv)
    start = time.time()
    try:
        plan = make_plan(args.quick, args.seeds, args.epochs)
        out = args.out or ('results_quick' if args.quick else 'results')
        work = args.work or os.path.join('output', 'reproduce_quick' if args.quick else 'reproduce')
        print(f'{len(plan_runs(plan))} runs ({len(SETTINGS)} schedules x seeds {list(plan.seeds)}, '
              f'{plan.epochs} epochs) -> {out}; checkpoints in {work}', flush=True)
        report = execute(plan, os.path.abspath(out), os.path.abspath(work), log=lambda s: print(s, flush=True))
        print(f"{len(report['ran'])} run(s) done, {len(report['skipped'])} skipped, in "
              f"{format_seconds(report['seconds'])}; writing {out}/README.md and {out}/figures", flush=True)
        command = ' '.join(['python reproduce.py', *argv])
        claims = write_report(out, plan, command, time.time() - start, bool(report['ran']))
    except ReproduceError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('interrupted: run the same command again to continue', file=sys.stderr)
        return 130
    for c in claims:
        print(f'claim {c.number} ({c.title}): {c.status}: {c.sentence}')
    print(f'wrote {out}/README.md in {format_seconds(time.time() - start)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
