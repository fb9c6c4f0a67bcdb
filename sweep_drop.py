"""Dynamic inference: accuracy and throughput of one checkpoint at several drop ratios (rho = 1 - drop).

    python sweep_drop.py --cfg configs/vit-b/magnitude_cyclic_80_0.yaml --data-path <imagenet> \\
        --pretrained output/pss/simmim/vit-b/magnitude_cyclic_80_0/checkpoint.pth --output output
    torchrun --nproc_per_node 4 sweep_drop.py --cfg ... --pretrained ...      # the same, 4 processes
    python -m torch.distributed.launch --nproc_per_node 4 sweep_drop.py ...    # the same
    python sweep_drop.py ... --drop-ratios 0.0 0.4 0.8                        # other ratios

Flags are main_finetune.py's (--cfg, --opts, --batch-size, --data-path, --output, --tag,
--amp-opt-level, --trust-checkpoint); --pretrained (or --resume) names the checkpoint to evaluate,
which must fit the configured network exactly ({'model': state_dict} or a bare state dict, as
main_finetune.py writes them). `pss_vit` and baseline `vit` checkpoints alike; TRAIN.PATCH_DROP_FUNC
chooses the selection. Default drop ratios: 0.0, 0.1, ..., 0.8.

Writes <output>/<MODEL.NAME>/<TAG>/sweep_drop.json (rank 0; rewritten atomically after every ratio,
so a killed sweep leaves the ratios done), one JSON line per drop ratio, in increasing order. A file
there from an earlier sweep is merged by drop ratio: the ratios measured again are replaced, the
others kept (the log names both); one that is not such a file stops the sweep before it starts.
    drop_ratio        the fraction of tokens dropped (rho = 1 - drop_ratio)
    num_tokens        tokens kept, CLS included: round((1 - drop_ratio) * N), N at 0
    acc1, acc5, loss  top-1 / top-5 accuracy (%) and mean cross-entropy over the whole validation
                      set, exact for any number of processes (engine.evaluate)
    num_images        validation images
    time              seconds of the whole validation pass, data loading included (slowest process)
    throughput        num_images / time: end-to-end images/s, as the original measured it
    model_time        seconds spent in forward passes only, synchronised on GPU (slowest process)
    model_throughput  num_images / model_time: model-only images/s on the same batches
Before each ratio a few forward passes at that ratio warm the model up, so no ratio pays for the
first call. A table row is printed per ratio as it finishes.

With TRAIN.PATCH_DROP_FUNC random the kept patches are random draws, so the accuracies then depend
on the seed and the number of processes; magnitude selection is deterministic.

Also home of the pieces image_patches.py and patch_distribution.py share: the parser, the
checkpoint-and-data setup and the error handling.
"""
import argparse
import json
import os
import sys

import torch

from checkpoint import CheckpointError, load_model_weights
from config import ConfigError, get_config
from data import DataError, build_val_loader
from engine import evaluate
from logger import create_logger
from main_finetune import EXIT_BAD_INPUT, check_output_writable
from main_finetune import get_parser as get_finetune_parser
from models import build_model
from utils import LaunchError, all_gather_object, autocast_dtype, init_distributed_mode, synchronize

SWEEP_DROP_RATIOS = tuple(round(0.1 * i, 1) for i in range(9))  # 0.0, 0.1, ..., 0.8
WARMUP_STEPS = 2  # forward passes on one batch before each ratio is timed
OUTPUT_FILE = 'sweep_drop.json'
EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as a shell reports it


# --- shared by sweep_drop.py, image_patches.py and patch_distribution.py ------------------------
def get_parser(doc, drop_ratios):
    """main_finetune.py's parser (so the flags never drift) plus --drop-ratios."""
    parser = get_finetune_parser()
    parser.prog = os.path.basename(sys.argv[0]) or parser.prog
    parser.description = doc
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    # The flag is the same; what it names differs from training (there: weights to start from).
    parser._option_string_actions['--pretrained'].help = 'checkpoint to evaluate (or --resume)'
    parser.add_argument('--drop-ratios', type=float, nargs='+', default=list(drop_ratios), metavar='D',
                        help=f'drop ratios to evaluate, each in [0, 1) (default: {" ".join(map(str, drop_ratios))})')
    return parser


