"""Reproduce the paper's five claims at laptop scale, and write the results with a README.

    python reproduce.py                          # Fashion-MNIST: pre-train, then 5 schedules x 3 seeds -> results/
    python reproduce.py --quick                  # the same pipeline, smaller everything -> results_quick/
    python reproduce.py --dataset digits         # the digits demo from scratch, 30 epochs -> results_digits/
    python reproduce.py --seeds 0 1 2 --epochs 4 --out results --work output/reproduce
    python reproduce.py --study length           # the same fine-tunings at 8 and 16 epochs -> results/

Fashion-MNIST (the default; `apt-get install dataset-fashion-mnist`) follows the paper's setting: one
SimMIM pre-training of the ViT on all 60,000 training images (main_simmim.py with
configs/simmim/fashion_mnist.yaml), then, from its checkpoint, the baseline (configs/fashion_mnist/
baseline.yaml), Fixed(0.6) (magnitude_fixed_40.yaml), Linear(0.2, 1.0) (magnitude_linear.yaml), Cyclic(0.2,
1.0) with magnitude selection (magnitude_cyclic.yaml) and Cyclic with random selection (random_cyclic.yaml),
fine-tuned on 24,000 training images and validated on all 10,000 test images; and one more baseline (first
seed) fine-tuned the same way from scratch, which measures what the pre-training gives. `--dataset digits`
trains the same five schedules from scratch on scikit-learn's digits (configs/demo/), with no pre-training.

Every script runs as a plain one-process subprocess (OMP_NUM_THREADS removed, so torch uses every core;
the runs go one at a time, since two runs on 2 cores only slow each other). On every final checkpoint it
runs sweep_drop.py, and on the first seed of each schedule image_patches.py and patch_distribution.py.

Wall time on 2 quiet CPU cores: see <out>/README.md (the committed results/ and results_digits/ state
theirs: 54 minutes for the digits); --quick takes about 5 to 10 minutes (1 seed, 2 epochs, 16 px images, a
2-block model; `--quick --seeds 0 1` also draws the spread over seeds). Progress (run k of n, elapsed,
ETA) is printed as it goes.

Outputs:
  <work>/<MODEL.NAME>/<run>/   everything the scripts write, checkpoints included (default work folder:
                          output/reproduce[_quick][_digits]; output/ is ignored by git); the pre-training
                          in <work>/simmim_fashion_mnist/pretrain/
  <work>/logs/<run>.<stage>.txt   each subprocess's console output
  <out>/runs/<run>/       the small files of each run: config.yaml, train_log.json, val_log.json,
                          sweep_drop.json, provenance.json (machine, commit, date of its training), and for the
                          first seed image_patches.json, patch_distribution.json; runs/simmim_pretrain/: the
                          pre-training's config.yaml and train_log.json
  <out>/figures/*.png     overview, sweep over rho (mean and min-max over seeds), training curves against
                          wall-clock time, time per iteration by rho, kept patches, patch distribution (viz/)
  <out>/timings.json      seconds each stage of each run took (kept across resumed invocations)
  <out>/README.md         a table per claim with the numbers measured here next to the paper's, and a
                          verdict per claim computed from them with the criterion stated; the pre-training's
                          effect
--study length fine-tunes the baseline and Cyclic (first 2 seeds) and Linear (first seed) again for 2 and 4 times
the epochs (8 and 16), from weights it keeps in <out>/runs/simmim_pretrain_length/model.safetensors (exported
from the pre-training, run first if needed), and adds claim 2 after 16 epochs to <out>/README.md.

The report is written from <out>/runs and <out>/timings.json only: rerun over finished runs, the command
trains nothing, says so, and rewrites the same README.md. To train everything again, pass new --out / --work.

Run names are <config>_seed<k>, e.g. magnitude_cyclic_seed1, and baseline_scratch_seed0; the study's
<config>_<epochs>ep_seed<k>, e.g. magnitude_cyclic_16ep_seed1. A run whose
outputs are complete (in <out>/runs, or else in <work>) is skipped, and the pre-training when its last
epoch is in its checkpoint, so a killed reproduce.py continues where it stopped when run again with the
same arguments; outputs made with other settings (epochs, image size) are an error rather than silently
mixed in.
"""
import argparse
import os
import sys
import time

from reproduction.plan import DATASETS, DEFAULT_DATASET, STUDIES, ReproduceError, length_runs, make_plan, plan_runs
from reproduction.report import canonical_command, write_report
from reproduction.stages import execute, format_seconds


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dataset', default=DEFAULT_DATASET, choices=sorted(DATASETS),
                        help='fashion_mnist: SimMIM pre-training, then fine-tuning (default); '
                             'digits: the demo, trained from scratch')
    parser.add_argument('--quick', action='store_true', help='a few minutes: 1 seed, 2 epochs, 16 px, tiny model')
    parser.add_argument('--seeds', type=int, nargs='+', help='seeds per schedule (default: 0 1 2; --quick: 0)')
    parser.add_argument('--epochs', type=int,
                        help='fine-tuning epochs (default: 4 on fashion_mnist, 30 on digits; --quick: 2)')
    parser.add_argument('--study', choices=STUDIES,
                        help='length: fine-tune the baseline, Cyclic and Linear again at 2 and 4 times the epochs, '
                             'from one pre-training kept in <out>/runs/simmim_pretrain_length (fashion_mnist only)')
    parser.add_argument('--out', help='results folder (default: results[_quick], results[_quick]_digits)')
    parser.add_argument('--work', help='training outputs with checkpoints (default: output/reproduce[_quick][_digits])')
    return parser


def default_folders(dataset, quick):
    """(results folder, work folder) of a dataset's full or --quick run."""
    suffix = ('_quick' if quick else '') + ('' if dataset == DEFAULT_DATASET else f'_{dataset}')
    return 'results' + suffix, os.path.join('output', 'reproduce' + suffix)


def without_folders(argv):
    """`argv` without --out / --work and their values."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ('--out', '--work'):
            skip = True
        elif not arg.startswith(('--out=', '--work=')):
            kept.append(arg)
    return kept


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = get_parser().parse_args(argv)
    start = time.time()
    try:
        plan = make_plan(args.quick, args.seeds, args.epochs, args.dataset)
        default_out, default_work = default_folders(args.dataset, args.quick)
        out, work = args.out or default_out, args.work or default_work
        first = 'a SimMIM pre-training, then ' if plan.pretrained else ''
        if args.study:
            runs = length_runs(plan)
            print(f'{args.dataset}, the length study: {len(runs)} runs at {sorted({r.epochs for r in runs})} epochs '
                  f'-> {out}; checkpoints in {work}', flush=True)
        else:
            print(f'{args.dataset}: {first}{len(plan_runs(plan))} runs (seeds {list(plan.seeds)}, {plan.epochs} '
                  f'epochs) -> {out}; checkpoints in {work}', flush=True)
        report = execute(plan, os.path.abspath(out), os.path.abspath(work), log=lambda s: print(s, flush=True),
                         study=args.study)
        if report['ran']:
            print(f"{len(report['ran'])} run(s) done, {len(report['skipped'])} skipped, in "
                  f"{format_seconds(report['seconds'])}; writing {out}/README.md and {out}/figures", flush=True)
        else:
            same = ' '.join(['python reproduce.py', *without_folders(argv)])
            print(f'nothing to train: all {len(report["skipped"])} runs are finished in {out}/runs; the report is '
                  f'rewritten from them: the same file unless the runs or the code changed. To train everything again, '
                  f'give new folders: {same} --out <new results> --work <new work>', flush=True)
        claims = write_report(out, plan, canonical_command(plan, args.quick))
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
