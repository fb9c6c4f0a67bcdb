"""reproduce.py --study length without training: its runs and commands (full and --quick plans), its stage
through the fake scripts, its verdict against hand-made numbers, and the report that names the runs' machine
and commit rather than the one rewriting it."""
import json
import os

import numpy as np
import pytest

from reproduction import length_study
from reproduction.claims import md_table
from reproduction.plan import LENGTH_PRETRAIN_RUN, ROOT, Plan, ReproduceError, length_runs, make_plan, study_lengths
from reproduction.report import canonical_command, length_claim, write_report
from reproduction.results import RunResult
from reproduction.stages import execute, read_timings, stage_command
from tests.test_reproduce import option, values_after

FULL = make_plan()


def fake(calls, pretrained_from=None):
    from tests.test_reproduce import fake_runner
    return fake_runner(calls, pretrained_from=pretrained_from)


def test_the_study_runs_and_their_commands():
    runs = length_runs(FULL)
    assert study_lengths(FULL) == (4, 8, 16)
    assert [r.name for r in runs[:5]] == ['baseline_8ep_seed0', 'magnitude_cyclic_8ep_seed0',
                                         'magnitude_linear_8ep_seed0', 'baseline_8ep_seed1',
                                         'magnitude_cyclic_8ep_seed1']
    assert [r.epochs for r in runs] == [8] * 5 + [16] * 5 and all(r.pretrained and not r.extras for r in runs)
    # the shortest length is the plan's own runs, same names
    assert [r.name for r in length_runs(FULL, (4,))] == ['baseline_seed0', 'magnitude_cyclic_seed0',
                                                        'magnitude_linear_seed0', 'baseline_seed1',
                                                        'magnitude_cyclic_seed1']
    train = stage_command('train', runs[6], FULL, 'w', 'weights.safetensors')
    assert option(train, '--tag') == 'magnitude_cyclic_16ep_seed0'
    assert option(train, '--pretrained') == 'weights.safetensors'
    assert values_after(train, '--opts') == ['SEED', '0', 'TRAIN.EPOCHS', '16', 'DATA.DATASET', 'fashion_mnist']
    # no warm-up override: the configs' 1 warm-up epoch, then a cosine over the run's own length
    assert 'TRAIN.WARMUP_EPOCHS' not in values_after(train, '--opts')
    quick = make_plan(quick=True)
    assert study_lengths(quick) == (2, 4, 8) and [r.name for r in length_runs(quick)][:3] == [
        'baseline_4ep_seed0', 'magnitude_cyclic_4ep_seed0', 'magnitude_linear_4ep_seed0']
    with pytest.raises(ReproduceError, match='--dataset digits does not have'):
        execute(make_plan(dataset='digits'), 'o', 'w', runner=None, study='length')


