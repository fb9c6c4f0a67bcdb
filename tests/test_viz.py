"""viz/: log readers and their errors, the curve helpers, and every script end to end on small synthetic runs."""
import importlib
import json
import os
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest
import yaml

from patch_scheduler import patch_drop_ratio_at
from viz.common import (DPI, VizInputError, downsample_index, epoch_end_hours, moving_average, read_json,
                        read_sweep, read_train_log, read_val_log, time_unit)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS, ITERS = 3, 20
DROP_RATIOS = (0.0, 0.2, 0.4, 0.6, 0.8)
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


# -----------------------------------------------------------------------------
# Synthetic run folders
# -----------------------------------------------------------------------------
def write_jsonl(path, records):
    path.write_text(''.join(json.dumps(record) + '\n' for record in records))


def train_record(epoch, iteration, loss=2.0, time=0.3, drop=0.0):
    """A line of the current format; `loss` stands in for both the running mean and the step's loss."""
    return {'epoch': epoch, 'iteration': iteration, 'loss': loss, 'step_loss': loss, 'lr': 1e-3, 'time': time,
            'cpu_time': 0.01,
            'gpu_time': time - 0.01, 'memory': 1234.5, 'patch_drop_ratio': drop}


def make_run(root, name, schedule='cyclic', seed=0):
    """A run folder as main_finetune.py, sweep_drop.py, image_patches.py and patch_distribution.py write it:
    3 epochs x 20 iterations, rho on the cyclic schedule (or 1), 32 px images with 4 px patches."""
    run = root / name
    run.mkdir()
    rng = np.random.default_rng(seed)
    start, end = (0.8, -0.1) if schedule == 'cyclic' else (0.0, 0.0)
    train = []
    for i in range(EPOCHS * ITERS):
        drop = patch_drop_ratio_at(i, schedule, start, end, ITERS, EPOCHS)
        time = 0.13 + 0.22 * (1 - drop) + rng.uniform(0, 0.01)  # slower at higher rho, as on a GPU
        train.append(train_record(i // ITERS, i, 2.5 - i / 40 + rng.normal(0, 0.1), time, drop))
    write_jsonl(run / 'train_log.json', train)
    write_jsonl(run / 'val_log.json', [{'epoch': e, 'loss': 1.5 - 0.2 * e, 'acc1': 50 + 10 * e + seed,
                                        'acc5': 80 + 5 * e, 'time': 0.5, 'total_time': 4.0, 'memory': 900.0}
                                       for e in range(EPOCHS)])
    write_jsonl(run / 'sweep_drop.json', [
        {'drop_ratio': d, 'acc1': 70 - 40 * d ** 2 + seed, 'acc5': 90 - 20 * d ** 2, 'loss': 1 + d, 'time': 3.0,
         'throughput': 1000 / (1.1 - d), 'model_throughput': 1500 / (1.1 - d), 'num_tokens': round((1 - d) * 65)}
        for d in np.round(np.arange(0, 0.81, 0.1), 1).tolist()])
    (run / 'config.yaml').write_text(yaml.safe_dump({
        'MODEL': {'TYPE': 'pss_vit' if schedule == 'cyclic' else 'vit'}, 'TAG': name,
        'TRAIN': {'EPOCHS': EPOCHS, 'PATCH_SCHEDULER': {
            'NAME': schedule, 'START_PATCH_DROP_RATIO': start, 'END_PATCH_DROP_RATIO': end,
            'COOLDOWN_EPOCHS': 0, 'ROUND_TO': 0.2}}}))

    num_images, num_patches, num_classes = 3, 64, 10  # 32 px / 4 px = 8 x 8 patches
    kept = []
    for d in DROP_RATIOS:
        num_kept = round((1 - d) * (num_patches + 1))  # CLS counted, as the model keeps round(rho N)
        batch, tokens = [], []
        for b in range(num_images):
            patches = rng.choice(num_patches, num_kept - 1, replace=False) + 1
            batch += [b] * num_kept
            tokens += [0] + sorted(patches.tolist())
        kept.append([batch, tokens])
    (run / 'image_patches.json').write_text(json.dumps({
        'drop_ratios': list(DROP_RATIOS), 'images': rng.normal(size=(num_images, 3, 32, 32)).round(3).tolist(),
        'targets': [1, 4, 7], 'kept_patches': kept,
        'logits': rng.normal(size=(len(DROP_RATIOS), num_images, num_classes)).tolist(),
        'class_to_idx': {f'class_{i}': i for i in range(num_classes)}, 'patch_size': 4}))
    (run / 'patch_distribution.json').write_text(json.dumps({
        'drop_ratios': list(DROP_RATIOS),
        'counts': [rng.binomial(50, 1 - d, size=64).tolist() for d in DROP_RATIOS],  # flat, row-major
        'grid_shape': [8, 8], 'num_images': 50}))
    return run


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp('runs')
    return {'baseline': make_run(root, 'baseline', 'none'), 'cyclic_s0': make_run(root, 'cyclic_s0', seed=0),
            'cyclic_s1': make_run(root, 'cyclic_s1', seed=1)}


def assert_png(path, fig):
    """A non-empty PNG that reads back at the figure's size and is not blank."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000
    image = matplotlib.image.imread(path)
    width, height = fig.get_size_inches() * DPI
    assert abs(image.shape[1] - width) <= 1 and abs(image.shape[0] - height) <= 1
    assert image[..., :3].std() > 0.05


# -----------------------------------------------------------------------------
# Readers
# -----------------------------------------------------------------------------
def test_read_train_log_values(tmp_path):
    path = tmp_path / 'train_log.json'
    write_jsonl(path, [train_record(0, 0, 2.5, 0.1, 0.8), train_record(0, 1, 2.25, 0.2, 0.6),
                       train_record(1, 2, 2.0, 0.3, 0.0)])
    log = read_train_log(str(path), ('loss', 'time', 'patch_drop_ratio', 'memory'))
    assert log['iteration'].tolist() == [0, 1, 2] and log['iteration'].dtype.kind == 'i'
    assert log['epoch'].tolist() == [0, 0, 1]
    assert log['loss'].tolist() == [2.5, 2.25, 2.0]
    assert log['time'].tolist() == [0.1, 0.2, 0.3]
    assert log['patch_drop_ratio'].tolist() == [0.8, 0.6, 0.0]
    assert log['memory'].tolist() == [1234.5] * 3
    assert log['line'].tolist() == [1, 2, 3]


def write_lines(tmp_path, lines, name='train_log.json'):
    path = tmp_path / 'run1' / name
    path.parent.mkdir(exist_ok=True)
    path.write_text('\n'.join(lines) + '\n')
    return str(path)


@pytest.mark.parametrize('bad_line, message', [
    ('{"epoch": 0, "iteration": 2, "loss": ', r'run1/train_log.json line 3: not valid JSON'),
    ('[0, 2, 2.0]', r'run1/train_log.json line 3: expected a JSON object, got list'),
    ('{"epoch": 0, "iteration": 2, "time": 0.3, "patch_drop_ratio": 0.0}',
     r"run1/train_log.json line 3: missing field 'loss'"),
    ('{"epoch": 0, "iteration": 2, "loss": "nan?", "time": 0.3, "patch_drop_ratio": 0.0}',
     r"run1/train_log.json line 3: field 'loss' is 'nan\?', not a number"),
    ('{"epoch": 0, "iteration": 2, "loss": null, "time": 0.3, "patch_drop_ratio": 0.0}',
     r"run1/train_log.json line 3: field 'loss' is None, not a number"),
    ('{"epoch": 0, "iteration": 2, "loss": 1.0}{"epoch": 0}', r'run1/train_log.json line 3: not valid JSON'),
])
def test_read_train_log_names_the_bad_line(tmp_path, bad_line, message):
    good = [json.dumps(train_record(0, i)) for i in range(4)]
    path = write_lines(tmp_path, good[:2] + [bad_line] + good[3:])
    with pytest.raises(VizInputError, match=message):
        read_train_log(path)


def test_blank_lines_are_skipped_and_counted(tmp_path):
    lines = [json.dumps(train_record(0, 0)), '', json.dumps(train_record(0, 1)), '{"epoch": 0, "iteration": 2']
    path = write_lines(tmp_path, lines)
    with pytest.raises(VizInputError, match='line 4: not valid JSON'):
        read_train_log(path)
    path = write_lines(tmp_path, lines[:3] + ['   ', json.dumps(train_record(0, 2))])
    assert read_train_log(path)['line'].tolist() == [1, 3, 5]


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope/train_log.json: file not found'):
        read_train_log(os.path.join(str(tmp_path), 'nope', 'train_log.json'))
    path = write_lines(tmp_path, ['', '  '])
    with pytest.raises(VizInputError, match=r'run1/train_log.json: no records \(the file is empty\)'):
        read_train_log(path)


def test_missing_iterations_are_an_error(tmp_path):
    path = write_lines(tmp_path, [json.dumps(train_record(0, i)) for i in (0, 1, 3, 4)])
    with pytest.raises(VizInputError, match='line 3: iteration 3 follows iteration 1; iteration 2 missing'):
        read_train_log(path)
    path = write_lines(tmp_path, [json.dumps(train_record(0, i)) for i in (0, 1, 5)])
    with pytest.raises(VizInputError, match='iterations 2-4 missing'):
        read_train_log(path)


def test_resumed_run_keeps_the_repeated_iterations_last_written(tmp_path):
    # a crash in epoch 1 after iteration 3, resumed from the end of epoch 0 (iteration 2 on)
    iterations = [0, 1, 2, 3, 2, 3, 4, 5]
    records = [train_record(i // 2, i, loss=float(k)) for k, i in enumerate(iterations)]
    path = write_lines(tmp_path, [json.dumps(r) for r in records])
    log = read_train_log(path)
    assert log['iteration'].tolist() == [0, 1, 2, 3, 4, 5]
    assert log['loss'].tolist() == [0, 1, 4, 5, 6, 7]
    assert log['line'].tolist() == [1, 2, 5, 6, 7, 8]

    val = write_lines(tmp_path, [json.dumps({'epoch': e, 'loss': 1.0, 'acc1': a, 'time': 1.0})
                                 for e, a in ((0, 10), (1, 20), (1, 25), (2, 30))], 'val_log.json')
    assert read_val_log(val)['acc1'].tolist() == [10, 25, 30]


def test_read_sweep_and_json_errors(runs, tmp_path):
    sweep = read_sweep(str(runs['cyclic_s0'] / 'sweep_drop.json'), ('drop_ratio', 'acc1', 'throughput'))
    assert sweep['drop_ratio'].tolist() == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    path = write_lines(tmp_path, ['{"drop_ratios": [0.0],', '  "counts": [[[1]]],', '  "grid_shape": [1 1]}'],
                       'patch_distribution.json')
    with pytest.raises(VizInputError, match='patch_distribution.json line 3: not valid JSON'):
        read_json(path)
    path = write_lines(tmp_path, ['{"drop_ratios": [0.0]}'], 'patch_distribution.json')
    with pytest.raises(VizInputError, match="patch_distribution.json: missing field 'counts'"):
        read_json(path, ('drop_ratios', 'counts'))


# -----------------------------------------------------------------------------
# Curve helpers
# -----------------------------------------------------------------------------
def test_epoch_end_hours_adds_training_and_validation_time():
    train = {'epoch': np.array([0, 0, 1, 1]), 'time': np.full(4, 1800.0)}
    val = {'epoch': np.array([0, 1]), 'total_time': np.array([360.0, 360.0]), 'line': np.array([1, 2])}
    assert epoch_end_hours(train, val).tolist() == pytest.approx([1.1, 2.2])
    with pytest.raises(VizInputError, match='line 1: epoch 0 has no training iterations'):
        epoch_end_hours({'epoch': np.array([1, 1]), 'time': np.ones(2)}, val, 'val_log.json')
    with pytest.raises(VizInputError, match='line 2: epoch 1 has no training iterations'):
        epoch_end_hours({'epoch': np.array([0, 0]), 'time': np.ones(2)}, val, 'val_log.json')


def test_time_unit_is_minutes_for_runs_under_an_hour():
    assert time_unit([np.array([0.1, 0.5]), 0.99]) == (60.0, 'min', 'minutes')
    assert time_unit([np.array([0.1, 1.0]), 0.5]) == (1.0, 'h', 'hours')
    assert time_unit([np.array([])]) == (60.0, 'min', 'minutes')


def test_short_runs_are_drawn_in_minutes(runs):
    """The synthetic runs last about 40 s of training plus 12 s of validation: the time axes are in minutes,
    and the overview's legend gives the final top-1 and the last epoch's end in minutes."""
    from viz.overview import load_run, plot_overview
    from viz.training_curves import load_run as load_curves
    from viz.training_curves import plot_training_curves

    train, val, sweep = load_run(str(runs['cyclic_s0']))
    fig = plot_overview([('cyclic', train, val, sweep)])
    axis = fig.axes[0]
    assert axis.get_xlabel() == 'minutes (training + validation)'
    minutes = epoch_end_hours(train, val) * 60
    assert axis.lines[0].get_xdata() == pytest.approx(minutes)
    assert [t.get_text() for t in axis.get_legend().get_texts()] == \
        [f'cyclic: {val["acc1"][-1]:.2f}% · {minutes[-1]:.2f} min']

    train, val = load_curves(str(runs['cyclic_s0']))
    fig = plot_training_curves([('cyclic', train, val)], smooth=1)
    assert [ax.get_xlabel() for ax in fig.axes[1::2]] == ['minutes (training)', 'minutes (training + validation)',
                                                          'minutes (training + validation)']
    assert fig.axes[0].get_title() == 'training loss'  # a window of 1 is no smoothing
    assert fig.axes[1].lines[0].get_xdata()[-1] == pytest.approx(np.sum(train['time']) / 60)
    assert plot_training_curves([('cyclic', train, val)], smooth=5).axes[0].get_title() == \
        'training loss (mean of 5 iterations)'


def test_overview_legend_and_throughput_numbers_with_seeds(runs):
    """Seeds share a legend entry with their mean final top-1 and time; with more than two labels only the
    first label's throughput is written at the points, and the title says whose."""
    from viz.overview import load_run, plot_overview

    base, s0, s1 = (load_run(str(runs[k])) for k in ('baseline', 'cyclic_s0', 'cyclic_s1'))
    fig = plot_overview([('baseline', *base), ('cyclic', *s0), ('cyclic', *s1)])
    minutes = [epoch_end_hours(train, val)[-1] * 60 for train, val, _ in (base, s0, s1)]
    acc = [val['acc1'][-1] for _, val, _ in (base, s0, s1)]
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [
        f'baseline: {acc[0]:.2f}% · {minutes[0]:.2f} min',
        f'cyclic: {np.mean(acc[1:]):.2f}% · {np.mean(minutes[1:]):.2f} min, mean of 2']
    ax_rho = fig.axes[1]
    assert ax_rho.get_title() == 'top-1 vs ρ at inference (numbers: images/s)'
    assert len(ax_rho.texts) == 2 * 9  # two labels, 9 rho each: all numbers written

    fig = plot_overview([('baseline', *base), ('cyclic', *s0), ('cyclic 2', *s1)])
    ax_rho = fig.axes[1]
    assert ax_rho.get_title() == 'top-1 vs ρ at inference (numbers: images/s of baseline)'
    throughput = base[2]['throughput'][np.argsort(1 - base[2]['drop_ratio'])]
    assert [t.get_text() for t in ax_rho.texts] == [f'{v:.0f}' for v in throughput]


def test_moving_average_and_downsampling():
    assert moving_average([1, 2, 3, 4], 2).tolist() == [1, 1.5, 2.5, 3.5]
    assert moving_average([1, np.nan, 3, 5], 2).tolist() == [1, 1, 3, 4]  # a NaN loss does not poison the rest
    index = downsample_index(1_000_000)
    assert index[0] == 0 and index[-1] == 999_999 and len(index) <= 2001 and np.all(np.diff(index) > 0)
    assert downsample_index(10).tolist() == list(range(10))


# -----------------------------------------------------------------------------
# Script logic
# -----------------------------------------------------------------------------
def test_schedule_values_come_from_patch_scheduler():
    from viz.patch_schedules import Schedule, plot_patch_schedules, schedule_from_config_file

    rho = Schedule('cyclic', 0.8, -0.1, epochs=2, iterations_per_epoch=2502).keep_ratios()
    assert len(rho) == 2 * 2502
    # the change points of tests/test_patch_scheduler.py, in both epochs
    for offset in (0, 2502):
        assert rho[offset + np.array([0, 139, 140, 417, 418, 973, 1529, 1530, 2363])].tolist() == \
            [0.2, 0.2, 0.4, 0.4, 0.6, 1.0, 1.0, 0.8, 0.2]
    schedule = schedule_from_config_file(os.path.join(REPO, 'configs/vit-b/magnitude_cyclic_80_0.yaml'), 50)
    assert schedule == Schedule('cyclic', 0.8, -0.1, 100, 0, 0.2, 50)
    assert schedule_from_config_file(os.path.join(REPO, 'configs/vit-b/baseline.yaml'), 50).name == 'none'

    # the drawn one-epoch step line takes the schedule's value at every iteration
    fig = plot_patch_schedules([('cyclic', Schedule('cyclic', 0.8, -0.1, 3, 0, 0.2, 50))])
    line = fig.axes[1].lines[0]
    x, y = line.get_xdata(), line.get_ydata()
    drawn = [y[np.searchsorted(x, i, side='right') - 1] for i in range(50)]
    expected = [round(1 - patch_drop_ratio_at(i, 'cyclic', 0.8, -0.1, 50, 3), 6) for i in range(50)]
    assert drawn == expected


def test_train_times_per_keep_ratio():
    from viz.train_times import epoch_records, last_complete_epoch, time_per_keep_ratio

    records = [train_record(0, i, time=0.2) for i in range(4)]
    records += [train_record(1, 4 + i, time=t, drop=d) for i, (t, d) in
                enumerate([(0.1, 0.8), (0.3, 0.0), (0.2, 0.4), (0.12, 0.8)])]
    records += [train_record(2, 8, time=0.5)]  # the run is still in epoch 2
    log = {key: np.array([r[key] for r in records]) for key in ('epoch', 'iteration', 'time', 'patch_drop_ratio')}
    assert last_complete_epoch(log) == 1
    means = time_per_keep_ratio(epoch_records(log))
    assert [(rho, n) for rho, n, _ in means] == [(0.2, 2), (0.6, 1), (1.0, 1)]
    assert [t for _, _, t in means] == pytest.approx([0.11, 0.2, 0.3])
    with pytest.raises(VizInputError, match='no iterations of epoch 7; the log holds epochs 0-2'):
        epoch_records(log, 7)


def test_sweep_statistics_over_seeds():
    from viz.sweep_drop_ratio import sweep_statistics

    def sweep(acc, speed):
        return {'drop_ratio': np.array([0.0, 0.4, 0.8]), 'acc1': np.array(acc), 'throughput': np.array(speed)}

    stats = sweep_statistics([sweep([80, 70, 40], [100, 200, 400]), sweep([82, 74, 50], [110, 210, 410])])
    assert stats['keep_ratio'].tolist() == [0.2, 0.6, 1.0]
    assert stats['mean'].tolist() == [45, 72, 81]
    assert stats['low'].tolist() == [40, 70, 80] and stats['high'].tolist() == [50, 74, 82]
    assert stats['throughput'].tolist() == [405, 205, 105]


def test_image_patch_masks_and_panels():
    from viz.image_patches import kept_patch_masks, kept_patch_outlines, render_panel

    # 2 images on a 2 x 3 grid: image 0 keeps CLS and patches 0 and 4, image 1 CLS and patch 5
    masks = kept_patch_masks([[[0, 0, 0, 1, 1], [0, 1, 5, 0, 6]]], num_images=2, grid_shape=(2, 3))
    expected = np.zeros((1, 2, 2, 3), dtype=bool)
    expected[0, 0, 0, 0] = expected[0, 0, 1, 1] = expected[0, 1, 1, 2] = True
    assert np.array_equal(masks, expected)
    with pytest.raises(VizInputError, match=r'token indices outside \[0, 6\]'):
        kept_patch_masks([[[0], [7]]], num_images=1, grid_shape=(2, 3))

    image = np.random.default_rng(0).uniform(size=(4, 6, 3))
    panel = render_panel(image, masks[0, 0], patch_size=2)
    assert np.array_equal(panel[:2, :2], image[:2, :2])  # kept patch 0: unchanged
    assert np.allclose(panel[:2, 2:4], 0.25 * image[:2, 2:4] + 0.75)  # dropped patch 1: faded to white
    assert len(kept_patch_outlines(masks[0, 0], 2)) == 8  # two patches touching at a corner: 4 edges each
    two_side_by_side = np.array([[True, True, False], [False, False, False]])
    assert len(kept_patch_outlines(two_side_by_side, 2)) == 7  # the shared edge once


def test_patch_distribution_fractions(runs):
    from viz.patch_distribution import centre_and_corners, kept_fractions

    data = json.loads((runs['cyclic_s0'] / 'patch_distribution.json').read_text())
    drop_ratios, fractions = kept_fractions(data)
    assert drop_ratios.tolist() == list(DROP_RATIOS)
    flat = np.asarray(data['counts'])  # the original's form: position p is row p // 8, column p % 8
    assert fractions.shape == (5, 8, 8)
    assert fractions[:, 2, 5].tolist() == (flat[:, 2 * 8 + 5] / 50).tolist()
    assert np.array_equal(fractions, flat.reshape(5, 8, 8) / 50)
    # this project's earlier form, one [grid_h][grid_w] grid per ratio, reads the same
    _, from_grids = kept_fractions({**data, 'counts': flat.reshape(5, 8, 8).tolist()})
    assert np.array_equal(from_grids, fractions)
    grid = np.arange(16, dtype=float).reshape(4, 4)
    assert centre_and_corners(grid) == (7.5, 7.5)  # centre 5, 6, 9, 10; corners 0, 3, 12, 15
    with pytest.raises(VizInputError, match=r"'counts' has shape \[5, 64\]; expected \[5 drop ratios, "
                                            r"grid_h \* grid_w\] for grid_shape \[4, 4\]"):
        kept_fractions({**data, 'grid_shape': [4, 4]}, 'x.json')


def test_patch_distribution_figure_leaves_out_rho_1(runs):
    """As the original's figure: drop ratio 0.0 (every image keeps every position) gets no panel."""
    from viz.patch_distribution import plot_patch_distribution

    data = json.loads((runs['cyclic_s0'] / 'patch_distribution.json').read_text())
    fig = plot_patch_distribution(data)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ['ρ = 0.8', 'ρ = 0.6', 'ρ = 0.4', 'ρ = 0.2']


# -----------------------------------------------------------------------------
# The scripts
# -----------------------------------------------------------------------------
def script_argv(name, runs):
    base, s0, s1 = (str(runs[k]) for k in ('baseline', 'cyclic_s0', 'cyclic_s1'))
    seeds = ['--runs', base, s0, s1, '--labels', 'baseline', 'cyclic', 'cyclic']
    return {
        'patch_schedules': ['--runs', s0, base],
        'training_curves': seeds,
        'train_times': ['--runs', s0, base],
        'sweep_drop_ratio': seeds,
        'image_patches': ['--runs', s0],
        'patch_distribution': ['--runs', s0, base],
        'overview': seeds,
        'fine_tuning_length': seeds,
    }[name]


SCRIPTS = ('patch_schedules', 'training_curves', 'train_times', 'sweep_drop_ratio', 'image_patches',
           'patch_distribution', 'overview', 'fine_tuning_length')


@pytest.mark.parametrize('name', SCRIPTS)
def test_script_writes_png(name, runs, tmp_path):
    module = importlib.import_module(f'viz.{name}')
    out = tmp_path / 'figures' / f'{name}.png'  # the folder is created
    fig = module.main(script_argv(name, runs) + ['--out', str(out)])
    assert_png(out, fig)


def test_pdf_and_config_files(runs, tmp_path):
    from viz import overview, patch_schedules

    out = tmp_path / 'overview.pdf'
    overview.main(script_argv('overview', runs) + ['--out', str(out)])
    data = out.read_bytes()
    assert data[:5] == b'%PDF-' and b'%%EOF' in data[-64:]

    out = tmp_path / 'schedules.png'
    configs = [os.path.join(REPO, 'configs/vit-b', f) for f in ('magnitude_cyclic_80_0.yaml', 'baseline.yaml')]
    fig = patch_schedules.main(['--configs', *configs, '--iters-per-epoch', '20', '--out', str(out)])
    assert_png(out, fig)


def test_script_input_errors(runs, tmp_path):
    from viz import image_patches, sweep_drop_ratio, training_curves

    with pytest.raises(VizInputError, match='got 1 labels for 2 runs'):
        training_curves.main(['--runs', str(runs['baseline']), str(runs['cyclic_s0']), '--labels', 'a',
                              '--out', str(tmp_path / 'x.png')])
    with pytest.raises(VizInputError, match="unknown figure format '.jpeg'"):
        training_curves.main(['--runs', str(runs['baseline']), '--out', str(tmp_path / 'x.jpeg')])
    with pytest.raises(VizInputError, match='draws one run; got 2'):
        image_patches.main(['--runs', str(runs['baseline']), str(runs['cyclic_s0']), '--out', str(tmp_path / 'x.png')])
    with pytest.raises(FileNotFoundError, match='sweep_drop.json: file not found'):
        sweep_drop_ratio.main(['--runs', str(tmp_path), '--out', str(tmp_path / 'x.png')])


def test_command_line(runs, tmp_path):
    out = tmp_path / 'curves.png'
    result = subprocess.run([sys.executable, 'viz/training_curves.py', *script_argv('training_curves', runs),
                             '--out', str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert 'cyclic: 60 iterations' in result.stdout and 'final top-1 71.00%' in result.stdout  # the summary
    assert f'wrote {out}' in result.stdout
    assert out.read_bytes()[:8] == PNG_SIGNATURE

    # a broken log, and the script run by its absolute path from elsewhere: one line, exit status 1
    broken = tmp_path / 'run1'
    broken.mkdir()
    (broken / 'train_log.json').write_text(json.dumps(train_record(0, 0)) + '\n{"epoch": 0,\n')
    result = subprocess.run([sys.executable, os.path.join(REPO, 'viz', 'train_times.py'), '--runs', 'run1',
                             '--out', 'x.png'], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith('error: run1/train_log.json line 2: not valid JSON')
    assert 'Traceback' not in result.stderr


@pytest.mark.slow
def test_long_train_log(tmp_path):
    """A 100-epoch ImageNet-sized log (250,200 lines) reads and plots; timed by hand, not asserted."""
    from viz import training_curves

    run = tmp_path / 'long'
    run.mkdir()
    n = 100 * 2502
    drop = [patch_drop_ratio_at(i, 'cyclic', 0.8, -0.1, 2502, 100) for i in range(2502)]
    loss = 7 - 4 * np.arange(n) / n
    (run / 'train_log.json').write_text(''.join(
        f'{{"epoch": {i // 2502}, "iteration": {i}, "loss": {loss[i]:.5f}, "lr": 0.00125, "time": 0.25, '
        f'"cpu_time": 0.002, "gpu_time": 0.248, "memory": 21000.0, "patch_drop_ratio": {drop[i % 2502]}}}\n'
        for i in range(n)))
    write_jsonl(run / 'val_log.json', [{'epoch': e, 'loss': 1.0, 'acc1': 80.0, 'acc5': 95.0, 'time': 30.0,
                                        'memory': 9000.0} for e in range(100)])
    out = tmp_path / 'long.png'
    fig = training_curves.main(['--runs', str(run), '--out', str(out)])
    assert_png(out, fig)
    # downsampled: a drawn curve holds about MAX_POINTS points, not 250,200
    assert len(fig.axes[0].lines[0].get_xdata()) <= 2001


# -----------------------------------------------------------------------------
# Logs written with the old meanings
# -----------------------------------------------------------------------------
STEP_LOSSES = [2.0, 1.0, 3.0, 1.5, 0.5, 1.0]  # epochs 0, 0, 0, 1, 1, 1
RUNNING_MEANS = [2.0, 1.5, 2.0, 1.5, 1.0, 1.0]  # by hand: the mean of each epoch's losses so far


def old_train_lines(losses):
    return [{**train_record(i // 3, i, losses[i]), 'step_loss': None} for i in range(6)]


def write_log(folder, name, records):
    folder.mkdir(exist_ok=True)
    write_jsonl(folder / name, [{k: v for k, v in r.items() if v is not None} for r in records])
    return str(folder / name)


def test_logs_of_every_format_read_with_the_originals_meanings(tmp_path):
    from viz.common import epoch_running_mean, step_losses_from_running_mean

    epochs = np.array([0, 0, 0, 1, 1, 1])
    assert epoch_running_mean(epochs, STEP_LOSSES).tolist() == RUNNING_MEANS
    assert step_losses_from_running_mean(epochs, RUNNING_MEANS).tolist() == pytest.approx(STEP_LOSSES)

    # the current format: both fields as written
    new = write_log(tmp_path / 'new', 'train_log.json',
                    [{**train_record(i // 3, i, RUNNING_MEANS[i]), 'step_loss': STEP_LOSSES[i]} for i in range(6)])
    log = read_train_log(new, ('loss',))
    assert log['loss'].tolist() == RUNNING_MEANS and log['step_loss'].tolist() == STEP_LOSSES

    # this project's logs before the rename (results/runs): `loss` was the step's loss
    ours = write_log(tmp_path / 'ours', 'train_log.json', old_train_lines(STEP_LOSSES))
    (tmp_path / 'ours' / 'config.yaml').write_text('SEED: 0\n')
    log = read_train_log(ours, ('step_loss',))
    assert log['step_loss'].tolist() == STEP_LOSSES and log['loss'].tolist() == RUNNING_MEANS

    # the original's logs (its run folder has config.json, no config.yaml): `loss` is the running mean
    original = write_log(tmp_path / 'original', 'train_log.json', old_train_lines(RUNNING_MEANS))
    (tmp_path / 'original' / 'config.json').write_text('MODEL:\n  NAME: fracpatch\n')  # YAML text, as it wrote
    log = read_train_log(original, ('step_loss',))
    assert log['step_loss'].tolist() == pytest.approx(STEP_LOSSES) and log['loss'].tolist() == RUNNING_MEANS

    val = [{'epoch': e, 'loss': 1.0, 'acc1': 50.0, 'acc5': 90.0, 'time': 0.25, 'total_time': 10.0, 'memory': 1.0}
           for e in range(2)]
    log = read_val_log(write_log(tmp_path / 'new', 'val_log.json', val), ('time',))
    assert log['time'].tolist() == [0.25, 0.25] and log['total_time'].tolist() == [10.0, 10.0]
    old_val = [{**r, 'total_time': None, 'time': 10.0} for r in val]  # our `time` was the whole pass
    log = read_val_log(write_log(tmp_path / 'ours', 'val_log.json', old_val), ('total_time',))
    assert log['total_time'].tolist() == [10.0, 10.0] and np.isnan(log['time']).all()
    original_val = [{**r, 'total_time': None} for r in val]  # the original's `time`: mean per batch
    log = read_val_log(write_log(tmp_path / 'original', 'val_log.json', original_val), ('total_time',))
    assert log['time'].tolist() == [0.25, 0.25] and np.isnan(log['total_time']).all()
    # wall-clock axes then leave the unrecorded validation time out
    train = read_train_log(original)
    assert epoch_end_hours(train, log).tolist() == pytest.approx([0.9 / 3600, 1.8 / 3600])

    mixed = write_log(tmp_path / 'mixed', 'train_log.json',
                      [{**train_record(0, i, 1.0), **({'step_loss': None} if i else {})} for i in range(2)])
    with pytest.raises(VizInputError, match="line 2: missing field 'step_loss'"):
        read_train_log(mixed)
