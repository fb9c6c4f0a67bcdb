"""reproduce.py's package reproduction/ without training: the claim tables and verdicts from synthetic results
(one case where each claim holds, one where it fails), the skip-if-done logic, a killed run that continues,
and the README."""
import json
import os
import re

import numpy as np
import pytest
import yaml

from reproduction.claims import all_claims, pretraining_table, sweep_table
from reproduction.plan import (DATASETS, ROOT, SETTING_BY_KEY, SETTINGS, Plan, ReproduceError, Run, make_plan,
                               plan_runs)
from reproduction.report import render_readme, setup_description
from reproduction.results import RunResult, load_pretraining, load_results
from reproduction.stages import (estimate_seconds, execute, missing_stages, pretrain_checkpoint, progress_line,
                                 stage_command)
from viz.image_patches import IMAGENET_MEAN, IMAGENET_STD

SCHEDULE_RHO = {'baseline': [1.0], 'scratch': [1.0], 'fixed': [0.6],
                'linear': [0.2, 0.4, 0.4, 0.6, 0.6, 0.8, 0.8, 1.0, 1.0],
                'cyclic': [0.2, 0.4, 0.4, 0.6, 0.6, 0.8, 0.8, 1.0, 1.0],
                'random_cyclic': [0.2, 0.4, 0.4, 0.6, 0.6, 0.8, 0.8, 1.0, 1.0]}
RHOS = (1.0, 0.8, 0.6, 0.4, 0.2)
GRID = 4  # 4 x 4 patches of 4 px: 16 px images


# -----------------------------------------------------------------------------
# Synthetic results
# -----------------------------------------------------------------------------
def train_log(key, seed, epochs=3, steps=9, time_at=lambda rho: 1.0):
    rhos = np.resize(SCHEDULE_RHO[key], epochs * steps)
    times = np.array([time_at(rho) for rho in rhos]) * (1 + 0.01 * seed)
    return {'epoch': np.repeat(np.arange(epochs), steps), 'iteration': np.arange(epochs * steps),
            'loss': np.linspace(2.3, 0.5, epochs * steps), 'time': times, 'cpu_time': 0.1 * times,
            'patch_drop_ratio': np.round(1 - rhos, 6), 'line': np.arange(1, epochs * steps + 1)}


