import argparse

import pytest
import torch
import torch.nn.functional as F

from benchmarks.op_count import OpCounter
from config import get_config
from models import build_model
from models.patch_selection import gather_relative_position_index, num_kept_tokens
from models.vision_transformer import Attention, build_relative_position_index
from tests.helpers import tiny_config, tiny_model


def vit_b():
    return build_model(get_config(argparse.Namespace(cfg='configs/vit-b/magnitude_cyclic_80_0.yaml', opts=None)))


def test_vit_b_parameter_count_and_state_dict_names():
    model = vit_b()
    assert sum(p.numel() for p in model.parameters()) == 86_530_984
    keys = set(model.state_dict())
    top = {k for k in keys if not k.startswith('blocks.')}
    assert top == {'cls_token', 'patch_embed.proj.weight', 'patch_embed.proj.bias', 'fc_norm.weight',
                   'fc_norm.bias', 'head.weight', 'head.bias'}
    block = {k[len('blocks.3.'):] for k in keys if k.startswith('blocks.3.')}
    assert block == {'norm1.weight', 'norm1.bias', 'attn.q_bias', 'attn.v_bias', 'attn.qkv.weight',
                     'attn.relative_position_bias_table', 'attn.relative_position_index',
                     'attn.proj.weight', 'attn.proj.bias', 'norm2.weight', 'norm2.bias',
                     'mlp.fc1.weight', 'mlp.fc1.bias', 'mlp.fc2.weight', 'mlp.fc2.bias', 'gamma_1', 'gamma_2'}
    assert {k.split('.')[1] for k in keys if k.startswith('blocks.')} == {str(i) for i in range(12)}
    assert model.blocks[0].attn.relative_position_bias_table.shape == (27 * 27 + 3, 12)
    assert 'attn.qkv.bias' not in block
    assert torch.all(model.blocks[0].gamma_1 == 0.1)


def test_shared_bias_and_cls_pooling_state_dict_names():
    config = tiny_config(opts=['MODEL.VIT.USE_RPB', 'False', 'MODEL.VIT.USE_SHARED_RPB', 'True',
                               'MODEL.VIT.USE_MEAN_POOLING', 'False', 'MODEL.VIT.USE_APE', 'True'])
    keys = set(build_model(config).state_dict())
    assert {'rel_pos_bias.relative_position_bias_table', 'rel_pos_bias.relative_position_index',
            'pos_embed', 'norm.weight', 'norm.bias'} <= keys
    assert not any('fc_norm' in k or 'attn.relative_position' in k for k in keys)


def test_relative_position_index_layout():
    index = build_relative_position_index((14, 14))
    num = 27 * 27 + 3
    assert index.shape == (197, 197)
    assert index[0, 1:].eq(num - 3).all() and index[1:, 0].eq(num - 2).all() and index[0, 0] == num - 1
    # patch (r1, c1) -> (r2, c2) maps to (r1 - r2 + 13) * 27 + (c1 - c2 + 13)
    r1, c1, r2, c2 = 3, 11, 9, 2
    assert index[1 + r1 * 14 + c1, 1 + r2 * 14 + c2] == (r1 - r2 + 13) * 27 + (c1 - c2 + 13)
    assert index[1:, 1:].max() == num - 4 and index[1:, 1:].min() == 0


@pytest.mark.parametrize('tenths', range(10))
def test_kept_token_counts_on_the_grid(tenths):
    drop = tenths / 10
    expected = round((1 - drop) * 197)
    assert num_kept_tokens(197, drop) == expected
    model = tiny_model()  # 17 tokens
    model.set_patch_drop_ratio(drop)
    idx = model.get_kept_token_indices(torch.randn(2, 3, 32, 32))
    assert idx.shape == (2, round((1 - drop) * 17) if drop > 0 else 17)
    assert (idx[:, 0] == 0).all()  # CLS first


def test_paper_token_counts():
    assert [num_kept_tokens(197, d) for d in (0.8, 0.6, 0.4, 0.2)] == [39, 79, 118, 158]


