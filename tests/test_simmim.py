"""SimMIM pre-training pieces: the mask generator, the masked encoder, the decoder and the loss
against explicit reference computations, the configs, and the pre-training loader."""
import argparse
import math

import numpy as np
import pytest
import torch

from config import get_config
from data.masking import MaskGenerator, build_pretrain_loader, pretrain_image_folder
from lr_scheduler import build_scheduler, lr_at
from models import build_simmim
from models.simmim import simmim_loss
from tests.helpers import make_image_folder

# 16 px images, 4 px patches (a 4 x 4 grid), mask blocks of 8 px (2 x 2 blocks of 2 x 2 patches)
TINY = ['DATA.DATASET', 'imagenet', 'DATA.IMG_SIZE', '16', 'MODEL.VIT.PATCH_SIZE', '4', 'MODEL.VIT.EMBED_DIM', '16',
        'MODEL.VIT.DEPTH', '2', 'MODEL.VIT.NUM_HEADS', '2', 'DATA.MASK_PATCH_SIZE', '8', 'DATA.NUM_WORKERS', '0']


def simmim_config(*opts, cfg='configs/simmim/demo.yaml'):
    return get_config(argparse.Namespace(cfg=cfg, opts=TINY + list(opts)))


def tiny_simmim(seed=0):
    torch.manual_seed(seed)
    model = build_simmim(simmim_config())
    with torch.no_grad():  # non-zero position terms, so that a wrong token order would show
        model.encoder.rel_pos_bias.relative_position_bias_table.normal_(std=0.5)
        model.encoder.pos_embed.normal_(std=0.5)
    return model.eval()