def ink_images():
    """Two 16 px images, white (ink) in the middle 2 x 2 patches, black elsewhere; normalised [B, 3, H, W]."""
    pixels = np.zeros((2, 16, 16, 3))
    pixels[:, 4:12, 4:12] = 1.0
    normalised = (pixels - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    return normalised.transpose(0, 3, 1, 2)


def image_patches_data(on_ink):
    """image_patches.json contents at rho 1.0 and 0.6 (drop 0.4): at 0.6 the 10 patches kept (of 16) are
    the 4 ink ones and 6 others if `on_ink`, else 10 background ones."""
    ink = [GRID * r + c + 1 for r in (1, 2) for c in (1, 2)]  # token indices, CLS = 0
    background = [t for t in range(1, GRID * GRID + 1) if t not in ink]
    kept_06 = ink + background[:6] if on_ink else background[:10]
    pairs = []
    for tokens in (list(range(GRID * GRID + 1)), [0] + kept_06):
        pairs.append([[b for b in range(2) for _ in tokens], [t for _ in range(2) for t in tokens]])
    return {'drop_ratios': [0.0, 0.4], 'images': ink_images().tolist(), 'targets': [0, 1],
            'kept_patches': pairs, 'logits': np.zeros((2, 2, 10)).tolist(), 'patch_size': 4,
            'class_to_idx': {str(i): i for i in range(10)}}


def distribution_data(centre, corners, num_images=100):
    """patch_distribution.json contents at rho 0.6: centre 2 x 2 block kept by `centre` of the images,
    corners by `corners`, the rest by 60%."""
    counts = np.full((GRID, GRID), 0.6 * num_images)
    counts[1:3, 1:3] = centre * num_images
    counts[[0, 0, -1, -1], [0, -1, 0, -1]] = corners * num_images
    return {'drop_ratios': [0.4], 'counts': [counts.round().astype(int).tolist()], 'grid_shape': [GRID, GRID],
            'num_images': num_images}


def make_results(holds, seeds=(0, 1)):
    """{key: [RunResult]} in which every claim holds (`holds`) or every claim fails."""
    top1 = ({'baseline': 97.0, 'fixed': 96.5, 'linear': 96.6, 'cyclic': 96.8, 'random_cyclic': 96.0} if holds else
            {'baseline': 97.0, 'fixed': 92.0, 'linear': 93.0, 'cyclic': 90.0, 'random_cyclic': 89.0})

    def sweep_acc(key, rho):
        # PSS models lose little at low rho when `holds`; the baseline collapses. Otherwise the reverse.
        pss = key != 'baseline'
        fall = (5 if pss else 40) if holds else (40 if pss else 5)
        extra = 2.0 if holds and key == 'linear' else 0.0  # linear below cyclic when `holds`
        return top1[key] - fall * (1 - rho) ** 2 - extra * (rho < 1)

    results = {}
    for setting in SETTINGS:
        key = setting.key
        for seed in seeds:
            train = train_log(key, seed, time_at=(lambda rho: 0.2 + 0.8 * rho) if holds else (lambda rho: 1.0))
            acc = [sweep_acc(key, rho) + 0.1 * seed for rho in RHOS]
            sweep = {'drop_ratio': np.round(1 - np.array(RHOS), 6), 'acc1': np.array(acc),
                     'throughput': np.full(len(RHOS), 500.0), 'num_images': np.full(len(RHOS), 360)}
            val = {'epoch': np.arange(3), 'acc1': np.array([50.0, 80.0, acc[0]]), 'loss': np.ones(3),
                   'time': np.ones(3)}
            first = seed == seeds[0]
            magnitude = key != 'random_cyclic'
            distribution = distribution_data(*((0.9, 0.3) if holds and magnitude else (0.6, 0.6)))
            config = {'MODEL': {'VIT': {'PATCH_SIZE': 4, 'EMBED_DIM': 48, 'DEPTH': 2, 'NUM_HEADS': 3}},
                      'DATA': {'IMG_SIZE': 16, 'BATCH_SIZE': 64}, 'TRAIN': {'EPOCHS': 3, 'WARMUP_EPOCHS': 1}}
            results.setdefault(key, []).append(RunResult(
                key, seed, train, val, sweep, config,
                distribution=distribution if first else None,
                image_patches=image_patches_data(on_ink=holds and magnitude) if first else None))
    return results


# -----------------------------------------------------------------------------
# Claims and verdicts
# -----------------------------------------------------------------------------
@pytest.mark.parametrize('holds', [True, False])
def test_every_claim_verdict_follows_the_numbers(holds):
    claims = all_claims(make_results(holds))
    assert [c.number for c in claims] == [1, 2, 3, 4, 5]
    for c in claims:
        assert c.status == ('holds' if holds else 'does not hold'), (c.number, c.status, c.sentence)
        assert bool(c.why_not) != holds  # a reason exactly where the claim fails
        assert c.criterion and c.tables and c.sentence


def test_claim_numbers_are_the_measured_ones():
    results = make_results(holds=True)
    time_claim, accuracy, robustness, cyclic_linear, centre = all_claims(results)
    # claim 1: cyclic visits rho with mean 0.6444 (1 x 0.2, 2 x each of 0.4 .. 1.0): time 0.2 + 0.8 rho
    # over the baseline's 1.0 (seed 1 is 1% slower in both) -> 0.7156
    rho = np.mean(SCHEDULE_RHO['cyclic'])
    assert f'{0.2 + 0.8 * rho:.2f} × the baseline' in time_claim.sentence
    assert f'mean ρ {rho:.3f}' in time_claim.sentence
    assert '4 of 4 PSS schedules' in time_claim.sentence
    assert f'give {0.2 + 0.8 * rho:.2f} × for its mix' in time_claim.sentence
    # claim 2: cyclic 96.8 + 0.05 (mean over seeds) vs baseline 97.05 -> -0.20
    assert 'Cyclic(0.2, 1.0) (-0.20 / -0.20)' in accuracy.sentence  # mean / median: 2 seeds, the same
    # claim 3: at rho 0.2 the baseline falls by 40 x 0.64 = 25.6, cyclic by 5 x 0.64 = 3.2, from 97.0 / 96.8
    assert f'{(96.8 - 3.2) - (97.0 - 25.6):+.2f} points at ρ 0.2' in robustness.sentence
    # claim 4: linear is 2 points (plus 0.2 of top-1 and fall) below cyclic below rho 1
    assert '5 of 5 ρ' in cyclic_linear.sentence
    # claim 5: centre 90% / corners 30%; 4 of 10 kept patches on ink vs 4 of 16 overall
    assert 'centre position for 90%' in centre.sentence and 'corner for 30%' in centre.sentence
    assert '40% of its kept patches' in centre.sentence and '25% of all patches' in centre.sentence


def test_partial_verdicts():
    results = make_results(holds=True)
    # Fixed(0.6) 2 points below the baseline at rho = 1: claim 2 holds for Linear and Cyclic only
    for r in results['fixed']:
        r.val['acc1'][-1] -= 2.0
    # the cyclic models lose their advantage at rho 0.4 only
    for r in results['cyclic']:
        r.sweep['acc1'][3] = results['baseline'][0].sweep['acc1'][3]
    claims = all_claims(results)
    assert claims[1].status == 'partly holds' and 'Fixed(0.6)' in claims[1].sentence.split('more than')[1]
    assert claims[2].status == 'partly holds'
    assert claims[3].status == 'partly holds'  # linear now beats cyclic at 0.4


def test_one_seed_cannot_decide_a_verdict():
    """Three seeds, one far from the others. A Linear seed 20 points down lifts Cyclic's mean margin but not
    its median one, and is named; a Cyclic seed 60 points up at rho 0.2 and 0.4 passes claim 3 on the mean
    (+20) but not on the median (0): the verdict falls to 'does not hold'."""
    results = make_results(holds=True, seeds=(0, 1, 2))
    linear = results['linear'][2]
    linear.sweep['acc1'] = linear.sweep['acc1'] - 20.0
    linear.val['acc1'][-1] -= 20.0
    _, accuracy, robustness, cyclic_linear, _ = all_claims(results)
    mean_gap = 96.9 - np.mean([96.6, 96.7, 76.8])  # cyclic 96.8 + 0.1 seed; linear 96.6 + 0.1 seed, one -20
    median_gap = 96.9 - 96.6  # the median of 96.6, 96.7, 76.8
    assert f'{mean_gap:+.2f} points on the mean (ρ 1.0)' in cyclic_linear.sentence
    assert f'{median_gap:+.2f} on the median (ρ 1.0)' in cyclic_linear.sentence
    assert 'Linear(0.2, 1.0) seed 2 ends at 76.80% at ρ = 1 (its other seeds: 96.60%, 96.70%)' in \
        cyclic_linear.sentence
    assert 'seed 2 ends at 76.80%' in accuracy.sentence and accuracy.status == 'partly holds'
    assert robustness.status == 'holds' and 'one seed stands apart' not in robustness.sentence

    results = make_results(holds=False, seeds=(0, 1, 2))
    baseline = results['baseline'][0].sweep['acc1']
    for r in results['cyclic']:  # level with the baseline at rho 0.4 and 0.2 ...
        r.sweep['acc1'][3:] = baseline[3:]
    results['cyclic'][0].sweep['acc1'][3:] += 60.0  # ... but one seed
    robustness = all_claims(results)[2]
    assert robustness.status == 'does not hold'
    # cyclic: b, b, b + 60 (b = baseline seed 0); baseline seeds: b, b + 0.1, b + 0.2
    assert '+19.90 / -0.10 points at ρ 0.4' in robustness.sentence


def test_time_claim_sees_through_a_change_of_machine_load():
    """Cyclic runs that were fast only because the machine was quieter (the same time at every rho)
    pass on wall time but not on their own per-rho times: partly holds, not holds."""
    results = make_results(holds=True)
    for r in results['cyclic']:
        r.train['time'] = np.full_like(r.train['time'], 0.5)
    claim = all_claims(results)[0]
    assert claim.status == 'partly holds'
    assert '0.50 × the baseline' in claim.sentence and 'give 1.00 × for its mix' in claim.sentence
    assert '| schedule mix | 54 |  | 1.00 |' in claim.tables[1]


def test_single_seed_and_missing_ratios():
    """One seed (no spread to show) and a sweep without rho 0.2 still give tables and verdicts."""
    results = make_results(holds=True, seeds=(0,))
    for runs in results.values():
        for r in runs:
            keep = r.sweep['drop_ratio'] < 0.7
            r.sweep = {k: v[keep] for k, v in r.sweep.items()}
    claims = all_claims(results)
    assert claims[2].status == 'holds' and 'ρ 0.2' not in claims[2].sentence
    assert '±' not in claims[1].tables[0]
    assert '| 0.2 |' not in sweep_table(results)


def test_readme_lists_every_claim_with_measured_rows():
    results = make_results(holds=False)
    claims = all_claims(results)
    meta = {'command': 'python reproduce.py', 'commit': 'abc1234', 'machine': 'test CPU, 2 cores',
            'wall_time': '0:40:00', 'setup': 'synthetic', 'date': '2026-01-01'}
    text = render_readme(claims, meta, [('overview.png', 'the overview')], sweep_table(results))
    for c in claims:
        section = text.split(f'## Claim {c.number}: {c.title}')[1].split('## ')[0]
        assert f'Criterion: {c.criterion}' in section
        assert f'**{c.status.capitalize()}**: {c.sentence}.' in section
        assert 'Why not at this scale' in section
        assert f'| {c.number} | {c.title} | **{c.status}**' in text  # the verdict table
    # measured rows: every schedule in claims 1, 2 and 5; every rho in claims 3 and 4
    for number in (1, 2, 5):
        for setting in SETTINGS:
            assert f'| {setting.label}' in claims[number - 1].tables[0]
    for number in (3, 4):
        for rho in RHOS:
            assert f'| {rho:.1f} |' in claims[number - 1].tables[0]
    for key in ('python reproduce.py', 'abc1234', 'test CPU, 2 cores', '0:40:00', 'figures/overview.png'):
        assert key in text
    setup = setup_description(results, Plan(seeds=(0, 1), epochs=3))
    assert '16 px (360 validation images' in setup and '(17 tokens with CLS)' in setup
    assert '3 epochs of 9 steps of 64 images' in setup and '2 seed(s) per schedule (0, 1)' in setup


@pytest.mark.parametrize('folder, dataset', [('results', 'fashion_mnist'), ('results_digits', 'digits')])
def test_committed_results_readme_is_what_the_committed_runs_give(folder, dataset):
    """<folder>/README.md was written by reproduce.py from <folder>/runs: recomputing every claim from the
    committed runs gives the committed verdicts, sentences and tables (no hand edits, no stale report)."""
    out, plan = os.path.join(ROOT, folder), make_plan(dataset=dataset)
    results = load_results(out, plan)
    with open(os.path.join(out, 'README.md')) as f:
        committed = f.read()
    for c in all_claims(results, plan.dataset):
        assert f'**{c.status.capitalize()}**: {c.sentence}.' in committed
        for table in c.tables:
            assert table in committed
    assert sweep_table(results) in committed
    pretraining = load_pretraining(out) if plan.pretrained else None
    assert setup_description(results, plan, pretraining) in committed
    if plan.pretrained:
        assert pretraining_table(results, pretraining['seconds']) in committed


def test_committed_runs_are_read_with_the_meanings_they_were_written_with():
    """results_digits/runs was written before train_log.json `loss` became the original's running mean and
    val_log.json `time` the mean per batch: their `loss` is each step's, their `time` the whole pass."""
    out = os.path.join(ROOT, 'results_digits')
    run = load_results(out, make_plan(dataset='digits'))['cyclic'][0]
    run_dir = os.path.join(out, 'runs', 'magnitude_cyclic_seed0')
    with open(os.path.join(run_dir, 'train_log.json')) as f:
        lines = [json.loads(line) for line in f]
    with open(os.path.join(run_dir, 'val_log.json')) as f:
        val_lines = [json.loads(line) for line in f]
    assert 'step_loss' not in lines[0] and 'total_time' not in val_lines[0]
    assert run.train['step_loss'].tolist() == [r['loss'] for r in lines]
    steps = len(lines) // len(val_lines)
    assert run.train['loss'][steps + 4] == pytest.approx(np.mean([r['loss'] for r in lines[steps:steps + 5]]))
    assert run.val['total_time'].tolist() == [r['time'] for r in val_lines]


# -----------------------------------------------------------------------------
# Skip if done, and a killed reproduce.py that continues
# -----------------------------------------------------------------------------
QUICK = Plan(seeds=(0, 1), epochs=2, opts=('DATA.IMG_SIZE', '16'), sweep_drop_ratios=(0.0, 0.4, 0.8),
             image_drop_ratios=(0.0, 0.4), distribution_drop_ratios=(0.4,))
# the same with a SimMIM pre-training first, as the Fashion-MNIST plan has
PRETRAINED = Plan(seeds=(0, 1), epochs=2, opts=('DATA.IMG_SIZE', '16'), sweep_drop_ratios=(0.0, 0.4, 0.8),
                  image_drop_ratios=(0.0, 0.4), distribution_drop_ratios=(0.4,), dataset=DATASETS['fashion_mnist'],
                  pretrain_opts=('TRAIN.EPOCHS', '1'))
MODEL_NAMES = {d.config_dir: d.model_name for d in DATASETS.values()}


def write_jsonl(path, records):
    with open(path, 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in records)


def option(args, name):
    return args[args.index(name) + 1]


def values_after(args, name):
    rest = args[args.index(name) + 1:]
    return rest[:next((i for i, a in enumerate(rest) if a.startswith('--')), len(rest))]


def opts_config(args):
    """The nested config dict that a script's --opts KEY VALUE pairs set."""
    opts, config = values_after(args, '--opts'), {}
    for key, value in zip(opts[::2], opts[1::2]):
        node = config
        *parents, last = key.split('.')
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value)
    return config


