"""The length study (reproduce.py --study length): claim 2 read again at 2 and 4 times the fine-tuning length.
Its runs, their table, its criterion (stated before the runs were trained) and its verdict."""
import os

import numpy as np

from reproduction.plan import SETTING_BY_KEY, length_runs, study_lengths
from reproduction.results import final_top1, gap, read_run, sweep_top1, training_seconds

LENGTH_SCHEDULES = ('cyclic', 'linear')  # the PSS schedules of the study, judged against the baseline
LENGTH_RHOS = (1.0, 0.4, 0.2)  # the table's and figure's keep rates at inference
MAX_TOP1_DROP = 1.0  # points below the baseline at rho = 1, as claim 2's criterion at the plan's length


def load_length_results(out, plan):
    """{(setting key, epochs): [RunResult per seed]} of the study's runs finished in <out>/runs; the plan's own
    runs of the same seeds are its shortest length. A run still training is left out."""
    results = {}
    for run in length_runs(plan, study_lengths(plan)):
        run_dir = os.path.join(out, 'runs', run.name)
        if not os.path.exists(os.path.join(run_dir, 'sweep_drop.json')):  # copied last, once the run is done
            continue
        results.setdefault((run.setting.key, run.epochs or plan.epochs), []).append(
            read_run(run_dir, run.setting.key, run.seed))
    return results


def has_study(results, plan):
    """Whether any run longer than the plan's is finished."""
    return any(epochs != plan.epochs for _, epochs in results)


def expected_runs(plan):
    """{(setting key, epochs): number of seeds} the study trains, the plan's own length included."""
    counts = {}
    for run in length_runs(plan, study_lengths(plan)):
        key = (run.setting.key, run.epochs or plan.epochs)
        counts[key] = counts.get(key, 0) + 1
    return counts


def seed_spread(runs):
    """max - min of the runs' top-1 at rho = 1 (0 for one run)."""
    values = [final_top1(r) for r in runs]
    return float(max(values) - min(values)) if values else 0.0


def top1_cell(runs, rho):
    values = [v for v in (final_top1(r) if rho == 1.0 else sweep_top1(r, rho) for r in runs) if v is not None]
    if not values:
        return '—'
    spread = f' ({min(values):.2f} to {max(values):.2f})' if len(values) > 1 else ''
    return f'{np.mean(values):.2f}{spread}'


def length_gap(results, key, epochs):
    """((mean gap, median gap), spread) of `key` to the baseline at ρ = 1 after `epochs`, or None: the spread is
    the larger of the two schedules' max - min over seeds."""
    runs, base = results.get((key, epochs)), results.get(('baseline', epochs))
    if not runs or not base:
        return None
    both = gap([final_top1(r) for r in runs], [final_top1(r) for r in base])
    return both, max(seed_spread(runs), seed_spread(base))


def length_table(results, plan):
    """Markdown: per schedule and length, top-1 at ρ 1, 0.4, 0.2 (mean, min to max over seeds), the gap to the
    baseline at ρ = 1 with its seed spread, and the minutes of training per run."""
    from reproduction.claims import md_table

    rows = []
    for key in ('baseline',) + LENGTH_SCHEDULES:
        for epochs in study_lengths(plan):
            runs = results.get((key, epochs))
            if not runs:
                continue
            found = length_gap(results, key, epochs) if key != 'baseline' else None
            gap_cell = '—' if found is None else f'{found[0][0]:+.2f} / {found[0][1]:+.2f} (spread {found[1]:.2f})'
            minutes = [training_seconds(r) / 60 for r in runs]
            rows.append([SETTING_BY_KEY[key].label, epochs, ', '.join(str(r.seed) for r in runs),
                         *(top1_cell(runs, rho) for rho in LENGTH_RHOS), gap_cell,
                         ', '.join(f'{m:.1f}' for m in minutes)])
    return md_table(['schedule', 'epochs', 'seeds', 'top-1 at ρ = 1 (%)', 'at ρ = 0.4', 'at ρ = 0.2',
                     'vs baseline at ρ = 1 (mean / median; spread)', 'training minutes per run'], rows)


def criterion(plan):
    short, longest = study_lengths(plan)[0], study_lengths(plan)[-1]
    return (f'per schedule ({", ".join(SETTING_BY_KEY[k].label for k in LENGTH_SCHEDULES)}), after {longest} '
            f'epochs of fine-tuning: its top-1 at ρ = 1 is at most {MAX_TOP1_DROP:.1f} point below the baseline\'s '
            f'on the mean and on the median over seeds (claim 2\'s criterion), or its gap to the baseline shrank '
            f'from {short} to {longest} epochs by more than the seed spread (the largest max − min over seeds of '
            f'either schedule at either length), on the mean and on the median. Holds if both schedules meet it, '
            f'partly if one does. The same seeds at every length: '
            + ', '.join(f'{SETTING_BY_KEY[k].label} {n} seed(s)' for k, n in
                        sorted({k: n for (k, e), n in expected_runs(plan).items() if e == longest}.items()))
            + '. Stated before the runs were trained.')


def verdict(results, plan):
    """(status, sentence) of claim 2 at the study's longest length; 'not measured' until all its runs are done."""
    from reproduction.claims import status_from

    short, longest = study_lengths(plan)[0], study_lengths(plan)[-1]
    expected = expected_runs(plan)
    missing = [f'{SETTING_BY_KEY[k].label} at {e} epochs' for (k, e), n in expected.items()
               if len(results.get((k, e), [])) < n and e in (short, longest)]
    if missing:
        return 'not measured', (f'the study is not finished: {len(missing)} schedule-length(s) lack runs '
                                f'({", ".join(missing)})')
    passed, parts = [], []
    for key in LENGTH_SCHEDULES:
        (end, end_spread), (start, start_spread) = length_gap(results, key, longest), length_gap(results, key, short)
        spread = max(end_spread, start_spread)
        within = min(end) >= -MAX_TOP1_DROP
        shrank = min(end[0] - start[0], end[1] - start[1]) > spread
        passed.append(within or shrank)
        parts.append(f'{SETTING_BY_KEY[key].label} is {end[0]:+.2f} / {end[1]:+.2f} points from the baseline after '
                     f'{longest} epochs, against {start[0]:+.2f} / {start[1]:+.2f} after {short} (mean / median; '
                     f'seed spread {spread:.2f}): '
                     + ('within 1 point' if within else 'more than 1 point below')
                     + (', and the gap shrank by more than the spread' if shrank else
                        ', and the gap did not shrink by more than the spread'))
    return status_from(passed), '; '.join(parts)


def study_seconds(timings, plan):
    """Seconds the study's own stages took (its longer runs and its pre-training), from timings.json."""
    from reproduction.plan import LENGTH_PRETRAIN_RUN

    names = {r.name for r in length_runs(plan)} | {LENGTH_PRETRAIN_RUN}
    return sum(sum(stages.values()) for name, stages in timings.items() if name in names)


def length_figure_data(results, plan):
    """[(label, epochs, [top-1 at each of LENGTH_RHOS per seed])] for viz.length_study."""
    data = []
    for key in ('baseline',) + LENGTH_SCHEDULES:
        for epochs in study_lengths(plan):
            for r in results.get((key, epochs), []):
                values = [final_top1(r) if rho == 1.0 else sweep_top1(r, rho) for rho in LENGTH_RHOS]
                data.append((SETTING_BY_KEY[key].label, epochs, values))
    return data