@pytest.mark.slow
def test_the_quick_study_runs_from_one_kept_pre_training_and_resumes(tmp_path):
    """The --quick plan's study through the fake scripts: one pre-training whose weights are kept in
    <out>/runs/simmim_pretrain_length, every run from them, nothing twice, and the report's new section."""
    # the --quick plan, with the ratios the fake image_patches.py and patch_distribution.py write
    quick = Plan(**{**make_plan(quick=True).__dict__, 'image_drop_ratios': (0.0, 0.4),
                    'distribution_drop_ratios': (0.4,)})
    out, work = str(tmp_path / 'results'), str(tmp_path / 'work')
    calls = []
    execute(quick, out, work, runner=fake(calls), log=lambda s: None)  # the plan's own runs: the shortest length
    calls, pretrained_from = [], []
    report = execute(quick, out, work, runner=fake(calls, pretrained_from), log=lambda s: None, study='length')
    weights = os.path.join(out, 'runs', LENGTH_PRETRAIN_RUN, 'model.safetensors')
    # the plan's pre-training is done: exported once, not run again; quick: 1 seed, 3 schedules x 2 lengths
    assert ('main_simmim.py', 'pretrain') not in calls and len(calls) == 2 * 6
    assert pretrained_from == [weights] * 6 and os.path.exists(weights)
    assert [name for name, _ in report['ran']] == [r.name for r in length_runs(quick)]
    with open(os.path.join(out, 'runs', 'magnitude_cyclic_8ep_seed0', 'config.yaml')) as f:
        assert 'EPOCHS: 8' in f.read()
    # a second invocation trains nothing; with the checkpoints gone, the kept weights spare the pre-training
    import shutil
    shutil.rmtree(os.path.join(out, 'runs', 'baseline_8ep_seed0'))
    shutil.rmtree(work)
    calls = []
    execute(quick, out, work, runner=fake(calls), log=lambda s: None, study='length')
    assert calls == [('main_finetune.py', 'baseline_8ep_seed0'), ('sweep_drop.py', 'baseline_8ep_seed0')]

    claims = write_report(out, quick, canonical_command(quick, quick=True))
    with open(os.path.join(out, 'README.md')) as f:
        text = f.read()
    length = claims[-1]
    assert length.number == 2 and 'after 8 epochs' in length.title
    assert '### Accuracy at ρ = 1 after 8 epochs of fine-tuning (the length study)' in text
    assert length.tables[0] in text and length.status == 'holds'  # the fake scripts give every schedule 90 + epoch
    assert '| Cyclic(0.2, 1.0) | 8 | 0 | 97.00 |' in length.tables[0]
    assert 'figures/fine_tuning_length.png' in text and os.path.exists(os.path.join(out, 'figures',
                                                                                    'fine_tuning_length.png'))
    assert '`python reproduce.py --quick`, then `python reproduce.py --quick --study length`' in text


def result(key, seed, top1, epochs, low=(50.0, 30.0)):
    """A RunResult ending at `top1` at rho 1, and `low` at rho 0.4 and 0.2."""
    sweep = {'drop_ratio': np.array([0.0, 0.6, 0.8]), 'acc1': np.array([top1, *low]),
             'throughput': np.ones(3), 'num_images': np.full(3, 10000)}
    train = {'time': np.full(10 * epochs, 6.0), 'patch_drop_ratio': np.zeros(10 * epochs)}
    return RunResult(key, seed, train, {'acc1': np.array([top1 - 5, top1])}, sweep)


def study(gaps, spread=0.2, base=80.0):
    """Length results where each of Cyclic and Linear is gaps[epochs] from the baseline; seed 1 is `spread`
    above seed 0 for the baseline and Cyclic."""
    results = {}
    for epochs, g in gaps.items():
        results[('baseline', epochs)] = [result('baseline', s, base + s * spread, epochs) for s in (0, 1)]
        results[('cyclic', epochs)] = [result('cyclic', s, base + g + s * spread, epochs) for s in (0, 1)]
        results[('linear', epochs)] = [result('linear', 0, base + g, epochs)]
    return results


@pytest.mark.parametrize('gaps, status, phrase', [
    ({4: -2.0, 8: -1.5, 16: -0.8}, 'holds', 'within 1 point, and the gap shrank by more than the spread'),
    ({4: -2.0, 8: -1.9, 16: -1.5}, 'holds', 'more than 1 point below, and the gap shrank by more than the spread'),
    ({4: -2.0, 8: -2.0, 16: -1.9}, 'does not hold', 'more than 1 point below, and the gap did not shrink'),
    ({4: -0.5, 8: -0.5, 16: -0.5}, 'holds', 'within 1 point, and the gap did not shrink'),
])
def test_the_verdict_follows_the_stated_criterion(gaps, status, phrase):
    results = study(gaps)
    found, sentence = length_study.verdict(results, FULL)
    assert found == status and phrase in sentence
    # the mean gap from the baseline's two seeds (80.0 and 80.2) to Cyclic's (80 + g, 80.2 + g) is g
    assert f'is {gaps[16]:+.2f} / {gaps[16]:+.2f} points from the baseline after 16 epochs' in sentence
    assert 'seed spread 0.20' in sentence


def test_a_spread_larger_than_the_shrinkage_does_not_count():
    assert length_study.verdict(study({4: -2.0, 8: -1.8, 16: -1.5}, spread=0.6), FULL)[0] == 'does not hold'