def fake_pretraining(args, pretrained_from):
    """What main_simmim.py writes: config.yaml, train_log.json and a checkpoint of its finished last epoch."""
    import torch

    config = opts_config(args)
    config['TRAIN'].setdefault('EPOCHS', 1)
    config['DATA'].update({'BATCH_SIZE': 64, 'MASK_RATIO': 0.6, 'MASK_PATCH_SIZE': 8})
    run_dir = os.path.join(option(args, '--output'), DATASETS['fashion_mnist'].pretrain_model_name,
                           option(args, '--tag'))
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, 'config.yaml'), 'w') as f:
        yaml.safe_dump(config, f)
    step_loss = 1.0 - 0.1 * np.arange(5)  # `loss` is the running mean over the epoch, as main_simmim.py logs it
    write_jsonl(os.path.join(run_dir, 'train_log.json'), [
        {'epoch': 0, 'iteration': i, 'loss': float(np.mean(step_loss[:i + 1])), 'step_loss': float(step_loss[i]),
         'time': 24.0} for i in range(5)])
    torch.save({'epoch': config['TRAIN']['EPOCHS'] - 1, 'step_in_epoch': 0, 'config': yaml.safe_dump(config),
                'model': {'encoder.cls_token': torch.full((1, 1, 4), 0.5)}},
               os.path.join(run_dir, 'checkpoint.pth'))
    pretrained_from.append(option(args, '--tag'))


