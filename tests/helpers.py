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


def make_image_folder(root, classes=('a', 'b', 'c'), num_train=8, num_val=3, size=16, seed=0):
    """A tiny ImageFolder dataset: root/train/<class>/*.png and root/val/<class>/*.png.

    Each class has its own mean colour plus noise, so a model can learn it in a few steps.
    Returns root as a string.
    """
    import os

    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    for split, count in (('train', num_train), ('val', num_val)):
        for c, name in enumerate(classes):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            n = count[c] if isinstance(count, (list, tuple)) else count
            for i in range(n):
                base = np.zeros((size, size, 3)) + 60 + 70 * c
                pixels = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(os.path.join(folder, f'{i}.png'))
    return str(root)