# --------------------------------------------------------------------------------------- mask
@pytest.mark.parametrize('input_size, mask_patch, model_patch, ratio, blocks, masked', [
    (224, 32, 16, 0.6, 7, 30),   # SimMIM's ViT-B: ceil(49 x 0.6) = 30 of 49 blocks of 2 x 2 patches
    (192, 32, 4, 0.6, 6, 22),    # SimMIM's Swin: ceil(21.6) = 22 of 36 blocks of 8 x 8 patches
    (32, 8, 4, 0.6, 4, 10),      # the demo: ceil(9.6) = 10 of 16
    (32, 8, 8, 0.5, 4, 8),       # one patch per block
    (16, 8, 4, 0.3, 2, 2),       # ceil(1.2) = 2 of 4
])
def test_masks_have_the_right_count_and_block_structure(input_size, mask_patch, model_patch, ratio, blocks, masked):
    generator = MaskGenerator(input_size, mask_patch, model_patch, ratio)
    assert generator.num_masked == math.ceil(blocks * blocks * ratio) == masked
    s = mask_patch // model_patch
    np.random.seed(0)
    counts = torch.zeros(blocks, blocks)
    draws = 400
    for _ in range(draws):
        mask = generator()
        assert mask.shape == (input_size // model_patch,) * 2 and mask.dtype == torch.uint8
        assert set(mask.unique().tolist()) <= {0, 1}
        per_block = mask.view(blocks, s, blocks, s).permute(0, 2, 1, 3).reshape(blocks, blocks, s * s)
        assert (per_block == per_block[..., :1]).all()  # every block all masked or all visible
        assert int(per_block[..., 0].sum()) == masked
        assert int(mask.sum()) == masked * s * s
        counts += per_block[..., 0]
    # uniform over blocks: each block is masked in about ratio of the draws (binomial, 5 sigma)
    p = masked / blocks ** 2
    assert (counts / draws - p).abs().max() <= 5 * math.sqrt(p * (1 - p) / draws)


def test_masks_come_from_numpys_rng():
    generator = MaskGenerator(32, 8, 4, 0.6)
    np.random.seed(3)
    first = [generator() for _ in range(3)]
    np.random.seed(3)
    assert all(torch.equal(a, generator()) for a in first)
    assert not torch.equal(first[0], first[1])


@pytest.mark.parametrize('args', [(32, 12, 4, 0.6), (32, 8, 16, 0.6), (32, 8, 4, 0.0), (32, 8, 4, 1.0)])
def test_mask_generator_rejects_impossible_settings(args):
    with pytest.raises(ValueError):
        MaskGenerator(*args)


# ----------------------------------------------------------------------------- model and loss
def reference_loss(model, images, mask):
    """The SimMIM loss written out: masked embedding, the encoder, a 1x1 convolution as a matrix
    product, the pixel shuffle as explicit index arithmetic, the L1 over masked pixels in loops."""
    encoder = model.encoder
    B, C, H, W = images.shape
    p = model.patch_size
    h, w = H // p, W // p
    tokens = encoder.patch_embed(images).clone()  # [B, h*w, D]
    for b in range(B):
        for i in range(h):
            for j in range(w):
                if mask[b, i, j]:
                    tokens[b, i * w + j] = encoder.mask_token[0, 0]
    tokens = torch.cat([encoder.cls_token.expand(B, -1, -1), tokens], dim=1) + encoder.pos_embed
    features = encoder.forward_tokens(tokens)[:, 1:]  # [B, h*w, D]: all tokens, CLS dropped
    conv = model.decoder[0]
    out = features @ conv.weight[:, :, 0, 0].t() + conv.bias  # [B, h*w, p*p*C]
    reconstruction = torch.zeros_like(images)
    for b in range(B):
        for i in range(h):
            for j in range(w):
                for c in range(C):
                    for di in range(p):
                        for dj in range(p):  # PixelShuffle: channel c*p*p + di*p + dj -> pixel (di, dj)
                            reconstruction[b, c, i * p + di, j * p + dj] = out[b, i * w + j, c * p * p + di * p + dj]
    total, count = 0.0, 0
    for b in range(B):
        for y in range(H):
            for x in range(W):
                if mask[b, y // p, x // p]:
                    total += (reconstruction[b, :, y, x] - images[b, :, y, x]).abs().sum()
                    count += 1
    return total / (count + 1e-5) / C, reconstruction


def test_loss_equals_an_explicit_reference_computation():
    model = tiny_simmim()
    torch.manual_seed(1)
    images = torch.randn(3, 3, 16, 16)
    np.random.seed(1)
    generator = MaskGenerator(16, 8, 4, 0.6)
    mask = torch.stack([generator() for _ in range(3)])  # [3, 4, 4]
    with torch.no_grad():
        loss = model(images, mask)
        expected, reconstruction = reference_loss(model, images, mask)
        assert torch.allclose(model.reconstruct(images, mask), reconstruction, atol=1e-6)
    assert loss.ndim == 0 and loss > 0
    assert torch.allclose(loss, expected, rtol=1e-5, atol=1e-6)


def test_masked_pixels_reach_neither_the_encoder_nor_the_visible_loss():
    model = tiny_simmim()
    torch.manual_seed(2)
    images = torch.randn(2, 3, 16, 16)
    mask = torch.zeros(2, 4, 4, dtype=torch.uint8)
    mask[:, :2, :2] = 1  # the top-left 8 x 8 pixels of both images are masked
    changed = images.clone()
    changed[:, :, :8, :8] = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        # the mask token replaced those patches' embeddings: the encoder never saw their pixels
        assert torch.equal(model.encoder(images, mask), model.encoder(changed, mask))
        assert not torch.equal(model(images, mask), model(changed, mask))  # but the loss targets them
        reconstruction = model.reconstruct(images, mask)
    pixel_mask = mask.repeat_interleave(4, 1).repeat_interleave(4, 2).unsqueeze(1)
    visible_changed = images.clone()
    visible_changed[:, :, 8:, :] += 1.0  # only visible pixels: the loss does not move
    assert torch.equal(simmim_loss(images, reconstruction, pixel_mask),
                       simmim_loss(visible_changed, reconstruction, pixel_mask))
    # every masked pixel counted once, channels averaged: a constant error e gives e
    assert torch.allclose(simmim_loss(images, images + 0.5, pixel_mask), torch.tensor(0.5), atol=1e-5)


def test_encoder_output_and_checkpoint_names():
    model = tiny_simmim()
    images, mask = torch.randn(2, 3, 16, 16), torch.ones(2, 4, 4, dtype=torch.uint8)
    assert model.encoder(images, mask).shape == (2, 16, 4, 4)  # [B, D, h, w]
    assert model.reconstruct(images, mask).shape == images.shape
    state = model.state_dict()
    assert all(k.startswith(('encoder.', 'decoder.')) for k in state)
    assert state['encoder.mask_token'].shape == (1, 1, 16)
    assert state['decoder.0.weight'].shape == (4 * 4 * 3, 16, 1, 1)  # patch_size^2 x 3 channels
    assert {k for k in state if k.startswith('decoder.')} == {'decoder.0.weight', 'decoder.0.bias'}
    assert 'encoder.rel_pos_bias.relative_position_bias_table' in state  # shared, as SimMIM's ViT-B
    assert not any(k.startswith('encoder.head.') or '.attn.relative_position_bias_table' in k for k in state)
    assert model.no_weight_decay() == {'encoder.pos_embed', 'encoder.cls_token'}
    model.set_patch_drop_ratio(0.5)
    with pytest.raises(ValueError, match='every token'):
        model(images, mask)


def test_pretraining_optimizer_groups_are_simmims():
    from optimizer import param_groups_layer_decay
    model = build_simmim(simmim_config())
    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.65, base_lr=1.0)
    # SimMIM's pre-training: no layer decay (every name is encoder.* / decoder.*), two groups
    assert [g['lr_scale'] for g in groups] == [1.0, 1.0]
    by_decay = {g['weight_decay']: {name for name, _ in g['params']} for g in groups}
    assert sorted(by_decay) == [0.0, 0.05]
    decay, no_decay = by_decay[0.05], by_decay[0.0]
    assert {'encoder.cls_token', 'encoder.pos_embed', 'encoder.norm.weight', 'decoder.0.bias'} <= no_decay
    assert {'encoder.mask_token', 'encoder.rel_pos_bias.relative_position_bias_table', 'decoder.0.weight',
            'encoder.patch_embed.proj.weight'} <= decay
    assert decay | no_decay == {name for name, _ in model.named_parameters()}


# -------------------------------------------------------------------------------------- configs
def test_simmim_vit_b_config_is_simmims():
    config = get_config(argparse.Namespace(cfg='configs/simmim/vit-b.yaml', opts=None))
    vit = config.MODEL.VIT
    assert (config.DATA.IMG_SIZE, config.DATA.MASK_PATCH_SIZE, config.DATA.MASK_RATIO) == (224, 32, 0.6)
    assert (vit.PATCH_SIZE, vit.EMBED_DIM, vit.DEPTH, vit.NUM_HEADS) == (16, 768, 12, 12)
    assert (vit.USE_SHARED_RPB, vit.USE_RPB, vit.USE_APE, vit.USE_MEAN_POOLING) == (True, False, False, False)
    train = config.TRAIN
    assert (train.EPOCHS, train.WARMUP_EPOCHS, train.BASE_LR, train.WEIGHT_DECAY) == (800, 10, 1e-4, 0.05)
    assert train.OPTIMIZER.NAME == 'adamw' and config.MODEL.DROP_PATH_RATE == 0.1
    # 128 per GPU on 16 GPUs: 1e-4 x 2048 / 512 = 4e-4 after warm-up, a tenth of it from epoch 700
    optimizer = torch.optim.AdamW([{'params': [torch.nn.Parameter(torch.zeros(1))], 'initial_lr': 4e-4}], lr=4e-4)
    scheduler = build_scheduler(config, optimizer, n_iter_per_epoch=1, world_size=16)
    assert lr_at(scheduler, 0) == pytest.approx(5e-7 * 4)
    assert lr_at(scheduler, 10) == pytest.approx(4e-4) and lr_at(scheduler, 699) == pytest.approx(4e-4)
    assert lr_at(scheduler, 700) == pytest.approx(4e-5) and lr_at(scheduler, 799) == pytest.approx(4e-5)


def test_simmim_demo_config_pretrains_the_demo_model():
    demo = get_config(argparse.Namespace(cfg='configs/demo/base.yaml', opts=None))
    config = get_config(argparse.Namespace(cfg='configs/simmim/demo.yaml', opts=None))
    for key in ('PATCH_SIZE', 'EMBED_DIM', 'DEPTH', 'NUM_HEADS', 'USE_APE'):
        assert config.MODEL.VIT[key] == demo.MODEL.VIT[key]
    assert config.DATA.IMG_SIZE == demo.DATA.IMG_SIZE and config.DATA.DATASET == 'digits'
    model = build_simmim(config)
    generator = MaskGenerator(config.DATA.IMG_SIZE, config.DATA.MASK_PATCH_SIZE, config.MODEL.VIT.PATCH_SIZE,
                              config.DATA.MASK_RATIO)
    assert model.encoder.patch_embed.grid_size == (8, 8) and generator.num_masked == 10
    assert model(torch.randn(2, 3, 32, 32), torch.stack([generator(), generator()])).isfinite()


# --------------------------------------------------------------------------------------- loader
def test_pretrain_loader_is_deterministic_per_seed_epoch_and_index(tmp_path):
    from data import set_train_epoch
    root = make_image_folder(tmp_path / 'data', classes=('a', 'b'), num_train=5, num_val=1, size=20)
    assert pretrain_image_folder(root) == str(tmp_path / 'data' / 'train')
    assert pretrain_image_folder(str(tmp_path / 'data' / 'train')) == str(tmp_path / 'data' / 'train')  # SimMIM's form
    config = simmim_config('DATA.DATA_PATH', root, 'DATA.BATCH_SIZE', '4')
    dataset, loader = build_pretrain_loader(config)
    assert len(dataset) == 10 and len(loader) == 2

    def epoch(e, start_batch=0):
        set_train_epoch(loader, e, start_batch)
        return list(loader)

    batches = epoch(1)
    images, masks = batches[0]
    assert images.shape == (4, 3, 16, 16) and masks.shape == (4, 4, 4) and masks.dtype == torch.uint8
    assert (masks.flatten(1).sum(1) == 3 * 4).all()  # ceil(4 x 0.6) = 3 blocks of 2 x 2 patches
    torch.manual_seed(99)  # the process's RNG does not matter
    np.random.seed(99)
    again = epoch(1)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))
    tail = epoch(1, start_batch=1)  # a mid-epoch resume sees the rest of the same epoch
    assert len(tail) == 1 and torch.equal(tail[0][0], batches[1][0]) and torch.equal(tail[0][1], batches[1][1])
    other = epoch(2)
    assert not torch.equal(other[0][1], batches[0][1]) or not torch.equal(other[0][0], batches[0][0])
