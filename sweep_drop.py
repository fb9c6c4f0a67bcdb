"""Dynamic inference: accuracy and throughput of one checkpoint at several drop ratios (rho = 1 - drop).

    python sweep_drop.py --cfg configs/vit-b/magnitude_cyclic_80_0.yaml --data-path <imagenet> \\
        --pretrained output/pss/simmim/vit-b/magnitude_cyclic_80_0/checkpoint.pth --output output
    torchrun --nproc_per_node 4 sweep_drop.py --cfg ... --pretrained ...      # the same, 4 processes
    python -m torch.distributed.launch --nproc_per_node 4 sweep_drop.py ...    # the same
    python sweep_drop.py ... --drop-ratios 0.0 0.4 0.8                        # other ratios

Flags are main_finetune.py's (--cfg, --opts, --batch-size, --data-path, --output, --tag,
--amp-opt-level, --trust-checkpoint); --pretrained (or --resume) names the checkpoint to evaluate,
which must fit the configured network exactly ({'model': state_dict} or a bare state dict, as
main_finetune.py writes them). MODEL.TYPE `pss_vit` and `vit` are the same network; TRAIN.PATCH_DROP_FUNC
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
"""
import json
import os
import sys

import torch

from data import build_val_loader
from engine import evaluate
from config import ConfigError
from experiments import (build_model_from_checkpoint, check_drop_ratios, check_output_folder, checkpoint_path,
                         get_parser)
from logger import create_logger
from launch import run_script
from utils import all_gather_object, autocast_dtype, init_distributed_mode, synchronize, write_atomically

SWEEP_DROP_RATIOS = tuple(round(0.1 * i, 1) for i in range(9))  # 0.0, 0.1, ..., 0.8
WARMUP_STEPS = 2  # forward passes on one batch before each ratio is timed
OUTPUT_FILE = 'sweep_drop.json'


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


def main(config, args, on_exit):
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
    return run_script(get_parser(__doc__, SWEEP_DROP_RATIOS), main, argv)


if __name__ == '__main__':
    sys.exit(run())
