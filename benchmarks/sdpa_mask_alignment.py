"""Does the row alignment of the attention bias matter to F.scaled_dot_product_attention on CUDA?

    python benchmarks/sdpa_mask_alignment.py [--batch-size 128] [--out DIR]

The model gathers its relative position bias through an index whose rows are padded to a
multiple of 16 (models/vision_transformer.py: padded_relative_position_index), so the bias
reaches sdpa as a [heads, B, K, K] view with aligned row strides. This times sdpa forward and
backward (bf16, the bias needing a gradient, as in training) at every kept-token count of ViT-B,
with that view against a plain contiguous [heads, B, K, K] bias, which the memory-efficient
kernel would copy into a padded buffer first. Writes sdpa_mask_alignment.json to --out.
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

TOKENS = (197, 158, 118, 79, 39)


def time_ms(fn, repeats=20, warmup=3):
    times = []
    for i in range(warmup + repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def attention_step(q, k, v, grad, bias_storage, tokens):
    """One forward and backward of sdpa with the first `tokens` columns of bias_storage as mask."""
    def step():
        F.scaled_dot_product_attention(q, k, v, attn_mask=bias_storage[..., :tokens]).backward(grad)
    return step


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--batch-size', type=int, default=128)
    p.add_argument('--heads', type=int, default=12)
    p.add_argument('--head-dim', type=int, default=64)
    p.add_argument('--out', default='benchmarks/results')
    args = p.parse_args()
    dev, dtype, H, B, d = 'cuda', torch.bfloat16, args.heads, args.batch_size, args.head_dim
    rows = []
    for K in TOKENS:
        q, k, v = (torch.randn(H, B, K, d, device=dev, dtype=dtype, requires_grad=True) for _ in range(3))
        grad = torch.randn(H, B, K, d, device=dev, dtype=dtype)
        row = {'tokens': K}
        # contiguous: rows of K elements; aligned_view: rows padded to a multiple of 16, as the model's
        for name, row_length in (('contiguous', K), ('aligned_view', K + (-K % 16))):
            storage = torch.randn(H, B, K, row_length, device=dev, dtype=dtype, requires_grad=True)
            step = attention_step(q, k, v, grad, storage, K)
            row[f'{name}_ms'] = time_ms(step)
            try:  # is the memory-efficient kernel (bias and its gradient) usable with this bias?
                with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
                    row[f'{name}_efficient_ms'] = time_ms(step)
            except RuntimeError as e:
                row[f'{name}_efficient_ms'] = f'not supported: {str(e)[:80]}'
        rows.append(row)
        print(row, flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    meta = {'device': torch.cuda.get_device_name(), 'torch': torch.__version__, 'batch': B, 'heads': H,
            'head_dim': d, 'dtype': 'bfloat16'}
    (Path(args.out) / 'sdpa_mask_alignment.json').write_text(json.dumps({'meta': meta, 'rows': rows}, indent=1))


if __name__ == '__main__':
    main()
