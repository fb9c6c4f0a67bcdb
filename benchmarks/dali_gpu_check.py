"""The DALI part of the GPU check (issue 20): is the input pipeline still the bound of a PSS step?

    python benchmarks/dali_gpu_check.py OUT_DIR [--work DIR]     # on the CUDA host, ~3 minutes on an H200
    TINY=1 python benchmarks/dali_gpu_check.py OUT_DIR           # CPU dry run: tiny model, few images

benchmarks/gpu_check.sh runs it as its part data_end_to_end, with --feeds synthetic torch where
nvidia.dali is not installed (the lent GPU host reaches no package index).

On a synthetic ImageFolder of 500 x 375 JPEGs (written to --work, by default a temporary folder that
is removed afterwards), with the config's training transform (default: the paper's ViT-B config,
RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25, Mixup/CutMix on the device):

1. loader: the DALI loader's images/s (data.dali.DaliLoader, decoding with device='mixed') with
   --threads CPU threads (default 2, 4, 8): one pass to build and warm it, then one timed pass.
   Only when --feeds includes dali.
2. end to end: the training step as main_finetune.py runs it (the batch from the loader, to the
   device, Mixup, fast_step.TrainStep in bf16, with CUDA graphs on CUDA, one host read per step) at
   every rho, fed by synthetic device tensors, by the default loader with --torch-workers workers
   (16) and by DALI with --e2e-threads threads (4), those of --feeds; --warmup then --steps steps per rho, in one
   epoch of each loader (so worker start-up happens once, before the first warm-up step).

Writes OUT_DIR/dali_gpu_check.json: images/s per thread count, per rho and feed the step's
images/s and its ratio to the synthetic step, the cyclic schedule's predicted saving over its rho
distribution with each feed (benchmarks/train_step.predict_training_time), and the issue's targets
(DALI within 1.10x of the synthetic step at every rho; at least 8,000 images/s with at most 4
threads). Prints the same as markdown. Exit status 0 when every part ran (targets are reported,
not enforced), 1 when one failed.
"""
import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.train_step import RHOS, make_optimizer, predict_training_time  # noqa: E402
from config import get_config  # noqa: E402

CFG = 'configs/vit-b/magnitude_cyclic_80_0.yaml'
FEEDS = ('synthetic', 'torch', 'dali')
CYCLIC = 'configs/vit-b/magnitude_cyclic_80_0.yaml'  # the schedule whose saving is predicted
TINY_OPTS = ['DATA.IMG_SIZE', '32', 'MODEL.VIT.PATCH_SIZE', '8', 'MODEL.VIT.EMBED_DIM', '32', 'MODEL.VIT.DEPTH', '2',
             'MODEL.VIT.NUM_HEADS', '2']


def parse_args(argv=None):
    tiny = os.environ.get('TINY') == '1'
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('out', help='folder for dali_gpu_check.json')
    p.add_argument('--work', default=None, help='folder for the images (default: a temporary one, removed)')
    p.add_argument('--cfg', default=CFG, help='training config (its transform, model and batch)')
    p.add_argument('--device', default='cpu' if tiny else 'cuda')
    p.add_argument('--batch-size', type=int, default=8 if tiny else 128)
    p.add_argument('--threads', type=int, nargs='+', default=[1, 2] if tiny else [2, 4, 8],
                   help='DALI CPU threads for the loader part')
    p.add_argument('--e2e-threads', type=int, default=2 if tiny else 4, help='DALI CPU threads end to end')
    p.add_argument('--torch-workers', type=int, default=2 if tiny else 16, help='default loader workers end to end')
    p.add_argument('--warmup', type=int, default=2 if tiny else 3, help='untimed steps per rho (CUDA graphs: 2+)')
    p.add_argument('--steps', type=int, default=2 if tiny else 15, help='timed steps per rho')
    p.add_argument('--rhos', type=float, nargs='+', default=list(RHOS))
    p.add_argument('--classes', type=int, default=10, help='class folders of the synthetic ImageFolder')
    p.add_argument('--feeds', nargs='+', choices=FEEDS, default=list(FEEDS),
                   help='what feeds the end-to-end step; without dali, the loader part is skipped too '
                        '(a host without DALI still measures the default loader against synthetic tensors)')
    args = p.parse_args(argv)
    args.tiny = tiny
    return args


