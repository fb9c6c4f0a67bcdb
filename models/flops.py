"""FLOP count of the PSS ViT at a drop ratio, with the real number of kept tokens.

    from models.flops import forward_flops, train_step_flops
    forward_flops(model, drop_ratio=0.8)              # {'patch_embed': ..., 'qkv': ..., 'total': ...}
    train_step_flops(model, drop_ratio=0.8, batch_size=8)

Convention: one multiply-add is 2 FLOPs, and only the matrix products are counted: the patch
embedding (a convolution over all P patches, whatever rho), per block the qkv projection, the
attention scores q k^T and the weighted sum of values (each 2 K^2 D over all heads), the output
projection and the MLP's two layers, and the classifier head. LayerNorm, softmax, GELU, bias
additions, layer scale, the bias lookup and the patch selection are left out: together they are
under 1% of a ViT-B forward. A training step counts 3 forwards (the backward computes a gradient
for both operands of every product: twice the forward), also for the patch embedding, whose input
gradient is not needed in truth (0.2% of a full step, 1% at rho = 0.2).

ViT-B at 224 px, full sequence (K = N = 197): 35.13 GFLOP per image forward, so a training step
at batch 8 is 3 x 8 x 35.13 = 843 GFLOP. At rho = 0.2 (K = 39) the forward is 6.91 GFLOP, 0.197
of the full one; the patch embedding (0.23 GFLOP) is the part that does not shrink.
"""


def _shapes(model):
    """The sizes the count needs, read from the model's layers."""
    proj = model.patch_embed.proj
    block = model.blocks[0]
    head = model.head
    return dict(
        num_patches=model.patch_embed.num_patches,
        patch_inputs=proj.in_channels * proj.kernel_size[0] * proj.kernel_size[1],  # C p^2
        embed_dim=model.embed_dim,
        mlp_hidden=block.mlp.fc1.out_features,
        depth=len(model.blocks),
        num_classes=getattr(head, 'out_features', 0),  # nn.Identity when there is no head
    )


def forward_flops(model, drop_ratio=0.0):
    """FLOPs of one image's forward at `drop_ratio`, by part, and their 'total'.

    K = model.num_kept_tokens(drop_ratio) tokens (CLS counted) run through every block; block
    parts are summed over all blocks.
    """
    s = _shapes(model)
    k = model.num_kept_tokens(drop_ratio)
    d, m = s['embed_dim'], s['mlp_hidden']
    per_block = {
        'qkv': 2 * k * d * 3 * d,
        'attn_scores': 2 * k * k * d,  # heads x K x K x (D / heads) multiply-adds
        'attn_weighted_sum': 2 * k * k * d,
        'proj': 2 * k * d * d,
        'mlp_fc1': 2 * k * d * m,
        'mlp_fc2': 2 * k * m * d,
    }
    flops = {'patch_embed': 2 * s['num_patches'] * s['patch_inputs'] * d}
    flops.update({name: s['depth'] * value for name, value in per_block.items()})
    flops['head'] = 2 * d * s['num_classes']
    flops['total'] = sum(flops.values())
    return flops


def train_step_flops(model, drop_ratio=0.0, batch_size=1):
    """FLOPs of one training step (forward and backward, 3 forwards) on `batch_size` images."""
    return 3 * batch_size * forward_flops(model, drop_ratio)['total']


def flop_ratio(model, drop_ratio):
    """Forward FLOPs at `drop_ratio` over those of the full sequence: the ideal step-time ratio."""
    return forward_flops(model, drop_ratio)['total'] / forward_flops(model, 0.0)['total']