def fake_runner(calls, fail_at=None, pretrained_from=None):
    """Stands in for run_command: writes what each script would write, from its arguments. `pretrained_from`
    collects the --pretrained of each main_finetune.py ('' without)."""
    pretrained_from = [] if pretrained_from is None else pretrained_from

    def runner(args, log_path):
        calls.append((args[0], option(args, '--tag')))
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt  # killed mid-stage: nothing of this stage is written
        if args[0] == 'main_simmim.py':
            return fake_pretraining(args, [])
        run_dir = os.path.join(option(args, '--output'), MODEL_NAMES[os.path.dirname(option(args, '--cfg'))],
                               option(args, '--tag'))
        os.makedirs(run_dir, exist_ok=True)
        config = opts_config(args)
        config.setdefault('MODEL', {})['VIT'] = {'PATCH_SIZE': 4, 'EMBED_DIM': 48, 'DEPTH': 2, 'NUM_HEADS': 3}
        config.setdefault('DATA', {}).update({'BATCH_SIZE': 64})
        config['TRAIN'].setdefault('WARMUP_EPOCHS', 1)
        config['TRAIN'].setdefault('LAYER_DECAY', 0.75)
        config['MODEL']['DROP_PATH_RATE'] = 0.1
        name = re.sub(r'_\d+ep$', '', option(args, '--tag').rsplit('_seed', 1)[0])  # the length study's runs
        key = next(s.key for s in SETTING_BY_KEY.values() if s.name == name)
        seed = config['SEED']
        penalty = 5.0 if key == 'scratch' else 0.0  # without the pre-training: 5 points lower everywhere
        if args[0] == 'main_finetune.py':
            pretrained_from.append(option(args, '--pretrained') if '--pretrained' in args else '')
            with open(os.path.join(run_dir, 'config.yaml'), 'w') as f:
                yaml.safe_dump(config, f)
            train = train_log(key, seed, epochs=config['TRAIN']['EPOCHS'])
            write_jsonl(os.path.join(run_dir, 'train_log.json'), [
                {name: train[name][i].item() for name in ('epoch', 'iteration', 'loss', 'time', 'cpu_time',
                                                          'patch_drop_ratio')} for i in range(len(train['time']))])
            write_jsonl(os.path.join(run_dir, 'val_log.json'), [
                {'epoch': e, 'acc1': 90.0 + e - penalty, 'loss': 0.5, 'time': 1.0}
                for e in range(config['TRAIN']['EPOCHS'])])
            with open(os.path.join(run_dir, 'checkpoint.pth'), 'w') as f:
                f.write('weights')
            return
        ratios = [float(r) for r in values_after(args, '--drop-ratios')]
        if args[0] == 'sweep_drop.py':
            write_jsonl(os.path.join(run_dir, 'sweep_drop.json'), [
                {'drop_ratio': d, 'acc1': 90.0 - 10 * d - penalty, 'throughput': 100.0, 'num_images': 360}
                for d in ratios])
        elif args[0] == 'image_patches.py':
            data = image_patches_data(on_ink=True)
            with open(os.path.join(run_dir, 'image_patches.json'), 'w') as f:
                json.dump(data, f)
        else:
            with open(os.path.join(run_dir, 'patch_distribution.json'), 'w') as f:
                json.dump(distribution_data(0.8, 0.4), f)
    return runner


