"""<out>/README.md: the setup, the verdicts, the figures, each claim with its tables, the sweep table."""
import datetime
import os
import platform
import subprocess

from reproduction.claims import all_claims, md_table, pretraining_table, sweep_table
from reproduction.plan import PRETRAIN_RUN, ROOT
from reproduction.results import load_pretraining, load_results, model_scale, num_val_images
from reproduction.stages import format_seconds, make_figures, read_timings

TITLES = {'digits': 'the digits demo', 'fashion_mnist': 'Fashion-MNIST, fine-tuned after SimMIM pre-training'}


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


def render_readme(claims, meta, figures=(), sweep='', pretraining=''):
    """results/README.md from the claims (with their tables and verdicts) and `meta`
    {'command', 'commit', 'machine', 'wall_time', 'setup', 'date', 'title'}; `pretraining`: its section's
    markdown, if the fine-tunings started from one."""
    lines = [f"# PSS at laptop scale: the paper's claims on {meta.get('title', TITLES['digits'])}", '',
             'Written by `reproduce.py`; every number below is computed from the files in `runs/`. '
             'Do not edit by hand: rerun the command.', '',
             f"- command: `{meta['command']}`", f"- commit: {meta['commit']}", f"- machine: {meta['machine']}",
             f"- wall time: {meta['wall_time']}", f"- date: {meta['date']}", '',
             f"Setup: {meta['setup']}", '', '## Verdicts', '',
             md_table(['#', 'claim', 'verdict here'],
                      [[c.number, c.title, f'**{c.status}**: {c.sentence}'] for c in claims]), '',
             'Each verdict follows from the numbers by the criterion stated under its claim; the experiment was not '
             'tuned to make any claim pass.', '']
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
    if sweep:
        lines += ['## Top-1 (%) of every schedule against ρ at inference', '',
                  'Mean ± standard deviation over seeds; the paper\'s ImageNet value in brackets.', '', sweep, '']
    return '\n'.join(lines)


def write_report(out, plan, command, invocation_seconds, ran_anything=True):
    results = load_results(out, plan)
    pretraining = load_pretraining(out) if plan.pretrained else None
    claims = all_claims(results, plan.dataset)
    figures = make_figures(results, os.path.join(out, 'figures'))
    timings = read_timings(out)
    total = sum(seconds for stages in timings.values() for seconds in stages.values())
    train = sum(stages.get('train', 0.0) for stages in timings.values())
    pretrain = timings.get(PRETRAIN_RUN, {}).get('pretrain')
    pre = f'{format_seconds(pretrain)} pre-training, ' if pretrain is not None else ''
    word = 'fine-tuning' if plan.pretrained else 'training'
    meta = {'command': command, 'commit': git_commit(), 'machine': machine_description(),
            'title': TITLES[plan.dataset.key],
            'wall_time': (f'{format_seconds(total)} in the stages ({pre}{format_seconds(train)} {word}, the '
                          f'rest sweeps and plots; summed over invocations if it was resumed); '
                          + (f'this invocation {format_seconds(invocation_seconds)}' if ran_anything else
                             'this invocation found every stage done and only rewrote the report')),
            'setup': setup_description(results, plan, pretraining), 'date': datetime.date.today().isoformat()}
    section = pretraining_table(results, pretraining['seconds'] if pretraining else None) if plan.pretrained else ''
    text = render_readme(claims, meta, figures, sweep_table(results), section)
    with open(os.path.join(out, 'README.md'), 'w') as f:
        f.write(text)
    return claims
