"""Patch selection: which tokens a ViT keeps at a given drop ratio.

Pure functions on tensors. A strategy is a score function over the patch tokens; the shared tail
(count, top-k, CLS first, gather) is written once. Shapes: B batch, N tokens with CLS (patches + 1),
K kept tokens with CLS, D channels.
"""
import torch


def patch_scores_magnitude(patches):
    """L1 norm of each patch token. patches: [B, N-1, D] -> [B, N-1]."""
    return patches.abs().sum(dim=-1)


def patch_scores_l2_magnitude(patches):
    """Squared L2 norm of each patch token. patches: [B, N-1, D] -> [B, N-1]."""
    return patches.pow(2).sum(dim=-1)


def patch_scores_random(patches):
    """Uniform random scores, independent per image: top-k of them is a uniform random subset."""
    return random_scores(*patches.shape[:2], device=patches.device)


def random_scores(batch_size, num_patches, device=None):
    """The random scores without the patches: [B, N-1], the same draws as patch_scores_random."""
    return torch.rand(batch_size, num_patches, device=device)


PATCH_SCORE_FUNCS = {
    'magnitude': patch_scores_magnitude,
    'l2_magnitude': patch_scores_l2_magnitude,
    'random': patch_scores_random,
}


def num_kept_tokens(num_tokens, drop_ratio):
    """K = round((1 - drop_ratio) * N), Python rounding, at least CLS and at most N.

    At N = 197 (224 px, patch 16), drop 0.8 / 0.6 / 0.4 / 0.2 keep 39 / 79 / 118 / 158 tokens.
    """
    return min(num_tokens, max(1, round((1.0 - drop_ratio) * num_tokens)))


def select_tokens(x, num_keep, score_func):
    """Indices of the tokens to keep, CLS first, then patches in descending score.

    x: [B, N, D] with CLS at index 0. Returns a LongTensor [B, num_keep] of indices into N.
    """
    with torch.no_grad():  # selection is a discrete choice: no gradient flows through the scores
        return top_tokens(score_func(x[:, 1:]), num_keep)


def top_tokens(scores, num_keep):
    """scores: [B, N-1] of the patches -> [B, num_keep] token indices: CLS (0), then the top
    num_keep - 1 patches (+1: CLS comes first in the sequence) in descending score."""
    patch_idx = scores.topk(num_keep - 1, dim=1, sorted=True).indices + 1  # [B, K-1]
    cls_idx = torch.zeros_like(patch_idx[:, :1])
    return torch.cat([cls_idx, patch_idx], dim=1)


def gather_tokens(x, idx):
    """x: [B, N, D], idx: [B, K] -> [B, K, D], the rows of x named by idx."""
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def gather_relative_position_index(relative_position_index, idx):
    """The relative-position index restricted to kept tokens.

    relative_position_index: [N, N]; idx: [B, K] -> [B, K, K], where entry (b, i, j) is
    relative_position_index[idx[b, i], idx[b, j]]: kept tokens keep their true relative offsets.
    (The model looks the bias up in two steps instead, see vision_transformer.kept_pair_index,
    which gives the same entries.)
    """
    return relative_position_index[idx.unsqueeze(2), idx.unsqueeze(1)]