def all_stage_calls(plan):
    calls = [('main_simmim.py', 'pretrain')] if plan.pretrained else []
    for run in plan_runs(plan):
        scripts = ['main_finetune.py', 'sweep_drop.py'] + (['image_patches.py', 'patch_distribution.py']
                                                           if run.extras else [])
        calls += [(script, run.name) for script in scripts]
    return calls


def test_execute_runs_everything_once_and_skips_it_the_second_time(tmp_path):
    out, work = str(tmp_path / 'results'), str(tmp_path / 'work')
    calls = []
    report = execute(QUICK, out, work, runner=fake_runner(calls), log=lambda s: None)
    assert calls == all_stage_calls(QUICK)
    assert len(report['ran']) == 10 and not report['skipped']
    # the results hold the small files only, extras for the first seed
    assert sorted(os.listdir(os.path.join(out, 'runs', 'magnitude_cyclic_seed0'))) == [
        'config.yaml', 'image_patches.json', 'patch_distribution.json', 'provenance.json', 'sweep_drop.json',
        'train_log.json', 'val_log.json']
    assert sorted(os.listdir(os.path.join(out, 'runs', 'magnitude_cyclic_seed1'))) == [
        'config.yaml', 'provenance.json', 'sweep_drop.json', 'train_log.json', 'val_log.json']
    timings = json.load(open(os.path.join(out, 'timings.json')))
    assert set(timings['baseline_seed0']) == {'train', 'sweep', 'image_patches', 'patch_distribution'}

    calls.clear()
    report = execute(QUICK, out, work, runner=fake_runner(calls), log=lambda s: None)
    assert calls == [] and len(report['skipped']) == 10

    # the results copy alone (checkpoints gone) is enough to skip, and to write the README from
    import shutil
    shutil.rmtree(work)
    assert execute(QUICK, out, work, runner=fake_runner(calls), log=lambda s: None)['ran'] == []
    claims = all_claims(load_results(out, QUICK))
    text = render_readme(claims, {k: 'x' for k in ('command', 'commit', 'machine', 'wall_time', 'setup', 'date')})
    assert all(f'## Claim {c.number}' in text for c in claims)