@pytest.mark.parametrize('func, score', [('magnitude', lambda t: t.abs().sum(-1)),
                                         ('l2_magnitude', lambda t: (t * t).sum(-1))])
def test_magnitude_keeps_top_norm_tokens(func, score):
    model = tiny_model(opts=['MODEL.VIT.USE_APE', 'True', 'TRAIN.PATCH_DROP_FUNC', func]).eval()
    x = torch.randn(3, 3, 32, 32)
    model.set_patch_drop_ratio(0.6)
    idx = model.get_kept_token_indices(x)
    # reference: embed by hand, score every patch token, take the 7 best in descending order
    tokens = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
    tokens = torch.cat([model.cls_token.expand(3, -1, -1), tokens], 1) + model.pos_embed
    scores = score(tokens[:, 1:])
    k = round(0.4 * 17)
    expected = torch.argsort(scores, dim=1, descending=True)[:, :k - 1] + 1
    assert torch.equal(idx[:, 1:], expected)
    assert torch.equal(idx, model.get_kept_token_indices(x))  # deterministic


def test_random_selection_differs_between_calls_and_images():
    model = tiny_model(opts=['TRAIN.PATCH_DROP_FUNC', 'random']).eval()
    model.set_patch_drop_ratio(0.5)
    x = torch.randn(1, 3, 32, 32).expand(4, -1, -1, -1)
    a, b = model.get_kept_token_indices(x), model.get_kept_token_indices(x)
    assert not torch.equal(a, b)
    assert len({tuple(sorted(row.tolist())) for row in a}) > 1  # independent per image
    assert all(len(set(row.tolist())) == row.numel() for row in a)  # no repeats


