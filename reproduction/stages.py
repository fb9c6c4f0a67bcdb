"""Each run's stages as subprocesses of the repository's scripts, skipped when their outputs are complete
(so that a killed reproduce.py continues where it stopped), with timings and progress; and the figures."""
import datetime
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import yaml

from reproduction.plan import (CONFIG_FILE, LENGTH_PRETRAIN_RUN, PRETRAIN_RUN, PRETRAIN_TAG, ROOT, SETTING_BY_KEY,
                               ReproduceError, check_study, length_runs, plan_runs)
from reproduction.provenance import PROVENANCE, write_provenance
from reproduction.results import present
from viz.common import (IMAGE_PATCHES, PATCH_DISTRIBUTION, SWEEP, TRAIN_LOG, VAL_LOG, VizInputError, read_json,
                        read_sweep, read_val_log, save_figure)

TIMINGS_FILE = 'timings.json'


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
    check_config(run_dir, plan.overrides(run.seed, run.epochs))
    stages = list(STAGES if run.extras else STAGES[:2])
    if not train_done(run_dir, run.epochs or plan.epochs):
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
def run_dir(plan, work, run):
    """Where main_finetune.py writes `run`: <work>/<MODEL.NAME>/<run name>."""
    return os.path.join(work, plan.dataset.model_name, run.name)


def stage_command(stage, run, plan, work, weights=None):
    """The argument list (after the interpreter) that runs `stage` of `run`; `weights`: what a pre-trained
    run starts from (default: the pre-training's checkpoint in `work`)."""
    cfg = os.path.join(plan.dataset.config_dir, run.setting.config)
    opts = [item for pair in plan.overrides(run.seed, run.epochs).items() for item in pair]
    common = ['--cfg', cfg, '--output', work, '--tag', run.name, '--opts', *opts]
    if stage == 'train':
        start = ['--pretrained', weights or pretrain_checkpoint(plan, work)] if run.pretrained else []
        return ['main_finetune.py', *common, *start]
    checkpoint = os.path.join(run_dir(plan, work, run), 'checkpoint.pth')
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
    """Copy the run's logs, config, provenance and JSON results (no checkpoints, no PDFs) to dst_dir."""
    os.makedirs(dst_dir, exist_ok=True)
    names = [CONFIG_FILE, TRAIN_LOG, VAL_LOG, SWEEP] + ([IMAGE_PATCHES, PATCH_DISTRIBUTION] if run.extras else [])
    for name in names:
        src = os.path.join(src_dir, name)
        if not os.path.exists(src):
            raise ReproduceError(f"'{src}' is missing after its stage ran")
        shutil.copyfile(src, os.path.join(dst_dir, name))
    if os.path.exists(os.path.join(src_dir, PROVENANCE)):  # absent for runs trained before it was written
        shutil.copyfile(os.path.join(src_dir, PROVENANCE), os.path.join(dst_dir, PROVENANCE))


# -----------------------------------------------------------------------------
# The SimMIM pre-training that every fine-tuning but the one from scratch starts from
# -----------------------------------------------------------------------------
PRETRAIN_FILES = (CONFIG_FILE, TRAIN_LOG)
WEIGHTS_FILE = 'model.safetensors'  # the length study's pre-trained weights, kept in <out>/runs


def pretrain_dir(plan, work):
    return os.path.join(work, plan.dataset.pretrain_model_name, PRETRAIN_TAG)


def pretrain_checkpoint(plan, work):
    return os.path.join(pretrain_dir(plan, work), 'checkpoint.pth')


def pretrain_command(plan, work):
    opts = [item for pair in plan.pretrain_overrides().items() for item in pair]
    return ['main_simmim.py', '--cfg', plan.dataset.pretrain_config, '--output', work, '--tag', PRETRAIN_TAG,
            '--opts', *opts]