def checkpoint_path(config):
    """The checkpoint to evaluate: --pretrained, or --resume; checked for existence before the
    (possibly long) image verification."""
    paths = {p for p in (config.PRETRAINED, config.MODEL.RESUME) if p}
    if not paths:
        raise ConfigError('no checkpoint to evaluate: pass --pretrained <checkpoint.pth>')
    if len(paths) > 1:
        raise ConfigError(f"--pretrained '{config.PRETRAINED}' and --resume '{config.MODEL.RESUME}' name "
                          'two checkpoints; pass one checkpoint to evaluate')
    path = paths.pop()
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint '{path}' not found" if not os.path.exists(path)
                              else f"checkpoint '{path}' is not a file")
    return path


def check_output_folder(config):
    """ConfigError unless the output folder is writable or can be created: checked before the pass,
    which would otherwise be lost to the failed write at its end."""
    try:
        check_output_writable(config.OUTPUT)
    except OSError as e:
        raise ConfigError(str(e)) from None


def build_model_from_checkpoint(path, config, num_classes, device):
    """The configured network with the weights of checkpoint `path`, in eval mode on `device`."""
    model = build_model(config, num_classes=num_classes)
    load_model_weights(path, model, trusted=config.TRUST_CHECKPOINT)
    return model.to(device).eval()


def check_drop_ratios(model, drop_ratios):
    """ConfigError unless every drop ratio is in [0, 1) and keeps at least one patch besides CLS."""
    for drop_ratio in drop_ratios:
        if not 0.0 <= drop_ratio < 1.0:
            raise ConfigError(f'--drop-ratios: {drop_ratio} is outside [0, 1) (rho = 1 - drop ratio)')
        if model.num_kept_tokens(drop_ratio) < 2:  # CLS alone: the mean over kept patches is empty
            raise ConfigError(f'--drop-ratios: {drop_ratio} keeps no patch of the {model.num_tokens - 1} '
                              f'(round((1 - {drop_ratio}) * {model.num_tokens}) tokens = CLS only)')