def test_a_killed_reproduce_continues_where_it_stopped(tmp_path):
    out, work = str(tmp_path / 'results'), str(tmp_path / 'work')
    calls = []
    with pytest.raises(KeyboardInterrupt):  # killed during the 7th stage: the sweep of the 2nd run
        execute(QUICK, out, work, runner=fake_runner(calls, fail_at=6), log=lambda s: None)
    expected = all_stage_calls(QUICK)
    assert calls == expected[:6]
    calls.clear()
    execute(QUICK, out, work, runner=fake_runner(calls), log=lambda s: None)
    assert calls == expected[5:]  # the interrupted stage again, then the rest; nothing twice


def test_pretraining_comes_first_once_and_every_fine_tuning_but_scratch_starts_from_it(tmp_path):
    out, work = str(tmp_path / 'results'), str(tmp_path / 'work')
    calls, pretrained_from = [], []
    report = execute(PRETRAINED, out, work, runner=fake_runner(calls, pretrained_from=pretrained_from),
                     log=lambda s: None)
    assert calls == all_stage_calls(PRETRAINED) and calls[0] == ('main_simmim.py', 'pretrain')
    assert calls[-2:] == [('main_finetune.py', 'baseline_scratch_seed0'), ('sweep_drop.py', 'baseline_scratch_seed0')]
    assert pretrained_from == [pretrain_checkpoint(PRETRAINED, work)] * 10 + ['']  # the last: from scratch
    assert len(report['ran']) == 12  # the pre-training and 11 runs
    assert sorted(os.listdir(os.path.join(out, 'runs', 'simmim_pretrain'))) == ['config.yaml', 'provenance.json',
                                                                              'train_log.json']
    pre = load_pretraining(out)
    assert pre['steps'] == 5 and pre['final_loss'] == pytest.approx(0.8) and pre['config']['SEED'] == 0
    assert json.load(open(os.path.join(out, 'timings.json')))['simmim_pretrain'].keys() == {'pretrain'}
    # everything done: nothing runs, not even the pre-training; nor when only the checkpoints are gone
    calls.clear()
    assert execute(PRETRAINED, out, work, runner=fake_runner(calls), log=lambda s: None)['ran'] == [] and not calls
    import shutil
    shutil.rmtree(work)
    assert execute(PRETRAINED, out, work, runner=fake_runner(calls), log=lambda s: None)['ran'] == [] and not calls
    results = load_results(out, PRETRAINED)
    assert [r.seed for r in results['scratch']] == [0] and len(results['baseline']) == 2
    text = pretraining_table(results, pre['seconds'])
    assert 'baseline (seed 0) ends at 91.00%' in text and 'random initialisation ends at 86.00%' in text
    assert '+5.00 points from the pre-training' in text and 'steps took 2.0 minutes' in text
    assert '| 0.6 | 86.00 | 81.00 | +5.00 |' in text