def test_an_unfinished_study_is_not_judged_and_its_table_shows_what_is_done():
    results = study({4: -2.0, 8: -1.0, 16: -0.5})
    del results[('linear', 16)], results[('cyclic', 16)][1]
    status, sentence = length_study.verdict(results, FULL)
    assert status == 'not measured' and 'Linear(0.2, 1.0) at 16 epochs' in sentence and 'Cyclic' in sentence
    table = length_study.length_table(results, FULL)
    expected_row = ['Cyclic(0.2, 1.0)', 8, '0, 1', '79.10 (79.00 to 79.20)', '50.00 (50.00 to 50.00)',
                    '30.00 (30.00 to 30.00)', '-1.00 / -1.00 (spread 0.20)', '8.0, 8.0']
    assert md_table(['x'] * 8, [expected_row]).splitlines()[-1] in table
    assert '| Linear(0.2, 1.0) | 16 |' not in table


@pytest.mark.slow
def test_a_command_that_trains_nothing_says_so_and_leaves_the_report_as_committed(tmp_path, capsys):
    """python reproduce.py in a fresh clone, over the committed results: nothing to train, said plainly, and
    the report rewritten elsewhere is the committed one, byte for byte: its machine, commit and date come from
    each run's provenance.json, and nothing in it depends on the invocation."""
    import shutil

    import reproduce

    out, copy = os.path.join(ROOT, 'results'), str(tmp_path / 'results')
    shutil.copytree(out, copy)
    assert reproduce.main(['--out', copy, '--work', str(tmp_path / 'work')]) == 0
    printed = capsys.readouterr().out
    assert 'nothing to train: all 16 runs are finished' in printed
    assert 'give new folders: python reproduce.py --out <new results> --work <new work>' in printed
    assert reproduce.without_folders(['--study', 'length', '--out', 'a', '--work=b', '--seeds', '0']) == [
        '--study', 'length', '--seeds', '0']
    with open(os.path.join(copy, 'README.md')) as f:
        rewritten = f.read()
    with open(os.path.join(out, 'README.md')) as f:
        assert f.read() == rewritten
    with open(os.path.join(copy, 'runs', 'baseline_seed0', 'provenance.json')) as f:
        record = json.load(f)
    assert f"- machine: {record['machine']}" in rewritten and f"- commit: {record['commit']}" in rewritten
    assert not os.path.exists(str(tmp_path / 'work'))  # nothing trained, nothing written there


def test_committed_length_study_is_what_its_runs_give():
    """The committed report's length section, recomputed from results/runs (absent before the study ran)."""
    out, plan = os.path.join(ROOT, 'results'), make_plan()
    claim = length_claim(out, plan, read_timings(out))
    with open(os.path.join(out, 'README.md')) as f:
        committed = f.read()
    if claim is None:
        assert '(the length study)' not in committed
        return
    assert claim.tables[0] in committed and f'**{claim.status.capitalize()}**: {claim.sentence}.' in committed
    assert claim.criterion in committed


def test_the_length_figure_joins_the_means_over_seeds():
    from viz.fine_tuning_length import plot_fine_tuning_length

    def val(top1):
        return {'acc1': np.array([top1])}

    def sweep(low):
        return {'drop_ratio': np.array([0.0, 0.6, 0.8]), 'acc1': np.array([0.0, low, low / 2])}

    runs = [('baseline', 4, val(80.0), sweep(40.0)), ('baseline', 4, val(82.0), sweep(44.0)),
            ('baseline', 16, val(85.0), sweep(50.0)), ('Cyclic', 16, val(84.0), None)]
    fig = plot_fine_tuning_length(runs)
    at_1, at_04 = fig.axes[0], fig.axes[1]
    assert at_1.lines[0].get_xdata().tolist() == [4, 16] and at_1.lines[0].get_ydata().tolist() == [81.0, 85.0]
    assert at_1.lines[1].get_ydata().tolist() == [84.0]
    assert at_04.lines[0].get_ydata().tolist() == [42.0, 50.0] and len(at_04.lines) == 1  # no sweep, no point
