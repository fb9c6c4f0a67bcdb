"""<out>/README.md: the setup, the verdicts, the figures, each claim with its tables, the sweep table, and the
length study where it ran. Written from <out>/runs and <out>/timings.json only, so that rewriting it elsewhere
gives the same file."""
import os

from reproduction import length_study
from reproduction.claims import Claim, all_claims, md_table, pretraining_table, sweep_table
from reproduction.plan import LENGTH_PRETRAIN_RUN, PRETRAIN_RUN, length_runs, plan_runs
from reproduction.provenance import date_range, read_provenance, summarise
from reproduction.results import load_pretraining, load_results, model_scale, num_val_images
from reproduction.stages import format_seconds, make_figures, read_timings

TITLES = {'digits': 'the digits demo', 'fashion_mnist': 'Fashion-MNIST, fine-tuned after SimMIM pre-training'}


def setup_description(results, plan, pretraining=None):
    """The setup paragraph; `pretraining`: load_pretraining()'s {'config', 'steps', 'final_loss'}."""
    run, scale = results['baseline'][0], model_scale(results)
    vit, data, train = run.config['MODEL']['VIT'], run.config['DATA'], run.config['TRAIN']
    steps = scale['steps'] // train['EPOCHS']
    model = (f"{vit['PATCH_SIZE']} px patches ({scale['tokens']} tokens with CLS), a ViT of width {vit['EMBED_DIM']}, "
             f"depth {vit['DEPTH']} and {vit['NUM_HEADS']} heads with absolute and relative position embeddings")
    recipe = (f"{train['EPOCHS']} epochs of {steps} steps of {data['BATCH_SIZE']} images (AdamW, cosine LR, "
              f"{train['WARMUP_EPOCHS']} warm-up epoch(s)), {len(plan.seeds)} seed(s) per schedule "
              f'({", ".join(map(str, plan.seeds))})')
    paper = ('The paper fine-tunes a pre-trained ViT-B on ImageNet at 224 px (197 tokens) for 100 epochs on 4 '
             'A100s.')
    if plan.dataset.key == 'digits':
        return (f"scikit-learn's 8 × 8 handwritten digits upscaled to {data['IMG_SIZE']} px ({num_val_images(results)} "
                f'validation images, an 80/20 split), {model}, trained from scratch for {recipe}. {paper}')
    subset = data.get('TRAIN_SUBSET') or 60000
    size = 'at their own 28 px' if data['IMG_SIZE'] == 28 else f"resized to {data['IMG_SIZE']} px"
    text = f"Fashion-MNIST's 28 × 28 grey images {size}, {model}. "
    if pretraining:
        pre = pretraining['config']
        pre_subset = pre['DATA'].get('TRAIN_SUBSET') or 60000
        text += (f"Pre-trained once with SimMIM (main_simmim.py) on {pre_subset:,} training images for "
                 f"{pre['TRAIN']['EPOCHS']} epoch(s), {pretraining['steps']:,} steps of {pre['DATA']['BATCH_SIZE']} "
                 f"(masking {pre['DATA']['MASK_RATIO']:.0%} of blocks of {pre['DATA']['MASK_PATCH_SIZE']} px; final "
                 f"reconstruction loss {pretraining['final_loss']:.3f}), then ")
    text += (f"fine-tuned on {subset:,} training images ({subset // 10:,} per class; layer decay "
             f"{train['LAYER_DECAY']}, drop path {run.config['MODEL']['DROP_PATH_RATE']}) for {recipe}, and validated "
             f'on all {num_val_images(results):,} test images. One baseline (the first seed) is fine-tuned the same '
             f'way from a random initialisation, to show what the pre-training gives. The paper pre-trains ViT-B '
             f'with SimMIM for 800 epochs on ImageNet, then fine-tunes it at 224 px (197 tokens) for 100 epochs on 4 '
             f'A100s.')
    return text


