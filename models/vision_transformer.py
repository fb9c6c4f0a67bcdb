"""The SimMIM / BEiT fine-tuning ViT, or the plain ViT of timm / DeiT / MAE, with patch sampling (PSS).

At drop ratio d > 0 the network keeps K = round((1 - d) * N) of its N tokens (CLS always, first),
chosen once after the patch embedding, and runs every block on those K tokens only. Each block's
relative position bias is looked up for the kept pairs, so kept tokens keep their true offsets.
State-dict names follow SimMIM / BEiT checkpoints (with a full qkv bias, timm's `attn.qkv.bias`).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
import quiet_timm  # noqa: F401  (before timm, which warns at import)
from timm.layers import trunc_normal_

from .patch_selection import (PATCH_SCORE_FUNCS, gather_tokens, num_kept_tokens, random_scores, select_tokens,
                              top_tokens)


def build_relative_position_index(grid_size):
    """[N, N] index into a table of (2H-1)(2W-1) + 3 rows, N = H*W + 1 (CLS first).

    Patch pairs index their offset; the last three rows are cls-to-token, token-to-cls and
    cls-to-cls.
    """
    h, w = grid_size
    coords = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # [hw, hw, 2]
    relative[:, :, 0] += h - 1  # shift offsets to start at 0
    relative[:, :, 1] += w - 1
    relative[:, :, 0] *= 2 * w - 1
    num_relative_distance = (2 * h - 1) * (2 * w - 1) + 3
    index = torch.zeros(h * w + 1, h * w + 1, dtype=torch.long)
    index[1:, 1:] = relative.sum(-1)
    index[0, 0:] = num_relative_distance - 3
    index[0:, 0] = num_relative_distance - 2
    index[0, 0] = num_relative_distance - 1
    return index


def relative_position_bias(tables, relative_position_index, kept_pairs, dtype=None, via_grid=None):
    """The bias of the kept token pairs, heads first, rows still padded.

    tables: one table [R, heads], or a list of L tables (every block's, looked up at once);
    relative_position_index: [N, N]; kept_pairs: [B', K, K'] (B' = 1 or B, K' >= K, see
    `kept_pair_index`) positions i * N + j of the kept pairs in the N x N grid
    -> bias [heads, B', K, K'] (one table) or [L, heads, B', K, K'], contiguous, in `dtype` (default
    the tables'); the attention uses [..., :K].

    `via_grid` (default: on accelerators): through the full [heads, N x N] grid, so that the
    backward's scatter-add does not pile B x K^2 atomics onto a few table rows; a CPU adds without
    atomics, so there the pairs are looked up in the table directly. Lookups stay in the tables' fp32,
    and all tables share one set of operators (benchmarks/RESULTS.md, "What makes the model fast").
    """
    if isinstance(tables, torch.Tensor):
        leading, rows = (), tables.t().contiguous()  # [heads, R]: tiny
    else:
        leading, rows = (len(tables),), torch.stack([t.t() for t in tables]).flatten(0, 1)  # [L * heads, R]
    if via_grid is None:
        via_grid = kept_pairs.device.type != 'cpu'
    if via_grid:
        grid = rows.index_select(1, relative_position_index.flatten())  # [(L *) heads, N * N]
        bias = grid.index_select(1, kept_pairs.flatten())  # [(L *) heads, B' * K * K']
    else:
        pair_rows = relative_position_index.flatten()[kept_pairs.flatten()]  # [B' * K * K'] table rows
        bias = rows.index_select(1, pair_rows)
    if dtype is not None:
        bias = bias.to(dtype)
    return bias.view(*leading, -1, *kept_pairs.shape)


def kept_pair_index(idx, num_tokens, multiple=16):
    """Positions i * N + j in the N x N grid of every kept pair, rows padded to a multiple of 16.

    idx: [B', K] kept token indices (B' = 1 with all N tokens) -> [B', K, K']. The
    memory-efficient CUDA attention kernel wants the mask's rows aligned; given a [.., K, K] mask
    with K = 197, 158, ... it would copy it into a padded buffer in every block (on an H200, sdpa
    forward and backward at 197 tokens took 2.06 ms with a contiguous bias, 1.79 ms with the
    aligned view). Padding the index instead makes the gathered bias a view with aligned rows; on
    CPU the padding costs under 1% of a step, too little for a second code path. It repeats the
    row's first entries, so that its (zero) gradients do not all land on one grid entry.
    """
    pairs = idx.unsqueeze(2) * num_tokens + idx.unsqueeze(1)  # [B', K, K]
    k = pairs.shape[-1]
    pad = -k % multiple
    if pad:
        pairs = torch.cat([pairs, pairs[..., torch.arange(pad, device=pairs.device) % k]], dim=-1)
    return pairs


class PatchEmbed(nn.Module):
    """Image to patch tokens with one strided convolution. [B, C, H, W] -> [B, H/p * W/p, D]."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768):
        super().__init__()
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)

    def forward_subset(self, x, patch_idx):
        """Only some patches: x [B, C, H, W], patch_idx [B, M] (patch numbers, row-major) -> [B, M, D].

        The convolution's products as one matmul over the M patches named; the others are never
        embedded. Equal to forward() gathered, up to the order of the sums.
        """
        p = self.proj.kernel_size[0]
        B, C = x.shape[:2]
        patches = x.unfold(2, p, p).unfold(3, p, p)  # [B, C, H/p, W/p, p, p]
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(B, self.num_patches, C * p * p)  # weight's order
        return F.linear(gather_tokens(patches, patch_idx), self.proj.weight.flatten(1), self.proj.bias)


class RelativePositionBias(nn.Module):
    """A relative position bias table shared by all blocks (USE_SHARED_RPB)."""

    def __init__(self, grid_size, num_heads):
        super().__init__()
        num_relative_distance = (2 * grid_size[0] - 1) * (2 * grid_size[1] - 1) + 3
        self.relative_position_bias_table = nn.Parameter(torch.zeros(num_relative_distance, num_heads))
        self.register_buffer('relative_position_index', build_relative_position_index(grid_size))

    def forward(self, kept_pairs, dtype=None, via_grid=None):
        return relative_position_bias(self.relative_position_bias_table, self.relative_position_index, kept_pairs,
                                      dtype, via_grid)


class Attention(nn.Module):
    # True: F.scaled_dot_product_attention with the bias as a float mask. False: the explicit
    # softmax math. None (default): sdpa on accelerators, where the memory-efficient kernel takes
    # the bias and returns its gradient; the explicit math on CPU, where sdpa falls back to a
    # slower math path of its own whenever the mask needs a gradient (so always in training) and
    # its flash kernel was slower than the explicit math even in eval (benchmarks/RESULTS.md).
    fused_attn = None

    def __init__(self, dim, num_heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0, grid_size=None,
                 full_qkv_bias=False):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        # full_qkv_bias: one bias for q, k and v, `qkv.bias` (timm ViT, DeiT, MAE)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias and full_qkv_bias)
        if qkv_bias and not full_qkv_bias:  # q and v get a bias, k does not (BEiT, SimMIM)
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        if grid_size is not None:
            num_relative_distance = (2 * grid_size[0] - 1) * (2 * grid_size[1] - 1) + 3
            self.relative_position_bias_table = nn.Parameter(torch.zeros(num_relative_distance, num_heads))
            self.register_buffer('relative_position_index', build_relative_position_index(grid_size))
        else:
            self.relative_position_bias_table = None
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x, bias=None):
        """x: [B, K, C]; bias: [heads, B', K, K'] (B' = 1 or B, rows padded, see `kept_pair_index`)
        or None. The model looks every block's bias up at once (`relative_position_bias`)."""
        B, K, C = x.shape
        qkv_bias = self.qkv.bias
        if self.q_bias is not None:
            qkv_bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, qkv_bias)
        # [3, heads, B, K, C/heads]: heads before batch, the layout of the gathered bias
        q, k, v = qkv.view(B, K, 3, self.num_heads, C // self.num_heads).permute(2, 3, 0, 1, 4)
        if bias is not None:
            # A no-op when the model cast it already; then view the first K columns: the mask keeps aligned rows.
            bias = bias.to(q.dtype)[..., :K]  # [heads, B', K, K]

        fused = self.fused_attn if self.fused_attn is not None else x.device.type != 'cpu'
        if fused:
            x = F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # [heads, B, K, K]
            if bias is not None:
                attn += bias  # in place: the matmul's output is not needed by its backward
            attn = self.attn_drop(attn.softmax(dim=-1))
            x = attn @ v
        x = x.permute(1, 2, 0, 3).reshape(B, K, C)
        return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
    def __init__(self, dim, hidden_dim, drop=0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True, drop=0.0, attn_drop=0.0,
                 drop_path=0.0, init_values=None, grid_size=None, full_qkv_bias=False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop, grid_size, full_qkv_bias)
        self.drop_path_rate = drop_path  # stochastic depth: the probability of dropping a branch
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        if init_values:
            self.gamma_1 = nn.Parameter(init_values * torch.ones(dim))
            self.gamma_2 = nn.Parameter(init_values * torch.ones(dim))
        else:
            self.gamma_1 = self.gamma_2 = None

    def _add_branch(self, x, y, gamma):
        """x + drop_path(gamma * y), x, y: [B, K, C], as one multiply-add over [B, K, C].

        Layer scale and the per-sample keep mask (scaled by 1 / keep probability, as timm's
        DropPath, drawing the same random numbers) are folded into a [B, 1, C] factor first,
        instead of three more passes over the tokens in forward and backward.
        """
        scale = gamma
        if self.training and self.drop_path_rate > 0.0:
            keep_prob = 1.0 - self.drop_path_rate
            keep = x.new_empty(x.shape[0], 1, 1).bernoulli_(keep_prob).div_(keep_prob)
            scale = keep if scale is None else keep * scale
        return x + y if scale is None else torch.addcmul(x, y, scale)

    def forward(self, x, bias=None):
        x = self._add_branch(x, self.attn(self.norm1(x), bias), self.gamma_1)
        return self._add_branch(x, self.mlp(self.norm2(x)), self.gamma_2)


class VisionTransformer(nn.Module):
    """ViT with optional absolute / relative position terms, layer scale and patch sampling.

    The defaults are the SimMIM / BEiT fine-tuning ViT; the plain ViT of timm, DeiT and MAE is
    `full_qkv_bias=True, init_values=None, use_abs_pos_emb=True` with CLS (`use_mean_pooling=False`)
    or mean pooling.

    `set_patch_drop_ratio(d)` sets the fraction of tokens dropped in every later forward, in train
    and eval mode alike; d <= 0 runs the plain network.
    """
    # True: the relative position biases are looked up through the full N x N grid; False: straight
    # from the tables; None (default): the grid on accelerators only (see relative_position_bias).
    bias_via_grid = None

    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=768,
                 depth=12, num_heads=12, mlp_ratio=4.0, qkv_bias=True, drop_rate=0.0,
                 attn_drop_rate=0.0, drop_path_rate=0.0, init_values=None, use_abs_pos_emb=False,
                 use_rel_pos_bias=False, use_shared_rel_pos_bias=False, use_mean_pooling=True,
                 init_scale=0.001, use_checkpoint=False, patch_drop_func='magnitude', full_qkv_bias=False):
        super().__init__()
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.use_checkpoint = use_checkpoint
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        grid_size = self.patch_embed.grid_size
        self.num_tokens = self.patch_embed.num_patches + 1  # N, CLS counted

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, embed_dim)) if use_abs_pos_emb else None
        self.pos_drop = nn.Dropout(drop_rate)
        self.rel_pos_bias = RelativePositionBias(grid_size, num_heads) if use_shared_rel_pos_bias else None

        dpr = torch.linspace(0, drop_path_rate, depth).tolist()  # stochastic depth rises linearly
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, dpr[i],
                  init_values, grid_size if use_rel_pos_bias else None, full_qkv_bias)
            for i in range(depth)])
        self.norm = nn.Identity() if use_mean_pooling else nn.LayerNorm(embed_dim, eps=1e-6)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6) if use_mean_pooling else None
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

        self.patch_drop_ratio = 0.0
        self.set_patch_drop_func(patch_drop_func)
        self._init_weights(init_scale)

    def _init_weights(self, init_scale):
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        with torch.no_grad():
            for layer_id, block in enumerate(self.blocks, start=1):  # residual branches shrink with depth
                block.attn.proj.weight.div_(math.sqrt(2.0 * layer_id))
                block.mlp.fc2.weight.div_(math.sqrt(2.0 * layer_id))
            if isinstance(self.head, nn.Linear):
                self.head.weight.mul_(init_scale)
                self.head.bias.mul_(init_scale)

    # --- controls kept from the original code ---------------------------------------------------
    def set_patch_drop_ratio(self, drop_ratio):
        self.patch_drop_ratio = float(drop_ratio)

    def set_patch_drop_func(self, name):
        if name not in PATCH_SCORE_FUNCS:
            raise ValueError(f"unknown patch drop function '{name}'; valid: {', '.join(PATCH_SCORE_FUNCS)}")
        self.patch_drop_func = name

    def num_kept_tokens(self, drop_ratio=None):
        drop_ratio = self.patch_drop_ratio if drop_ratio is None else drop_ratio
        return self.num_tokens if drop_ratio <= 0 else num_kept_tokens(self.num_tokens, drop_ratio)

    def no_weight_decay(self):
        return {'pos_embed', 'cls_token'}

    def get_num_layers(self):
        return len(self.blocks)

    # --- forward --------------------------------------------------------------------------------
    def embed(self, x):
        """Images [B, C, H, W] -> tokens [B, N, D]: patches, CLS first, absolute positions."""
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        return self.pos_drop(x)

    def _select(self, x):
        """tokens [B, N, D] -> (kept tokens [B, K, D], kept indices [B, K] or None for all)."""
        num_keep = self.num_kept_tokens()
        if num_keep >= self.num_tokens:
            return x, None
        idx = select_tokens(x, num_keep, PATCH_SCORE_FUNCS[self.patch_drop_func])
        return gather_tokens(x, idx), idx

    def _embed_subset(self, x, idx):
        """Images [B, C, H, W] -> the tokens idx [B, K] (CLS first) names, [B, K, D], with only those
        patches embedded; equal to `embed` gathered, up to the order of the sums."""
        B = x.shape[0]
        tokens = torch.cat([self.cls_token.expand(B, -1, -1), self.patch_embed.forward_subset(x, idx[:, 1:] - 1)],
                           dim=1)
        if self.pos_embed is not None:
            tokens = tokens + gather_tokens(self.pos_embed.expand(B, -1, -1), idx)
        return self.pos_drop(tokens)

    def embed_and_select(self, x):
        """Images [B, C, H, W] -> (kept tokens [B, K, D], kept indices [B, K] or None for all).

        Random selection needs no embedding to choose from, so only the kept patches are embedded
        (same draws as `_select`). A magnitude score needs every patch embedded, a backward only the
        kept ones: in training with fewer than half the patches kept, all are embedded without
        autograd to choose (the very tokens `_select` scores), then the kept ones again with it.
        That costs 2 (K-1) / (N-1) of the convolution (forward and backward) and saves its backward
        (1), so it is less work only there (rho 0.2 and 0.4). Not with dropout on the embedding:
        the scores would have to see its mask.
        """
        num_keep = self.num_kept_tokens()
        if num_keep >= self.num_tokens:
            return self.embed(x), None
        if self.patch_drop_func == 'random':
            idx = top_tokens(random_scores(x.shape[0], self.num_tokens - 1, x.device), num_keep)  # [B, K]
            return self._embed_subset(x, idx), idx
        below_half = 2 * (num_keep - 1) < self.num_tokens - 1
        if below_half and self.training and torch.is_grad_enabled() and self.pos_drop.p == 0:
            with torch.no_grad():
                idx = select_tokens(self.embed(x), num_keep, PATCH_SCORE_FUNCS[self.patch_drop_func])
            return self._embed_subset(x, idx), idx
        return self._select(self.embed(x))

    @torch.no_grad()
    def get_kept_token_indices(self, x):
        """Indices [B, K] (CLS = 0 first) of the tokens the model keeps for images x [B, C, H, W]."""
        _, idx = self.embed_and_select(x)
        if idx is None:
            idx = torch.arange(self.num_tokens, device=x.device).expand(x.shape[0], -1)
        return idx

    def relative_position_biases(self, idx, device_type):
        """Every block's attention bias for the kept tokens idx [B', K] (B' = 1: all tokens): a list
        with one [heads, B', K, K'] tensor (rows padded) or None per block, in the autocast dtype.

        The per-block tables are looked up together (one set of operators for all blocks); the
        shared table, if any, once, and its bias is used by every block.
        """
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
        tables = [block.attn.relative_position_bias_table for block in self.blocks]
        shared = self.rel_pos_bias is not None
        if not shared and any(t is None for t in tables):
            return [None] * len(self.blocks)
        kept_pairs = kept_pair_index(idx, self.num_tokens)  # [B', K, K'], once for all blocks
        own = None
        if all(t is not None for t in tables):
            index = self.blocks[0].attn.relative_position_index  # the same in every block
            # with a shared table too, the sum is taken in fp32 and cast after, as one table would be
            own = relative_position_bias(tables, index, kept_pairs, None if shared else dtype,
                                         self.bias_via_grid).unbind(0)
        if not shared:
            return own
        shared_bias = self.rel_pos_bias(kept_pairs, None if own is not None else dtype, self.bias_via_grid)
        if own is None:
            return [shared_bias] * len(self.blocks)
        return [(b + shared_bias).to(dtype or b.dtype) for b in own]

    def forward_tokens(self, x, idx=None):
        """Tokens x [B, K, D] and their indices idx [B, K] (None: all N tokens, as from `embed`)
        -> [B, K, D]: the blocks, each with its relative position bias for those tokens, and the
        final norm."""
        if idx is None:
            idx = torch.arange(self.num_tokens, device=x.device).unsqueeze(0)  # [1, N]: every token
        biases = self.relative_position_biases(idx, x.device.type)
        for block, bias in zip(self.blocks, biases):
            if self.use_checkpoint and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, bias, use_reentrant=False)
            else:
                x = block(x, bias)
        return self.norm(x)

    def forward_features(self, x):
        x = self.forward_tokens(*self.embed_and_select(x))
        if self.fc_norm is not None:
            return self.fc_norm(x[:, 1:].mean(dim=1))  # mean of the kept patch tokens
        return x[:, 0]

    def forward(self, x):
        return self.head(self.forward_features(x))
