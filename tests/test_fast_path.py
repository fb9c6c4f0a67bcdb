"""The fast attention path (F.scaled_dot_product_attention with the gathered bias as a float mask)
against the explicit softmax math, in values and in the gradients of every parameter."""
import pytest
import torch
from timm.layers import DropPath

from benchmarks.op_count import OpCounter

from models.patch_selection import gather_relative_position_index
from models.vision_transformer import (Attention, Block, build_relative_position_index, kept_pair_index,
                                       relative_position_bias)
from tests.helpers import tiny_model

RHOS = (1.0, 0.8, 0.6, 0.4, 0.2)


def outputs_and_grads(model, x, target_weights, fused, monkeypatch):
    monkeypatch.setattr(Attention, 'fused_attn', fused)
    model.zero_grad(set_to_none=True)
    out = model(x)
    (out * target_weights).sum().backward()
    return out.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize('rho', RHOS)
@pytest.mark.parametrize('opts', [[], ['MODEL.VIT.USE_RPB', 'False', 'MODEL.VIT.USE_SHARED_RPB', 'True']],
                         ids=['per-block-bias', 'shared-bias'])
def test_sdpa_equals_explicit_math_in_values_and_gradients(rho, opts, monkeypatch):
    # Train mode, so the bias table needs a gradient (sdpa's own fallback on CPU); no drop path or
    # dropout, so both passes see the same network; magnitude selection keeps the same tokens.
    model = tiny_model(opts=['MODEL.DROP_PATH_RATE', '0.0', 'MODEL.DROP_RATE', '0.0',
                             'TRAIN.PATCH_DROP_FUNC', 'magnitude'] + opts).train()
    with torch.no_grad():
        model.head.weight.normal_()  # logits large enough for the comparison to mean something
    model.set_patch_drop_ratio(1.0 - rho)
    x = torch.randn(3, 3, 32, 32)
    target_weights = torch.randn(3, 5)

    out_fused, grads_fused = outputs_and_grads(model, x, target_weights, True, monkeypatch)
    out_math, grads_math = outputs_and_grads(model, x, target_weights, False, monkeypatch)

    torch.testing.assert_close(out_fused, out_math, rtol=1e-4, atol=1e-5)
    assert out_fused.abs().max() > 1e-2
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert set(grads_fused) == set(grads_math) == trainable  # every parameter got a gradient
    for name in trainable:
        torch.testing.assert_close(grads_fused[name], grads_math[name], rtol=1e-4, atol=1e-6, msg=name)
    tables = [name for name in trainable if name.endswith('relative_position_bias_table')]
    assert tables and all(grads_math[name].abs().sum() > 0 for name in tables)