def render_readme(claims, meta, figures=(), sweep='', pretraining='', length=None):
    """results/README.md from the claims (with their tables and verdicts) and `meta`
    {'command', 'commit', 'machine', 'wall_time', 'setup', 'date', 'title'}; `pretraining`: its section's
    markdown, if the fine-tunings started from one; `length`: the length study's Claim (number 2), shown after
    claim 2, its verdict in the table as claim 2 at the longest length."""
    lines = [f"# PSS at laptop scale: the paper's claims on {meta.get('title', TITLES['digits'])}", '',
             'Written by `reproduce.py`; every number below is computed from the files in `runs/`. '
             'Do not edit by hand: rerun the command.', '',
             f"- command: `{meta['command']}`", f"- commit: {meta['commit']}", f"- machine: {meta['machine']}",
             f"- wall time: {meta['wall_time']}", f"- date: {meta['date']}", '']
    verdicts = [[c.number, c.title, f'**{c.status}**: {c.sentence}'] for c in claims]
    if length is not None:
        verdicts.insert(2, [length.number, length.title, f'**{length.status}**: {length.sentence}'])
    lines += [f"Setup: {meta['setup']}", '', '## Verdicts', '', md_table(['#', 'claim', 'verdict here'], verdicts),
              '', 'Each verdict follows from the numbers by the criterion stated under its claim; the experiment was '
              'not tuned to make any claim pass.', '']
    if pretraining:
        lines += ['## What the pre-training gives', '', pretraining, '']
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
        if c.number == 2 and length is not None:
            lines += [f'### {length.title}', '', length.paper, '', f'Criterion: {length.criterion}', '']
            for table in length.tables:
                lines += [table, '']
            lines += [f'**{length.status.capitalize()}**: {length.sentence}.', '']
    if sweep:
        lines += ['## Top-1 (%) of every schedule against ρ at inference', '',
                  'Mean ± standard deviation over seeds; the paper\'s ImageNet value in brackets.', '', sweep, '']
    return '\n'.join(lines)


def length_claim(out, plan, timings):
    """Claim 2 at the length study's longest fine-tuning, or None when no run of the study is finished."""
    results = length_study.load_length_results(out, plan)
    if not length_study.has_study(results, plan):
        return None
    longest = length_study.study_lengths(plan)[-1]
    status, sentence = length_study.verdict(results, plan)
    pretraining = load_pretraining(out, LENGTH_PRETRAIN_RUN)
    loss = (f"; its final reconstruction loss is {pretraining['final_loss']:.3f} against "
            f"{load_pretraining(out)['final_loss']:.3f} for the pre-training of the {plan.epochs}-epoch runs"
            if pretraining and load_pretraining(out) else '')
    about = (f'The baseline, Cyclic(0.2, 1.0) and Linear(0.2, 1.0) fine-tuned again from the same SimMIM '
             f'pre-training for {" and ".join(map(str, length_study.study_lengths(plan)[1:]))} epochs, each with '
             f'its own cosine schedule over its length (Cyclic\'s triangle stays one per epoch); the {plan.epochs}-'
             f'epoch rows are the runs above, of the same seeds. The longer runs start from '
             f'`runs/{LENGTH_PRETRAIN_RUN}/model.safetensors`, the same pre-training command run again for them'
             f'{loss} (runs on another CPU type drift in the last bits). The study\'s stages took '
             f'{format_seconds(length_study.study_seconds(timings, plan))} (`python reproduce.py --study length`; '
             f'a stage killed by the end of a session counts from its resume, while the table\'s minutes, summed '
             f'over every step\'s time, are whole). '
             f'Top-1 is the mean with the min to max over seeds in brackets; the figure '
             f'`figures/fine_tuning_length.png` draws it.')
    return Claim(2, f'Accuracy at ρ = 1 after {longest} epochs of fine-tuning (the length study)', about,
                 length_study.criterion(plan), [length_study.length_table(results, plan)], status, sentence)


def run_provenance(out, names):
    """[{'commit', 'machine', 'date'} or {}] of the runs named, from <out>/runs/<name>/provenance.json."""
    return [read_provenance(os.path.join(out, 'runs', name)) or {} for name in names]


