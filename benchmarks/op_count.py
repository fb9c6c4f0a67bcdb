"""How many ATen operators one training step dispatches: our PSS ViT at each rho, and timm's BEiT.

    python benchmarks/op_count.py --cfg configs/vit-b/magnitude_cyclic_80_0.yaml [--batch-size 2]

On a GPU every non-view operator is at least one kernel launch, issued by the CPU one after another.
When a step's kernels are short (small rho, small batch), the step costs about (operators x launch
cost) whatever the FLOPs, so this count is the floor of a launch-bound step (a CUDA-graph step,
TRAIN.CUDA_GRAPHS, replays them all with one launch). It is counted on the CPU with the attention
forced to scaled_dot_product_attention and the relative position bias to the lookup through the
N x N grid, the paths a GPU takes; the CPU may decompose that operator into a few more than a GPU
kernel would, alike for both models.
Prints, per case, the operators in total, those that are not views (the launches), and the most
frequent ones.
"""
import argparse
import collections
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as `python benchmarks/op_count.py` from anywhere

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from benchmarks.train_step import build_timm_reference, drop_ratio, make_optimizer  # noqa: E402
from config import get_config  # noqa: E402
from fast_step import TrainStep  # noqa: E402
from launch import finetune_parser  # noqa: E402
from models import build_model  # noqa: E402

RHOS = (1.0, 0.8, 0.6, 0.4, 0.2)
VIEW_OPS = {'view', '_unsafe_view', 't', 'transpose', 'permute', 'expand', 'slice', 'select', 'unsqueeze',
            'squeeze', 'detach', 'alias', 'as_strided', 'reshape', 'unbind', 'split', 'split_with_sizes',
            'chunk', 'narrow', 'unflatten', 'flatten', 'lift_fresh'}


class OpCounter(TorchDispatchMode):
    """Counts every ATen operator dispatched inside the `with` block, by name."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def count_step(model, images, targets, clip_grad=5.0):
    """Operator counts of one training step as main_finetune.py runs it (fast_step.TrainStep, eager:
    forward, loss, backward, gradient clip, fused AdamW, zero_grad), after one uncounted step that
    creates the optimizer state. The GradScaler is off (bf16 or fp32), as on an H200."""
    optimizer = make_optimizer(model, images.device)
    step = TrainStep(model, F.cross_entropy, optimizer, torch.amp.GradScaler(images.device.type, enabled=False),
                     clip_grad)
    step(images, targets)
    with OpCounter() as counter:
        step(images, targets)
    return counter.counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--cfg', required=True, help='model config (YAML)')
    parser.add_argument('--batch-size', type=int, default=2, help='images per step (the count does not depend on it)')
    parser.add_argument('--timm-model', default='beit_base_patch16_224', help="reference model, or 'none'")
    args = parser.parse_args(argv)
    config = get_config(finetune_parser().parse_args(['--cfg', args.cfg]))
    torch.manual_seed(0)
    images = torch.randn(args.batch_size, config.MODEL.VIT.IN_CHANS, config.DATA.IMG_SIZE, config.DATA.IMG_SIZE)
    targets = torch.randint(config.MODEL.NUM_CLASSES, (args.batch_size,))

    ours = build_model(config).train()
    ours.bias_via_grid = True  # the GPU's bias lookup, through the N x N grid
    for module in ours.modules():
        if hasattr(module, 'fused_attn'):
            module.fused_attn = True  # the GPU path: scaled_dot_product_attention with the bias as a mask
    cases = []
    for rho in RHOS:
        ours.set_patch_drop_ratio(drop_ratio(rho))
        cases.append((f'ours, rho = {rho}', count_step(ours, images, targets)))
    if args.timm_model != 'none':
        reference, _ = build_timm_reference(args.timm_model, config)
        cases.append((f'timm {args.timm_model}', count_step(reference.train(), images, targets)))

    print('| case | operators | non-view operators (launches) | most frequent |')
    print('|---|---|---|---|')
    for label, counts in cases:
        launches = sum(n for name, n in counts.items() if name not in VIEW_OPS)
        top = ', '.join(f'{name} {n}' for name, n in counts.most_common(6))
        print(f'| {label} | {sum(counts.values())} | {launches} | {top} |')
    return cases


if __name__ == '__main__':
    main()
