"""The paper's five claims: its numbers, the criterion for each, and the tables and verdicts computed from
what the runs measured."""
from dataclasses import dataclass

import numpy as np

from reproduction.plan import DATASETS, PAPER_SCHEDULES, SETTING_BY_KEY, SETTINGS
from reproduction.results import (INK_THRESHOLD, centre_corners, final_top1, gap, ink_shares, interleaved_time_ratio,
                                  iteration_ms_by_rho, mean_keep_ratio, mean_std, model_scale, num_val_images,
                                  present, sweep_rhos, sweep_top1, sweep_values, training_seconds)

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
CYCLIC_TOLERANCE = 0.5        # claim 4: points cyclic may trail linear (2 of 360 digits, 50 of 10,000 images)
MIN_CENTRE_EXCESS = 5.0       # claim 5: centre minus corner keep rate, points (the paper: 66 - 54 = 12)
OUTLIER_POINTS = 5.0          # a seed this far from its schedule's median top-1 at rho = 1 is named in the verdicts
MIN_INK_EXCESS = 5.0          # claim 5: kept patches' ink share minus all patches' ink share, points
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


def claim_accuracy(results, dataset=DATASETS['digits']):
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
            (f'these models are fine-tuned for {scale["steps"]} steps from a pre-training of a few minutes, where '
             'the paper fine-tunes a ViT-B pre-trained for 800 epochs' if dataset.pretrain_config else
             f'these models are trained from scratch for {scale["steps"]} steps, where the paper fine-tunes a '
             'pre-trained ViT-B')
            + ' that already solves most of the task. A model that is still learning pays for every token it does '
            'not see, and a PSS schedule shows it on average only a fraction ρ of them.'))



def claim_robustness(results, dataset=DATASETS['digits']):
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
            f'a {dataset.object_noun} covers part of a blank background, so magnitude selection at low ρ can keep '
            f'most of it and the baseline loses less than on ImageNet photos; and a model trained '
            f'{"for a few epochs" if dataset.pretrain_config else "from scratch for a few epochs"} has had little '
            f'time to learn from the reduced token sets.'))


def claim_cyclic_vs_linear(results, dataset=DATASETS['digits']):
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
        f'({CYCLIC_TOLERANCE * num_val_images(results) / 100:.0f} of the {num_val_images(results)} validation '
        f'images; seed noise), both on the mean and on the median over seeds. Holds if it is at every ρ, partly '
        f'if at some.',
        [md_table(['ρ', 'Linear top-1 (%)', 'Cyclic top-1 (%)', 'Cyclic − Linear (mean / median)', 'paper Linear',
                   'paper Cyclic', 'paper difference'], rows),
         md_table(['schedule', 'mean ρ', 'training time (s)'], cost)],
        status, sentence,
        why_not='' if status == 'holds' else (
            'the two schedules visit the same ρ levels equally often and differ only in order; with '
            + ('a few short epochs of fine-tuning' if dataset.pretrain_config else
               'epochs of a few dozen steps and a model trained from scratch')
            + ', Linear\'s full-ρ final epochs may matter more than on the paper\'s 100 epochs from a converged '
            'pre-trained model, and the differences are of the size of the seed spread.'))



def claim_centre(results, dataset=DATASETS['digits']):
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
    noun = dataset.object_noun
    if cc:
        passed.append(cc[0] - cc[1] >= MIN_CENTRE_EXCESS)
        parts.append(f'the Cyclic (magnitude) model keeps a centre position for {cc[0]:.0f}% of the images and a '
                     f'corner for {cc[1]:.0f}% at ρ {CENTRE_RHO} (the paper: 66% and 54%)')
    if ink:
        passed.append(ink[0] - ink[1] >= MIN_INK_EXCESS)
        parts.append(f'{ink[0]:.0f}% of its kept patches lie on the {noun}, where {ink[1]:.0f}% of all patches do')
    status = status_from(passed)
    return Claim(
        5, 'Magnitude selection keeps patches near the centre and on the object',
        'At ρ = 0.6 a centre position is kept for about 66% of ImageNet images, a corner for about 54%.',
        f'for the Cyclic (magnitude) model at ρ = {CENTRE_RHO}: the centre position (the middle 2 × 2 block) must '
        f'be kept for at least {MIN_CENTRE_EXCESS:.0f} points more of the validation images than the 4 corners, '
        f'and the share of its kept patches that lie on the {noun} (a pixel brighter than {INK_THRESHOLD} of white, '
        f'on the images of image_patches.json) must exceed the share of all patches on the {noun} by at least '
        f'{MIN_INK_EXCESS:.0f} points. Holds if both do, partly if one does. The other rows are for comparison '
        f'(random selection should keep every position for about ρ of the images).',
        [md_table(['schedule (first seed)', 'centre kept', 'corners kept', 'centre − corners',
                   f'kept patches on the {noun}', f'all patches on the {noun}', 'paper centre', 'paper corners'],
                  rows)],
        status, '; '.join(parts) if parts else 'no patch distribution was measured',
        why_not='' if status == 'holds' else (
            f'the {noun}s are bright on a black background that is the same in every blank patch, so '
            'magnitude selection tells the blank patches apart only by the position embedding added before '
            f'selection; whether {noun} or background patches have the larger embedding norm depends on what a '
            'short run learned, not on the photographic content the paper\'s statement is about.'))


def all_claims(results, dataset=DATASETS['digits']):
    return [claim_time(results), claim_accuracy(results, dataset), claim_robustness(results, dataset),
            claim_cyclic_vs_linear(results, dataset), claim_centre(results, dataset)]


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


def pretraining_table(results, pretrain_seconds=None):
    """The pre-training's effect: the baseline fine-tuned from it against the same fine-tuning from a random
    initialisation (same seed), at every ρ of the sweep; markdown (a sentence and a table).
    `pretrain_seconds`: the sum of the pre-training's per-step times, as training_seconds() is for a run."""
    scratch = results.get('scratch', [])
    if not scratch:
        return 'The baseline from scratch was not run.'
    seed = scratch[0].seed
    pre = [r for r in results['baseline'] if r.seed == seed]
    if not pre:
        return f'The pre-trained baseline of seed {seed} was not run.'
    pre, scratch = pre[0], scratch[0]
    rows = []
    for rho in sweep_rhos(results):
        a, b = sweep_top1(pre, rho), sweep_top1(scratch, rho)
        difference = a - b if a is not None and b is not None else None
        rows.append([f'{rho:.1f}', fmt(a), fmt(b), fmt(difference, signed=True)])
    gain = final_top1(pre) - final_top1(scratch)
    cost = (f'; the pre-training\'s steps took {pretrain_seconds / 60:.1f} minutes, once, against '
            f'{training_seconds(pre) / 60:.1f} for one baseline fine-tuning' if pretrain_seconds else '')
    sentence = (f'Fine-tuned from the SimMIM pre-training, the baseline (seed {seed}) ends at {final_top1(pre):.2f}% '
                f'top-1 at ρ = 1; the same fine-tuning from a random initialisation ends at '
                f'{final_top1(scratch):.2f}%: '
                f'{gain:+.2f} points from the pre-training{cost}.')
    return sentence + '\n\n' + md_table(['ρ at inference', f'baseline, pre-trained (seed {seed}) top-1 (%)',
                                          f'baseline from scratch (seed {seed}) top-1 (%)', 'pre-training gain'], rows)