def canonical_command(plan, quick=False):
    """The command that makes this plan's results (the study adds --study length)."""
    from reproduction.plan import DEFAULT_DATASET, FULL_SEEDS, QUICK_EPOCHS, QUICK_SEEDS

    words = ['python reproduce.py'] + (['--quick'] if quick else [])
    if plan.dataset.key != DEFAULT_DATASET:
        words += ['--dataset', plan.dataset.key]
    if plan.seeds != (QUICK_SEEDS if quick else FULL_SEEDS):
        words += ['--seeds', *map(str, plan.seeds)]
    if plan.epochs != (QUICK_EPOCHS if quick else plan.dataset.epochs):
        words += ['--epochs', str(plan.epochs)]
    return ' '.join(words)


def write_report(out, plan, command):
    """Write <out>/README.md and <out>/figures from <out>/runs and <out>/timings.json; returns the claims (the
    length study's last, where it ran). The machine, commit and date are the runs' own (provenance.json)."""
    results = load_results(out, plan)
    pretraining = load_pretraining(out) if plan.pretrained else None
    claims = all_claims(results, plan.dataset)
    timings = read_timings(out)
    length = length_claim(out, plan, timings) if plan.pretrained else None
    figures = make_figures(results, os.path.join(out, 'figures'))
    names = [run.name for run in plan_runs(plan)] + ([PRETRAIN_RUN] if plan.pretrained else [])
    if length is not None:
        figures.append(make_length_figure(out, plan))
        names += [LENGTH_PRETRAIN_RUN] + [run.name for run in length_runs(plan)
                                          if os.path.exists(os.path.join(out, 'runs', run.name))]
        command += f'`, then `{command} --study length'
    records = run_provenance(out, names)
    total = sum(seconds for stages in timings.values() for seconds in stages.values())
    train = sum(stages.get('train', 0.0) for stages in timings.values())
    pretrain = sum(timings.get(name, {}).get('pretrain', 0.0) for name in (PRETRAIN_RUN, LENGTH_PRETRAIN_RUN))
    pre = f'{format_seconds(pretrain)} pre-training, ' if pretrain else ''
    word = 'fine-tuning' if plan.pretrained else 'training'
    meta = {'command': command, 'title': TITLES[plan.dataset.key],
            'commit': summarise(r.get('commit') for r in records) + ' (the runs\')',
            'machine': summarise(r.get('machine') for r in records),
            'date': date_range(r.get('date') for r in records) + ' (the runs\' training)',
            'wall_time': (f'{format_seconds(total)} in the stages ({pre}{format_seconds(train)} {word}, the rest '
                          f'sweeps and plots; summed over invocations if it was resumed)'),
            'setup': setup_description(results, plan, pretraining)}
    section = pretraining_table(results, pretraining['seconds'] if pretraining else None) if plan.pretrained else ''
    text = render_readme(claims, meta, figures, sweep_table(results), section, length)
    with open(os.path.join(out, 'README.md'), 'w') as f:
        f.write(text)
    return claims + ([length] if length is not None else [])


def make_length_figure(out, plan):
    """figures/fine_tuning_length.png from the study's runs and the plan's runs of the same seeds."""
    from reproduction.plan import SETTING_BY_KEY, study_lengths
    from viz.common import read_sweep, read_val_log, save_figure
    from viz.fine_tuning_length import plot_fine_tuning_length

    runs = []
    for run in length_runs(plan, study_lengths(plan)):
        run_dir = os.path.join(out, 'runs', run.name)
        if os.path.exists(os.path.join(run_dir, 'sweep_drop.json')):
            runs.append((SETTING_BY_KEY[run.setting.key].label, run.epochs or plan.epochs,
                         read_val_log(os.path.join(run_dir, 'val_log.json')),
                         read_sweep(os.path.join(run_dir, 'sweep_drop.json'))))
    save_figure(plot_fine_tuning_length(runs), os.path.join(out, 'figures', 'fine_tuning_length.png'))
    return ('fine_tuning_length.png', 'The length study: top-1 of the final model against fine-tuning length at '
            'ρ = 1, 0.4 and 0.2 at inference; the line joins the means over seeds, the dots are the seeds.')
