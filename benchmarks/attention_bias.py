"""Micro-benchmark of the relative position bias on CUDA: its lookup and the mask layout for sdpa.

    python benchmarks/attention_bias.py [--batch-size 128] [--out DIR]

At every kept-token count of ViT-B (bf16, forward and backward, as in training) it times:
- the bias lookup of models/vision_transformer.py (fp32 table -> N x N grid -> kept pairs, then
  cast) against a direct lookup in bf16 (table -> kept pairs, padding pointing at one row),
  whose backward scatter-adds B x K^2 values into the table's few hundred rows;
- F.scaled_dot_product_attention with the bias as the model passes it (a view with rows padded
  to a multiple of 16) against a contiguous [heads, B, K, K] bias, which the memory-efficient
  kernel copies into a padded buffer first.
Writes attention_bias.json to --out and prints one line per token count.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.vision_transformer import (build_relative_position_index, kept_pair_index,  # noqa: E402
                                       relative_position_bias)

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


def lookup_step(lookup, grad, *inputs):
    def step():
        lookup(*inputs).backward(grad)
    return step


def model_lookup(table, relative_position_index, pairs, dtype):
    """The model's lookup (fp32 table -> grid -> kept pairs), cast as the attention does."""
    return relative_position_bias(table, relative_position_index, pairs).to(dtype)[..., :pairs.shape[1]]


def direct_lookup(table, relative_position_index, idx, dtype):
    """A one-step lookup in the compute dtype: pairs straight into the table, padding on entry 0."""
    index = relative_position_index[idx.unsqueeze(2), idx.unsqueeze(1)]  # [B, K, K]
    k = index.shape[-1]
    index = F.pad(index, (0, -k % 16))
    bias = table.t().to(dtype).contiguous().index_select(1, index.flatten()).view(table.shape[1], *index.shape)
    return bias[..., :k]


def sdpa_step(q, k, v, grad, bias_storage, tokens):
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
    full = build_relative_position_index((14, 14)).to(dev)
    n = full.shape[0]
    table = torch.randn(full.max().item() + 1, H, device=dev, requires_grad=True)
    rows = []
    for K in TOKENS:
        idx = torch.stack([torch.cat([torch.zeros(1, dtype=torch.long), 1 + torch.randperm(n - 1)[:K - 1]])
                           for _ in range(B if K < n else 1)]).to(dev)
        pairs = kept_pair_index(idx, n)
        grad = torch.randn(H, idx.shape[0], K, K, device=dev, dtype=dtype)
        row = {'tokens': K,
               'lookup_model_ms': time_ms(lookup_step(model_lookup, grad, table, full, pairs, dtype)),
               'lookup_direct_ms': time_ms(lookup_step(direct_lookup, grad, table, full, idx, dtype))}
        q, k, v = (torch.randn(H, B, K, d, device=dev, dtype=dtype, requires_grad=True) for _ in range(3))
        out_grad = torch.randn(H, B, K, d, device=dev, dtype=dtype)
        for name, row_length in (('sdpa_contiguous_bias_ms', K), ('sdpa_aligned_view_ms', K + (-K % 16))):
            storage = torch.randn(H, B, K, row_length, device=dev, dtype=dtype, requires_grad=True)
            row[name] = time_ms(sdpa_step(q, k, v, out_grad, storage, K))
        rows.append(row)
        print(' '.join(f'{key} {value:.3f}' if isinstance(value, float) else f'{key} {value}'
                       for key, value in row.items()), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    meta = {'device': torch.cuda.get_device_name(), 'torch': torch.__version__, 'batch': B, 'heads': H,
            'head_dim': d, 'dtype': 'bfloat16'}
    (Path(args.out) / 'attention_bias.json').write_text(json.dumps({'meta': meta, 'rows': rows}, indent=1))


if __name__ == '__main__':
    main()