# --- images -----------------------------------------------------------------------------------------
def _write_images(task):
    """One process's share: (root, first index, count, classes)."""
    import numpy as np
    from PIL import Image
    root, first, count, classes = task
    for i in range(first, first + count):
        rng = np.random.default_rng(i)
        coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        image = np.asarray(coarse.resize((500, 375), Image.BICUBIC), dtype=np.int16)
        image = np.clip(image + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)
        folder = Path(root) / 'train' / f'class_{i % classes:02d}'
        Image.fromarray(image).save(folder / f'{i:06d}.jpg', quality=90)


def write_dataset(root, num_train, classes):
    """An ImageFolder of `num_train` smooth-noise 500 x 375 JPEGs (quality 90), one val image per class."""
    for split in ('train', 'val'):
        for c in range(classes):
            (Path(root) / split / f'class_{c:02d}').mkdir(parents=True, exist_ok=True)
    processes = os.cpu_count() or 1
    share = -(-num_train // processes)
    tasks = [(root, first, min(share, num_train - first), classes) for first in range(0, num_train, share)]
    with multiprocessing.get_context('fork').Pool(processes) as pool:
        pool.map(_write_images, tasks)
    for c in range(classes):  # validation is not timed here; the builders want the split
        shutil.copy(Path(root) / 'train' / f'class_{c:02d}' / f'{c:06d}.jpg', Path(root) / 'val' / f'class_{c:02d}')


# --- loaders ----------------------------------------------------------------------------------------
def make_config(args, root, loader, workers):
    opts = ['DATA.DATA_PATH', str(root), 'DATA.DATASET', 'imagenet', 'DATA.LOADER', loader,
            'DATA.NUM_WORKERS', str(workers), 'MODEL.NUM_CLASSES', str(args.classes)]
    return get_config(argparse.Namespace(cfg=args.cfg, opts=(TINY_OPTS if args.tiny else []) + opts,
                                         batch_size=args.batch_size))


def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def loader_part(args, root, device):
    """DALI images/s per thread count: a warm-up pass (the pipeline is built), then a timed pass."""
    from data import build_loader, set_train_epoch
    from data.dali import DaliLoader
    dataset, _, loader, _, _ = build_loader(make_config(args, root, 'dali', args.threads[0]))
    rows = []
    for threads in args.threads:
        config = make_config(args, root, 'dali', threads)
        dali = DaliLoader(dataset, loader.sampler, config, training=True, device=device, num_threads=threads)
        seconds = []
        for epoch in range(2):
            set_train_epoch(dali, epoch)
            synchronize(device)
            start = time.perf_counter()
            count = 0
            for images, _ in dali:
                count += len(images)
            synchronize(device)
            seconds.append(time.perf_counter() - start)
        rows.append({'threads': threads, 'images_per_s': count / seconds[1], 'first_pass_s': seconds[0]})
        print(f'  DALI, {threads} threads: {count / seconds[1]:.0f} images/s '
              f'(first pass, with the build: {seconds[0]:.1f} s)', flush=True)
        del dali
    return rows


def _feeds(args, root, device):
    """{name: a function giving an iterator of (samples, targets) over one long epoch}."""
    from data import build_loader, set_train_epoch
    from data.dali import DaliLoader

    def synthetic():
        config = make_config(args, root, 'torch', 0)
        size = config.DATA.IMG_SIZE
        images = torch.randn(args.batch_size, 3, size, size, device=device)
        targets = torch.randint(0, args.classes, (args.batch_size,), device=device)
        while True:
            yield images, targets

    def default():
        _, _, loader, _, _ = build_loader(make_config(args, root, 'torch', args.torch_workers))
        set_train_epoch(loader, 0)
        return iter(loader)

    def dali():
        config = make_config(args, root, 'dali', args.e2e_threads)
        dataset, _, loader, _, _ = build_loader(make_config(args, root, 'torch', 0))
        feed = DaliLoader(dataset, loader.sampler, config, training=True, device=device, num_threads=args.e2e_threads)
        set_train_epoch(feed, 0)
        return iter(feed)
    feeds = {'synthetic': synthetic, 'torch': default, 'dali': dali}
    return {name: feeds[name] for name in FEEDS if name in args.feeds}


def end_to_end_part(args, root, device, errors):
    """Seconds per training step at every rho with each feed (median of the timed steps); a feed that
    fails (DALI not installed, say) is listed in `errors` and the others still run."""
    from timm.loss import SoftTargetCrossEntropy

    from data.build import build_mixup
    config = make_config(args, root, 'torch', 0)
    amp = torch.bfloat16 if device.type == 'cuda' else None
    mixup_fn = build_mixup(config, args.classes)
    criterion = SoftTargetCrossEntropy() if mixup_fn is not None else torch.nn.CrossEntropyLoss()
    results = {}
    for name, make_feed in _feeds(args, root, device).items():
        try:
            results[name] = _time_steps(args, config, device, make_feed, mixup_fn, criterion, amp, name)
        except Exception as e:  # reported in the summary
            traceback.print_exc()
            errors.append(f'end to end, {name}: {type(e).__name__}: {e}')
    return results


def _time_steps(args, config, device, make_feed, mixup_fn, criterion, amp, name):
    """{rho: median seconds per step} fed by `make_feed()`, the steps as main_finetune.py runs them."""
    from fast_step import TrainStep
    from models import build_model
    torch.manual_seed(config.SEED)
    model = build_model(config).to(device).train()
    optimizer = make_optimizer(model, device)
    step = TrainStep(model, criterion, optimizer, torch.amp.GradScaler(device.type, enabled=False),
                     config.TRAIN.CLIP_GRAD, amp, cuda_graphs=device.type == 'cuda')
    feed = make_feed()
    per_rho = {}
    for rho in args.rhos:
        model.set_patch_drop_ratio(round(1.0 - rho, 6))
        times = []
        for i in range(args.warmup + args.steps):
            start = time.perf_counter()
            samples, targets = next(feed)
            samples = samples.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            if mixup_fn is not None:
                samples, targets = mixup_fn(samples, targets)
            step(samples, targets, key=model.num_kept_tokens()).tolist()  # the loop's one read per step
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
        per_rho[rho] = statistics.median(times)
        print(f'  {name}: rho {rho:.1f} {1e3 * per_rho[rho]:.1f} ms/step '
              f'({args.batch_size / per_rho[rho]:.0f} images/s)', flush=True)
    del feed, step, optimizer, model
    return per_rho


def summarise(args, loader_rows, step_s):
    rows = []
    for rho in args.rhos:
        row = {'rho': rho}
        for name, per_rho in step_s.items():
            row[f'{name}_ms'] = 1e3 * per_rho[rho]
            row[f'{name}_images_per_s'] = args.batch_size / per_rho[rho]
        for name in ('torch', 'dali'):
            if name in step_s and 'synthetic' in step_s:
                row[f'{name}_over_synthetic'] = step_s[name][rho] / step_s['synthetic'][rho]
        rows.append(row)
    iters = 2502  # ImageNet at a global batch of 512
    savings = {name: predict_training_time([str(REPO / CYCLIC)], dict(per_rho), iters)[0]['saving']
               for name, per_rho in step_s.items() if set(RHOS) <= set(per_rho)}
    targets = {}
    if 'dali' in step_s and 'synthetic' in step_s:
        targets['dali_within_1.10x_of_synthetic_at_every_rho'] = all(r['dali_over_synthetic'] <= 1.10 for r in rows)
    few = [r['images_per_s'] for r in loader_rows if r['threads'] <= 4]
    if few:
        targets['dali_8000_images_per_s_with_at_most_4_threads'] = max(few) >= 8000
    return {'end_to_end': rows, 'cyclic_saving': savings, 'targets': targets}


def markdown(result):
    meta = result['meta']
    lines = [f"## DALI GPU check: {meta['device_name']}, batch {meta['batch_size']}", '', f"`{meta['command']}`"]
    if result.get('loader'):
        lines += ['', '| DALI threads | images/s |', '|---|---|']
        lines += [f"| {r['threads']} | {r['images_per_s']:.0f} |" for r in result['loader']]
    if result.get('end_to_end'):
        first = result['end_to_end'][0]
        feeds = [n for n in FEEDS if f'{n}_ms' in first]
        ratios = [n for n in ('torch', 'dali') if f'{n}_over_synthetic' in first]
        lines += ['', '| rho | ' + ' | '.join([f'{n} images/s' for n in feeds] + [f'{n} / synthetic' for n in ratios])
                  + ' |', '|---|' + '---|' * (len(feeds) + len(ratios))]
        for r in result['end_to_end']:
            lines.append(f"| {r['rho']:.1f} | " + ' | '.join(
                [f"{r[f'{n}_images_per_s']:.0f}" for n in feeds] + [f"{r[f'{n}_over_synthetic']:.2f}" for n in ratios])
                + ' |')
        savings = result.get('cyclic_saving') or {}
        lines += ['', 'Predicted saving of the cyclic schedule (step time over its rho distribution): ' + (', '.join(
            f'{name} {100 * saving:.1f}%' for name, saving in savings.items()) or f'needs every rho of {RHOS}') + '.']
    if result.get('targets'):
        lines += ['', 'Targets: ' + ', '.join(f'{k}: {v}' for k, v in result['targets'].items()) + '.']
    if result.get('errors'):
        lines += ['', 'Errors: ' + '; '.join(result['errors'])]
    return '\n'.join(lines) + '\n'


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == 'cuda':
        torch.cuda.set_device(device)
        device = torch.device('cuda', torch.cuda.current_device())
    if device.type == 'cpu':  # the dry run: beside loader workers and DALI threads, two OpenMP threads
        torch.set_num_threads(1)  # spinning on 2 busy cores made a tiny step take seconds
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU ({os.cpu_count()} CPUs)'
    result = {'meta': {'command': 'python ' + ' '.join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:]),
                       'tiny': args.tiny, 'device_name': name, 'batch_size': args.batch_size, 'cfg': args.cfg,
                       'cpus': os.cpu_count(), 'date': time.strftime('%Y-%m-%dT%H:%M:%S%z')}, 'errors': []}
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix='pss_dali_check_'))
    try:
        steps_per_feed = len(args.rhos) * (args.warmup + args.steps) + 2  # one epoch of each loader: all rhos
        num_train = args.batch_size * steps_per_feed
        start = time.perf_counter()
        write_dataset(work, num_train, args.classes)
        print(f'{num_train} JPEGs (500 x 375) written to {work} in {time.perf_counter() - start:.1f} s', flush=True)
        parts = [('loader', lambda: loader_part(args, work, device))] if 'dali' in args.feeds else []
        parts.append(('step_s', lambda: end_to_end_part(args, work, device, result['errors'])))
        for part, run in parts:
            try:
                result[part] = run()
            except Exception as e:  # each part reports its own failure; the others still run
                traceback.print_exc()
                result['errors'].append(f'{part}: {type(e).__name__}: {e}')
        result.update(summarise(args, result.get('loader', []), result.get('step_s', {})))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    result['step_s'] = {name: {str(rho): seconds for rho, seconds in per_rho.items()}
                        for name, per_rho in result.get('step_s', {}).items()}
    (out / 'dali_gpu_check.json').write_text(json.dumps(result, indent=1) + '\n')
    text = markdown(result)
    (out / 'dali_gpu_check.md').write_text(text)
    print(text, flush=True)
    return 1 if result['errors'] else 0


if __name__ == '__main__':
    sys.exit(main())