def write_atomically(path, text):
    """Write `text` to `path` through a temporary file and a rename: readers never see half a file."""
    tmp = f'{path}.{os.getpid()}.tmp'
    try:
        with open(tmp, 'w') as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:  # Ctrl-C included: no temporary file left behind
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def run_script(main, parser, argv=None):
    """Parse, resolve the config, run main(config, args); bad input prints one line, status 2; Ctrl-C
    prints one line (what was kept, if main says), status 130."""
    args = parser.parse_args(argv)
    try:
        return main(get_config(args), args)
    except (ConfigError, DataError, CheckpointError, LaunchError) as e:
        print(f'error: {e}', file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as e:
        print(f'interrupted{": " if str(e) else ""}{e}', file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


# --- the sweep ----------------------------------------------------------------------------------
def read_earlier_sweep(path):
    """{drop ratio: its JSON line} of an earlier sweep_drop.json at `path` ({} if there is none).
    Raises ConfigError naming the line that is no sweep record, so a file that cannot be merged is
    never overwritten."""
    if not os.path.exists(path):
        return {}
    lines = {}
    try:
        with open(path) as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    record = None
                drop_ratio = record.get('drop_ratio') if isinstance(record, dict) else None
                if not isinstance(drop_ratio, (int, float)) or isinstance(drop_ratio, bool):
                    raise ConfigError(f"'{path}' line {number} is not a sweep record with a drop_ratio, so this "
                                      'sweep cannot merge its results into it: move the file away or repair it')
                lines[float(drop_ratio)] = line.rstrip('\n') + '\n'
    except OSError as e:
        raise ConfigError(f"cannot read the earlier sweep '{path}': {e.strerror or e}") from None
    return lines


@torch.no_grad()
def warm_up(model, images, amp_dtype, steps=WARMUP_STEPS):
    """A few forward passes, so that the timed pass pays for no first-call set-up (kernels, memory)."""
    autocast = torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
    with autocast:
        for _ in range(steps):
            model(images)
    synchronize(images.device)


def main(config, args):
    rank, world_size, _, device = init_distributed_mode()
    amp_dtype = autocast_dtype(config.AMP_OPT_LEVEL, device, config.AMP_DTYPE)
    logger = create_logger(None, rank, name=config.MODEL.NAME)

    path = checkpoint_path(config)
    check_output_folder(config)
    out_path = os.path.join(config.OUTPUT, OUTPUT_FILE)
    lines = read_earlier_sweep(out_path)  # merged by drop ratio: a ratio measured again replaces its line
    earlier = sorted(lines)
    dataset_val, loader_val = build_val_loader(config)
    model = build_model_from_checkpoint(path, config, len(dataset_val.classes), device)
    check_drop_ratios(model, args.drop_ratios)
    logger.info(f"sweeping '{path}' ({config.MODEL.TYPE}, {config.TRAIN.PATCH_DROP_FUNC} selection) over "
                f'{len(dataset_val)} validation images, {world_size} process(es), drop ratios {args.drop_ratios}')

    if rank == 0:
        os.makedirs(config.OUTPUT, exist_ok=True)
    # One batch of this process's share (the first iteration also starts any loader workers).
    warmup_batch = next(iter(loader_val), None)
    warmup_images = warmup_batch[0].to(device) if warmup_batch is not None else None

    logger.info(f'{"drop":>5} {"rho":>5} {"tokens":>6} {"acc1":>7} {"acc5":>7} {"loss":>7} '
                f'{"img/s":>9} {"model img/s":>11}')
    done = []
    try:
        for drop_ratio in args.drop_ratios:
            model.set_patch_drop_ratio(drop_ratio)
            torch.manual_seed(config.SEED + rank)  # only random selection draws; the same draws for any order
            if warmup_images is not None:
                warm_up(model, warmup_images, amp_dtype)
            stats = evaluate(model, loader_val, device, amp_dtype)
            # The pass is over when the slowest process is done.
            time_s = max(all_gather_object(stats['time']))
            model_time_s = max(all_gather_object(stats['model_time']))
            record = {'drop_ratio': drop_ratio, 'num_tokens': model.num_kept_tokens(drop_ratio),
                      'acc1': stats['acc1'], 'acc5': stats['acc5'], 'loss': stats['loss'],
                      'num_images': stats['num_images'], 'time': time_s,
                      'throughput': stats['num_images'] / time_s, 'model_time': model_time_s,
                      'model_throughput': stats['num_images'] / model_time_s}
            logger.info(f'{drop_ratio:5.2f} {1 - drop_ratio:5.2f} {record["num_tokens"]:6d} {record["acc1"]:7.3f} '
                        f'{record["acc5"]:7.3f} {record["loss"]:7.4f} {record["throughput"]:9.1f} '
                        f'{record["model_throughput"]:11.1f}')
            if rank == 0:
                lines[drop_ratio] = json.dumps(record) + '\n'
                write_atomically(out_path, ''.join(lines[d] for d in sorted(lines)))
            done.append(drop_ratio)
    except KeyboardInterrupt:  # Ctrl-C: say what the file holds (run_script prints it, status 130)
        measured = f"the drop ratios {', '.join(map(str, done))}" if done else 'no drop ratio'
        raise KeyboardInterrupt(f"'{out_path}' holds {measured} of this sweep") from None
    model.set_patch_drop_ratio(0.0)
    kept = [d for d in earlier if d not in args.drop_ratios]
    replaced = [d for d in earlier if d in args.drop_ratios]
    merged = (f"; kept the earlier results for drop ratios {', '.join(map(str, kept)) or 'none'}, replaced "
              f"{', '.join(map(str, replaced)) or 'none'}" if earlier else '')
    logger.info(f'wrote {out_path}{merged}')
    return 0


def run(argv=None):
    return run_script(main, get_parser(__doc__, SWEEP_DROP_RATIOS), argv)


if __name__ == '__main__':
    sys.exit(run())
