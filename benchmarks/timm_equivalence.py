"""Full-size check: timm's ViT-B, DeiT-S and BEiT-B load through --pretrained and give timm's logits.

    python benchmarks/timm_equivalence.py [--batch-size 2]

For each of timm's vit_base_patch16_224, deit_small_patch16_224 and beit_base_patch16_224, created
here with random weights (no download): saves the state dict as .pth and as .safetensors, loads
each through pretrained.load_pretrained into the config of the same architecture
(tests/test_pretrained.py's ARCHITECTURES), and compares in fp32 on random 224 px images: the
logits at rho = 1 with timm's; at drop ratio 0.4 the kept tokens with an explicit top-k of the L1
norms of timm's embedded tokens, and (no relative bias) our logits with timm's blocks run on the
kept tokens. Prints one line per case and exits 1 if any difference exceeds 1e-5 or a token differs.
tests/test_pretrained.py runs the same checks on small models in every test run.
"""
import argparse
import logging
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as `python benchmarks/timm_equivalence.py` from anywhere

import safetensors.torch  # noqa: E402
import quiet_timm  # noqa: E402, F401  (before timm, which warns at import)
import timm  # noqa: E402
import torch  # noqa: E402

from config import get_config  # noqa: E402
from models import build_model  # noqa: E402
from pretrained import load_pretrained  # noqa: E402
from tests.test_pretrained import ARCHITECTURES, timm_tokens, topk_reference  # noqa: E402

TOLERANCE = 1e-5


def random_timm_model(name, seed=0):
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # non-zero biases, non-unit norms, a random bias table
    return model


def check(name, directory, batch_size):
    reference = random_timm_model(name)
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    paths = [str(Path(directory) / f'{name}.pth'), str(Path(directory) / f'{name}.safetensors')]
    torch.save(state, paths[0])
    safetensors.torch.save_file(state, paths[1])
    config = get_config(argparse.Namespace(cfg=str(REPO / ARCHITECTURES[name]), opts=None))
    images = torch.randn(batch_size, 3, 224, 224)
    with torch.no_grad():
        expected = reference(images)
    ok = True
    for path in paths:
        model = build_model(config).eval()
        load_pretrained(path, model, logging.getLogger('timm_equivalence'))
        with torch.no_grad():
            full = (model(images) - expected).abs().max().item()
            model.set_patch_drop_ratio(0.4)
            kept = model.get_kept_token_indices(images)
            tokens_equal = ([[0] + sorted(row[1:].tolist()) for row in kept]
                            == topk_reference(timm_tokens(reference, images), 0.6))
            line = (f'{name:24s} {Path(path).suffix:12s} rho 1: max |ours - timm| {full:.2e} '
                    f'(timm logits std {expected.std().item():.2f}); '
                    f'rho 0.6: {kept.shape[1]} tokens, top-k reference {"equal" if tokens_equal else "DIFFERENT"}')
            ok &= full <= TOLERANCE and tokens_equal
            if 'beit' not in name:
                x = timm_tokens(reference, images)
                x = x.gather(1, kept.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
                kept_diff = (model(images) - reference.forward_head(reference.norm(reference.blocks(x)))).abs().max()
                line += f', logits vs timm blocks on the kept tokens {kept_diff.item():.2e}'
                ok &= kept_diff.item() <= TOLERANCE
        print(line, flush=True)
    return ok


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batch-size', type=int, default=2)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as directory:
        results = [check(name, directory, args.batch_size) for name in ARCHITECTURES]
    print('all equal within 1e-5' if all(results) else 'MISMATCH')
    return 0 if all(results) else 1


if __name__ == '__main__':
    sys.exit(main())