def pretrain_done(plan, work):
    """Whether the pre-training's checkpoint.pth holds its last epoch, finished (ReproduceError if its folder
    holds a pre-training with other settings)."""
    folder = pretrain_dir(plan, work)
    check_config(folder, plan.pretrain_overrides())
    path = pretrain_checkpoint(plan, work)
    if not os.path.exists(path):
        return False
    import torch

    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
        config = yaml.safe_load(state['config'])
    except Exception:  # cut short or unreadable: main_simmim.py itself reports what is wrong
        return False
    return state['epoch'] == config['TRAIN']['EPOCHS'] - 1 and state['step_in_epoch'] == 0


def run_pretraining(plan, out, work, runner, timings, log, name=PRETRAIN_RUN):
    """Pre-train unless done, then copy its config and log (and provenance) to <out>/runs/<name>. Returns
    whether it ran."""
    ran = not pretrain_done(plan, work)
    if ran:
        log(f'pre-training: {plan.dataset.pretrain_config} (once, for every fine-tuning but the one from scratch)')
        start = time.time()
        runner(pretrain_command(plan, work), os.path.join(work, 'logs', f'{PRETRAIN_RUN}.txt'))
        timings[name] = {'pretrain': time.time() - start}
        write_timings(out, timings)
        if not pretrain_done(plan, work):
            raise ReproduceError(f"the pre-training left no finished checkpoint in '{pretrain_dir(plan, work)}'")
        write_provenance(pretrain_dir(plan, work))
    dst = os.path.join(out, 'runs', name)
    os.makedirs(dst, exist_ok=True)
    for file in PRETRAIN_FILES + (PROVENANCE,):
        if os.path.exists(os.path.join(pretrain_dir(plan, work), file)):
            shutil.copyfile(os.path.join(pretrain_dir(plan, work), file), os.path.join(dst, file))
    return ran


def length_weights(plan, out, work, runner, timings, log):
    """(path, ran): <out>/runs/simmim_pretrain_length/model.safetensors, the pre-trained weights every run of
    the length study starts from. Kept with the results (2 MB), so that the study continues from the same
    weights in another session or on another CPU type, where a re-run of the pre-training would drift."""
    path = os.path.join(out, 'runs', LENGTH_PRETRAIN_RUN, WEIGHTS_FILE)
    if os.path.exists(path):
        return path, False
    ran = run_pretraining(plan, out, work, runner, timings, log, name=LENGTH_PRETRAIN_RUN)
    import torch
    from safetensors.torch import save_file

    state = torch.load(pretrain_checkpoint(plan, work), map_location='cpu', weights_only=True)
    tmp = path + '.tmp'
    save_file({k: v.contiguous() for k, v in state['model'].items()}, tmp)
    os.replace(tmp, path)
    return path, ran


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


def execute(plan, out, work, runner=run_command, log=print, study=None):
    """Run every stage not yet done of the plan's runs (or of `study`'s) and copy each finished run's small
    files to <out>/runs. Returns {'ran': [(run, stages)], 'skipped': [run names], 'seconds'}."""
    if study is not None:
        check_study(plan, study)
    runs = plan_runs(plan) if study is None else length_runs(plan)
    timings = read_timings(out)
    start = time.time()
    stage_seconds, ran, skipped = {}, [], []
    todo = {run.name: missing_stages(os.path.join(out, 'runs', run.name), plan, run) for run in runs}
    needs_pretraining = any(run.pretrained and 'train' in missing_stages(run_dir(plan, work, run), plan, run)
                            for run in runs if todo[run.name])
    weights = None
    if needs_pretraining and study is not None:
        weights, pretrained = length_weights(plan, out, work, runner, timings, log)
        if pretrained:
            ran.append((LENGTH_PRETRAIN_RUN, ['pretrain']))
    elif needs_pretraining and run_pretraining(plan, out, work, runner, timings, log):
        ran.append((PRETRAIN_RUN, ['pretrain']))
    for k, run in enumerate(runs, 1):
        out_dir = os.path.join(out, 'runs', run.name)
        if not todo[run.name]:
            skipped.append(run.name)
            log(f'[{k}/{len(runs)}] {run.name}: done, skipped')
            continue
        work_dir = run_dir(plan, work, run)
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
            runner(stage_command(stage, run, plan, work, weights),
                   os.path.join(work, 'logs', f'{run.name}.{stage}.txt'))
            if stage == 'train':
                write_provenance(work_dir)
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