def reference_forward(model, x, keep_idx=None):
    """Explicit math: full attention on the gathered tokens with the sliced full-sequence bias."""
    B = x.shape[0]
    t = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
    t = torch.cat([model.cls_token.expand(B, -1, -1), t], 1)
    if model.pos_embed is not None:
        t = t + model.pos_embed
    if keep_idx is not None:
        t = torch.stack([t[b, keep_idx[b]] for b in range(B)])
    index = build_relative_position_index(model.patch_embed.grid_size)
    for blk in model.blocks:
        a = blk.attn
        heads, C = a.num_heads, t.shape[-1]
        full_bias = a.relative_position_bias_table[index].permute(2, 0, 1)  # [heads, N, N]
        h = F.layer_norm(t, (C,), blk.norm1.weight, blk.norm1.bias, 1e-6)
        q, k, v = (h @ a.qkv.weight.t()).split(C, dim=-1)
        q, v = q + a.q_bias, v + a.v_bias
        q, k, v = (z.reshape(B, -1, heads, C // heads).transpose(1, 2) for z in (q, k, v))
        attn = (q @ k.transpose(-2, -1)) * (C // heads) ** -0.5
        if keep_idx is None:
            attn = attn + full_bias
        else:
            attn = attn + torch.stack([full_bias[:, keep_idx[b]][:, :, keep_idx[b]] for b in range(B)])
        o = (attn.softmax(-1) @ v).transpose(1, 2).reshape(B, -1, C)
        t = t + blk.gamma_1 * a.proj(o)
        h = F.layer_norm(t, (C,), blk.norm2.weight, blk.norm2.bias, 1e-6)
        t = t + blk.gamma_2 * blk.mlp.fc2(F.gelu(blk.mlp.fc1(h)))
    pooled = model.fc_norm(t[:, 1:].mean(1))
    return model.head(pooled)


@pytest.mark.parametrize('fused', [True, False])
@pytest.mark.parametrize('drop', [0.0, 0.2, 0.4, 0.6, 0.8])
def test_pruned_forward_equals_reference(fused, drop, monkeypatch):
    monkeypatch.setattr(Attention, 'fused_attn', fused)
    model = tiny_model().eval()
    with torch.no_grad():
        model.head.weight.normal_()  # make logits large enough to compare meaningfully
    x = torch.randn(3, 3, 32, 32)
    model.set_patch_drop_ratio(drop)
    idx = model.get_kept_token_indices(x) if drop > 0 else None
    out = model(x)
    ref = reference_forward(model, x, idx)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert out.abs().max() > 1e-2


def test_drop_zero_is_the_plain_forward():
    model = tiny_model().eval()
    x = torch.randn(2, 3, 32, 32)
    model.set_patch_drop_ratio(0.0)
    plain = model(x)
    model.set_patch_drop_ratio(-0.1)  # negative (unclamped schedule values) also means all patches
    assert torch.equal(model(x), plain)
    assert model.get_kept_token_indices(x).tolist() == [list(range(17))] * 2


def test_selection_applies_in_train_mode_and_gradients_reach_bias_table():
    model = tiny_model(opts=['MODEL.DROP_PATH_RATE', '0.0']).train()
    model.set_patch_drop_ratio(0.6)
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    for blk in model.blocks:
        grad = blk.attn.relative_position_bias_table.grad
        assert grad is not None and grad.abs().sum() > 0
    model.eval()
    idx = model.get_kept_token_indices(x)
    with torch.no_grad():
        assert torch.allclose(model(x), reference_forward(model, x, idx), atol=1e-5)


def test_gathered_index_matches_slicing():
    index = build_relative_position_index((4, 4))
    idx = torch.tensor([[0, 5, 2, 16], [0, 1, 9, 3]])
    gathered = gather_relative_position_index(index, idx)
    assert gathered.shape == (2, 4, 4)
    for b in range(2):
        assert torch.equal(gathered[b], index[idx[b]][:, idx[b]])


def test_shared_bias_pruned_forward_matches_per_block_copy():
    # A shared table must act exactly like the same table copied into every block.
    shared = tiny_model(opts=['MODEL.VIT.USE_RPB', 'False', 'MODEL.VIT.USE_SHARED_RPB', 'True']).eval()
    per_block = tiny_model().eval()
    state = {k: v for k, v in shared.state_dict().items() if not k.startswith('rel_pos_bias')}
    for i in range(len(per_block.blocks)):
        state[f'blocks.{i}.attn.relative_position_bias_table'] = shared.rel_pos_bias.relative_position_bias_table
        state[f'blocks.{i}.attn.relative_position_index'] = shared.rel_pos_bias.relative_position_index
    with torch.no_grad():
        shared.rel_pos_bias.relative_position_bias_table.normal_()
        state = {k: (shared.rel_pos_bias.relative_position_bias_table if k.endswith('bias_table') else v)
                 for k, v in state.items()}
    per_block.load_state_dict(state)
    x = torch.randn(2, 3, 32, 32)
    for drop in (0.0, 0.6):
        shared.set_patch_drop_ratio(drop)
        per_block.set_patch_drop_ratio(drop)
        torch.testing.assert_close(shared(x), per_block(x))


def test_unknown_patch_drop_func():
    with pytest.raises(ValueError, match='magnitude, l2_magnitude, random'):
        tiny_model().set_patch_drop_func('entropy')


@pytest.mark.parametrize('opts', [[], ['MODEL.VIT.USE_APE', 'True']], ids=['no-ape', 'ape'])
def test_random_selection_embeds_only_the_kept_patches_and_equals_the_full_embedding(opts):
    # The same random draws choose the same patches; the kept tokens equal those of the full
    # convolution, gathered (up to the order of the sums), and so do the logits.
    model = tiny_model(opts=['TRAIN.PATCH_DROP_FUNC', 'random', 'MODEL.DROP_PATH_RATE', '0.0'] + opts).eval()
    if model.pos_embed is not None:
        with torch.no_grad():
            model.pos_embed.normal_()
    model.set_patch_drop_ratio(0.6)
    x = torch.randn(3, 3, 32, 32)
    torch.manual_seed(5)
    tokens, idx = model.embed_and_select(x)
    torch.manual_seed(5)
    full_tokens, full_idx = model._select(model.embed(x))  # embed every patch, then choose
    assert torch.equal(idx, full_idx) and tokens.shape == (3, round(0.4 * 17), 32)
    torch.testing.assert_close(tokens, full_tokens, rtol=1e-5, atol=1e-6)
    torch.manual_seed(5)
    out = model(x)
    torch.testing.assert_close(out, reference_forward(model, x, idx), rtol=1e-4, atol=1e-5)
    patch_calls = []
    model.patch_embed.proj.register_forward_hook(lambda *args: patch_calls.append(1))
    model(x)
    assert patch_calls == []  # the convolution over all patches never ran


@pytest.mark.parametrize('func', ['magnitude', 'l2_magnitude'])
@pytest.mark.parametrize('opts', [[], ['MODEL.VIT.USE_APE', 'True']], ids=['no-ape', 'ape'])
def test_magnitude_selection_in_training_backpropagates_through_the_kept_patches_only(func, opts):
    # In training with fewer than half the patches kept, the patches are scored from an embedding
    # without autograd and the kept ones embedded again with it. Reference: every patch embedded
    # with autograd, then chosen (`_select`, the path eval mode takes). The indices are the same;
    # tokens and gradients equal up to the order of the sums (a matmul over the kept patches
    # against the convolution): rtol 1e-5, atol 1e-6.
    model = tiny_model(opts=['TRAIN.PATCH_DROP_FUNC', func, 'MODEL.DROP_PATH_RATE', '0.0'] + opts).train()
    with torch.no_grad():
        model.head.weight.normal_()  # gradients large enough to compare meaningfully
        if model.pos_embed is not None:
            model.pos_embed.normal_()
    model.set_patch_drop_ratio(0.6)
    x = torch.randn(3, 3, 32, 32)
    embedding = [p for p in (model.patch_embed.proj.weight, model.patch_embed.proj.bias, model.cls_token,
                             model.pos_embed) if p is not None]
    conv_calls = []
    model.patch_embed.proj.register_forward_hook(lambda *args: conv_calls.append(torch.is_grad_enabled()))
    with OpCounter() as ops:
        tokens, idx = model.embed_and_select(x)
        weights = torch.randn_like(tokens)
        grads = torch.autograd.grad((tokens * weights).sum(), embedding)
    assert conv_calls == [False] and 'convolution_backward' not in ops.counts
    full_tokens, full_idx = model._select(model.embed(x))
    assert torch.equal(idx, full_idx) and tokens.shape == (3, round(0.4 * 17), 32)
    torch.testing.assert_close(tokens, full_tokens, rtol=1e-5, atol=1e-6)
    for grad, full_grad in zip(grads, torch.autograd.grad((full_tokens * weights).sum(), embedding)):
        torch.testing.assert_close(grad, full_grad, rtol=1e-5, atol=1e-6)
        assert full_grad.abs().max() > 1e-2

    # the whole model: train mode (this path) against eval mode (the full embedding), which differ
    # in nothing else here (no dropout, no drop path). The differences spread through the blocks:
    # at most 1.1e-6 of a gradient's largest entry seen, 1e-5 of it allowed.
    def loss_and_grads():
        loss = model(x).logsumexp(dim=1).mean()
        return loss, torch.autograd.grad(loss, list(model.parameters()))
    loss, grads = loss_and_grads()
    model.eval()
    assert model.get_kept_token_indices(x).equal(idx)
    full_loss, full_grads = loss_and_grads()
    torch.testing.assert_close(loss, full_loss, rtol=1e-5, atol=1e-6)
    for (name, _), grad, full_grad in zip(model.named_parameters(), grads, full_grads):
        torch.testing.assert_close(grad, full_grad, rtol=1e-5, atol=1e-5 * full_grad.abs().max().item(), msg=name)

    model.train().set_patch_drop_ratio(0.4)  # 9 of 16 patches kept: embedding them again would cost more
    conv_calls.clear()
    model.embed_and_select(x)
    assert conv_calls == [True]