def test_a_killed_pretraining_runs_again_and_only_it(tmp_path):
    out, work = str(tmp_path / 'results'), str(tmp_path / 'work')
    calls = []
    with pytest.raises(KeyboardInterrupt):
        execute(PRETRAINED, out, work, runner=fake_runner(calls, fail_at=1), log=lambda s: None)
    calls.clear()
    execute(PRETRAINED, out, work, runner=fake_runner(calls), log=lambda s: None)
    assert calls == all_stage_calls(PRETRAINED)
    # a pre-training made with other settings is another experiment
    other = Plan(**{**PRETRAINED.__dict__, 'pretrain_opts': ('TRAIN.EPOCHS', '2'), 'seeds': (5,)})
    with pytest.raises(ReproduceError, match='TRAIN.EPOCHS is 1, but this command sets 2'):
        execute(other, out, work, runner=fake_runner(calls), log=lambda s: None)


def test_missing_stages(tmp_path):
    run = Run(SETTINGS[3], seed=0, extras=True)
    run_dir = str(tmp_path / 'work' / 'demo' / run.name)
    assert missing_stages(run_dir, QUICK, run) == ['train', 'sweep', 'image_patches', 'patch_distribution']
    runner = fake_runner([])
    runner(stage_command('train', run, QUICK, str(tmp_path / 'work')), None)
    assert missing_stages(run_dir, QUICK, run) == ['sweep', 'image_patches', 'patch_distribution']
    # a sweep missing one ratio is not done
    write_jsonl(os.path.join(run_dir, 'sweep_drop.json'), [{'drop_ratio': d, 'acc1': 1.0, 'throughput': 1.0}
                                                          for d in (0.0, 0.4)])
    assert 'sweep' in missing_stages(run_dir, QUICK, run)
    for stage in ('sweep', 'image_patches', 'patch_distribution'):
        runner(stage_command(stage, run, QUICK, str(tmp_path / 'work')), None)
    assert missing_stages(run_dir, QUICK, run) == []
    assert missing_stages(run_dir, QUICK, Run(SETTINGS[3], seed=0, extras=False)) == []
    # a val_log one epoch short: train again (and so everything after it)
    with open(os.path.join(run_dir, 'val_log.json')) as f:
        lines = f.readlines()
    with open(os.path.join(run_dir, 'val_log.json'), 'w') as f:
        f.writelines(lines[:-1])
    assert missing_stages(run_dir, QUICK, run)[0] == 'train'


def test_other_experiments_are_not_mixed_in(tmp_path):
    run = Run(SETTINGS[0], seed=0, extras=False)
    work = str(tmp_path / 'work')
    run_dir = os.path.join(work, 'demo', run.name)
    fake_runner([])(stage_command('train', run, QUICK, work), None)
    with pytest.raises(ReproduceError, match='DATA.IMG_SIZE is 16, but this command sets 32'):
        missing_stages(run_dir, Plan((0,), 2, ('DATA.IMG_SIZE', '32')), run)
    with pytest.raises(ReproduceError, match='TRAIN.EPOCHS is 2, but this command sets 1'):
        missing_stages(run_dir, Plan((0,), 1, ('DATA.IMG_SIZE', '16')), run)