@pytest.mark.parametrize('fused', [True, False])
def test_default_attention_matches_both_paths(fused, monkeypatch):
    model = tiny_model(opts=['MODEL.DROP_PATH_RATE', '0.0']).train()
    model.set_patch_drop_ratio(0.6)
    x = torch.randn(2, 3, 32, 32)
    default = model(x)  # fused_attn None: picks a path by device
    monkeypatch.setattr(Attention, 'fused_attn', fused)
    torch.testing.assert_close(model(x), default, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('idx', [[[0, 5, 2, 16, 9], [0, 1, 9, 3, 4]], [list(range(17))]],
                         ids=['kept', 'all'])
def test_gathered_bias_is_an_aligned_heads_first_view(idx):
    # [heads, B', K, K] straight from the pair index, rows padded to a multiple of 16 (no copy by
    # the memory-efficient CUDA kernel), equal to the table looked up pair by pair.
    torch.manual_seed(0)
    full = build_relative_position_index((4, 4))  # 17 tokens, 7 * 7 + 3 = 52 rows
    table = torch.randn(52, 3)
    idx = torch.tensor(idx)
    pairs = kept_pair_index(idx, 17)
    k = idx.shape[1]
    assert pairs.shape == (idx.shape[0], k, 16 * -(-k // 16))
    for b in range(idx.shape[0]):
        assert torch.equal(pairs[b, :, :k], idx[b, :, None] * 17 + idx[b, None, :])
        assert torch.equal(pairs[b, :, k:], pairs[b, :, :pairs.shape[-1] - k])  # padding spreads
    bias = relative_position_bias(table, full, pairs)[..., :k]  # as the attention uses it
    assert bias.shape == (3, idx.shape[0], k, k)
    assert bias.stride(-1) == 1 and all(s % 16 == 0 for s in bias.stride()[:-1])
    assert torch.equal(bias, table[gather_relative_position_index(full, idx)].permute(3, 0, 1, 2))
    assert torch.equal(bias[:, 0, 1, 2], table[full[idx[0, 1], idx[0, 2]]])


def test_folded_layer_scale_and_drop_path_equal_timm_drop_path():
    # One multiply-add with a [B, 1, C] factor must equal x + DropPath(gamma * y), same draws.
    block = Block(8, 2, drop_path=0.5, init_values=0.3).train()
    x, y = torch.randn(16, 5, 8), torch.randn(16, 5, 8)
    torch.manual_seed(1)
    ours = block._add_branch(x, y, block.gamma_1)
    torch.manual_seed(1)
    reference = x + DropPath(0.5)(block.gamma_1 * y)
    torch.testing.assert_close(ours, reference)
    assert (ours == x).all(dim=(1, 2)).any() and not (ours == x).all()  # some samples dropped, not all
    block.eval()
    torch.testing.assert_close(block._add_branch(x, y, block.gamma_1), x + block.gamma_1 * y)


@pytest.mark.parametrize('dtype', [None, torch.bfloat16])
def test_all_blocks_bias_lookup_equals_one_lookup_per_block_bitwise(dtype):
    # The stacked lookup (one set of operators for every block) must give each block exactly the
    # bias, and each table exactly the gradient, of looking its own table up alone.
    torch.manual_seed(0)
    full = build_relative_position_index((4, 4))
    idx = torch.tensor([[0, 5, 2, 16, 9], [0, 1, 9, 3, 4]])
    pairs = kept_pair_index(idx, 17)
    tables = [torch.randn(52, 3, requires_grad=True) for _ in range(4)]
    grads_out = torch.randn(4, 3, *pairs.shape)
    stacked = relative_position_bias(tables, full, pairs, dtype)
    assert stacked.shape == (4, 3, *pairs.shape) and stacked.is_contiguous()
    (stacked.float() * grads_out).sum().backward()
    stacked_grads = [t.grad.clone() for t in tables]
    for i, table in enumerate(tables):
        table.grad = None
        alone = relative_position_bias(table, full, pairs)
        alone = alone if dtype is None else alone.to(dtype)
        assert torch.equal(stacked[i], alone)
        (alone.float() * grads_out[i]).sum().backward()
        assert torch.equal(table.grad, stacked_grads[i])


@pytest.mark.parametrize('idx', [[[0, 5, 2, 16, 9], [0, 1, 9, 3, 4]], [list(range(17))]], ids=['kept', 'all'])
def test_bias_straight_from_the_table_equals_the_lookup_through_the_grid(idx):
    # The CPU default looks the kept pairs up in the tables directly, without the N x N grid: the same
    # entries, bit for bit, as through the grid (the accelerators' path) and as pair by pair; the
    # tables' gradients are the same sums in another order (rtol 1e-6, atol 1e-6 for about-zero sums).
    torch.manual_seed(0)
    full = build_relative_position_index((4, 4))
    idx = torch.tensor(idx)
    pairs, k = kept_pair_index(idx, 17), idx.shape[1]
    tables = [torch.randn(52, 3, requires_grad=True) for _ in range(2)]
    grads_out = torch.randn(2, 3, idx.shape[0], k, k)

    def bias_and_grads(lookup):
        bias = lookup()[..., :k]  # [L, heads, B', K, K], as the attention uses it
        return bias, torch.autograd.grad((bias * grads_out).sum(), tables)
    with OpCounter() as ops:
        direct, direct_grads = bias_and_grads(lambda: relative_position_bias(tables, full, pairs))
    assert ops.counts['index_select'] == 1  # one lookup, none into a grid
    grid, grid_grads = bias_and_grads(lambda: relative_position_bias(tables, full, pairs, via_grid=True))
    pairwise, pairwise_grads = bias_and_grads(lambda: torch.stack(
        [t[gather_relative_position_index(full, idx)].permute(3, 0, 1, 2) for t in tables]))
    assert torch.equal(direct, grid) and torch.equal(direct, pairwise)
    for a, b, c in zip(direct_grads, grid_grads, pairwise_grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(a, c, rtol=1e-6, atol=1e-6)
        assert b.abs().max() > 1


@pytest.mark.parametrize('opts', [[], ['MODEL.VIT.USE_SHARED_RPB', 'True']], ids=['per-block-bias', 'and-shared-bias'])
def test_model_bias_via_grid_switch_changes_only_the_order_of_the_tables_gradient_sums(opts, monkeypatch):
    model = tiny_model(opts=['MODEL.DROP_PATH_RATE', '0.0'] + opts).train()
    model.set_patch_drop_ratio(0.6)
    x, weights = torch.randn(2, 3, 32, 32), torch.randn(2, 5)
    out, grads = outputs_and_grads(model, x, weights, False, monkeypatch)
    monkeypatch.setattr(type(model), 'bias_via_grid', True)
    grid_out, grid_grads = outputs_and_grads(model, x, weights, False, monkeypatch)
    assert torch.equal(out, grid_out)
    assert sum(name.endswith('relative_position_bias_table') for name in grads) == (3 if opts else 2)
    for name, grad in grads.items():
        if name.endswith('relative_position_bias_table'):
            torch.testing.assert_close(grad, grid_grads[name], rtol=1e-6, atol=1e-9)
        else:
            assert torch.equal(grad, grid_grads[name]), name
