"""Shared helpers for tests: small configs and models."""
import argparse

import torch

from config import get_config
from models import build_model

TINY_OPTS = ['DATA.IMG_SIZE', '32', 'MODEL.VIT.PATCH_SIZE', '8', 'MODEL.VIT.EMBED_DIM', '32',
             'MODEL.VIT.DEPTH', '2', 'MODEL.VIT.NUM_HEADS', '2', 'MODEL.NUM_CLASSES', '5']


def tiny_config(cfg='configs/vit-b/magnitude_cyclic_80_0.yaml', opts=(), **shortcuts):
    """A ViT-B config shrunk to a 32 px, 2-block model (17 tokens with CLS)."""
    return get_config(argparse.Namespace(cfg=cfg, opts=TINY_OPTS + list(opts), **shortcuts))


def tiny_model(opts=(), bias_std=0.5, seed=0):
    """A tiny model with a non-zero relative position bias table (zeros would hide indexing bugs)."""
    torch.manual_seed(seed)
    model = build_model(tiny_config(opts=opts))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith('relative_position_bias_table'):
                p.normal_(std=bias_std)
    return model