def test_plans_and_commands():
    full, quick = make_plan(dataset='digits'), make_plan(quick=True, dataset='digits')
    assert len(plan_runs(full)) == 15 and full.epochs == 30 and full.opts == () and not full.pretrained
    assert len(full.sweep_drop_ratios) == 9 and full.sweep_drop_ratios[-1] == 0.8
    assert [r.extras for r in plan_runs(full)] == [True] * 5 + [False] * 10
    assert quick.overrides(1)['SEED'] == '1' and quick.overrides(1)['MODEL.VIT.PATCH_SIZE'] == '4'
    assert make_plan(epochs=5, dataset='digits').overrides(0)['TRAIN.WARMUP_EPOCHS'] == '1'
    with pytest.raises(ReproduceError, match='repeats'):
        make_plan(seeds=[0, 0])
    with pytest.raises(ReproduceError, match='--dataset mnist is not known'):
        make_plan(dataset='mnist')
    run = plan_runs(full)[3]
    command = stage_command('sweep', run, full, 'w')
    assert command[0] == 'sweep_drop.py' and run.name == 'magnitude_cyclic_seed0'
    assert option(command, '--pretrained') == os.path.join('w', 'demo', 'magnitude_cyclic_seed0', 'checkpoint.pth')
    assert values_after(command, '--drop-ratios') == [str(d) for d in full.sweep_drop_ratios]
    assert values_after(command, '--opts') == ['SEED', '0', 'TRAIN.EPOCHS', '30', 'DATA.DATASET', 'digits']
    assert option(stage_command('train', run, full, 'w'), '--cfg') == os.path.join('configs', 'demo',
                                                                                  'magnitude_cyclic.yaml')


def test_the_fashion_mnist_plan_pretrains_then_fine_tunes():
    from reproduce import default_folders
    assert default_folders('fashion_mnist', False) == ('results', os.path.join('output', 'reproduce'))
    assert default_folders('fashion_mnist', True) == ('results_quick', os.path.join('output', 'reproduce_quick'))
    assert default_folders('digits', False) == ('results_digits', os.path.join('output', 'reproduce_digits'))
    full, quick = make_plan(), make_plan(quick=True)
    assert full.dataset.key == quick.dataset.key == 'fashion_mnist' and full.pretrained
    runs = plan_runs(full)
    assert len(runs) == 16 and full.epochs == 4 and full.sweep_drop_ratios == (0.0, 0.2, 0.4, 0.6, 0.8)
    assert [r.pretrained for r in runs] == [True] * 15 + [False]
    assert runs[-1].name == 'baseline_scratch_seed0' and runs[-1].setting.config == 'baseline.yaml'
    train = stage_command('train', runs[3], full, 'w')
    assert option(train, '--cfg') == os.path.join('configs', 'fashion_mnist', 'magnitude_cyclic.yaml')
    assert option(train, '--pretrained') == os.path.join('w', 'simmim_fashion_mnist', 'pretrain', 'checkpoint.pth')
    assert '--pretrained' not in stage_command('train', runs[-1], full, 'w')
    assert full.pretrain_overrides() == {'SEED': '0', 'DATA.DATASET': 'fashion_mnist'}
    # --quick: the fine-tunings on a subset, the pre-training on a larger one for 1 epoch, one model size for both
    assert quick.overrides(0)['DATA.TRAIN_SUBSET'] == '1280' and quick.pretrain_overrides()['TRAIN.EPOCHS'] == '1'
    assert quick.pretrain_overrides()['DATA.TRAIN_SUBSET'] == '2560'
    for key in ('DATA.IMG_SIZE', 'MODEL.VIT.EMBED_DIM', 'MODEL.VIT.DEPTH', 'MODEL.VIT.PATCH_SIZE'):
        assert quick.overrides(0)[key] == quick.pretrain_overrides()[key]


def test_progress_line_and_eta():
    assert estimate_seconds([['train', 'sweep']], {'train': [100.0]}) is None
    timed = {'train': [100.0, 120.0], 'sweep': [10.0]}
    assert estimate_seconds([['train', 'sweep'], ['sweep']], timed) == 130.0
    assert progress_line(1, 15, 'baseline_seed0', ['train'], 0, None).endswith('ETA after the first run)')
    line = progress_line(3, 15, 'x', ['train', 'sweep'], 300, 1950.0)
    assert line == '[3/15] x: train, sweep (elapsed 0:05:00, ETA 0:32:30)'
