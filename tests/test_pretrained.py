"""--pretrained from timm, DeiT, MAE and BEiT checkpoints: our network equals timm's after loading.

Small timm models (32 px, patch 8, width 32, 2 blocks) stand for timm's vit_base_patch16_224,
deit_small_patch16_224 and beit_base_patch16_224: the same factories with the sizes overridden,
random weights, no download. benchmarks/timm_equivalence.py runs the full-size check.
"""
import functools
import logging

import pytest
import safetensors.torch
import timm
import torch

import pretrained
from checkpoint import CheckpointError
from pretrained import load_pretrained
from models.patch_selection import num_kept_tokens
from tests.helpers import tiny_config
from models import build_model

LOGGER = logging.getLogger('test_pretrained')
SMALL = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5)
ARCHITECTURES = {  # timm model -> the config of the same architecture
    'vit_base_patch16_224': 'configs/timm/vit_base_patch16_224.yaml',
    'deit_small_patch16_224': 'configs/timm/deit_small_patch16_224.yaml',
    'beit_base_patch16_224': 'configs/vit-b/magnitude_cyclic_80_0.yaml',
}


def timm_model(name, seed=0, **kwargs):
    """timm's `name` at SMALL sizes with every parameter random (zeros and ones would hide bugs)."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **dict(SMALL, **kwargs)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def our_model(cfg, opts=()):
    torch.manual_seed(1)
    return build_model(tiny_config(cfg, opts=list(opts))).eval()


def save(state_dict, path):
    if str(path).endswith('.safetensors'):
        safetensors.torch.save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    else:
        torch.save(state_dict, path)
    return str(path)


def topk_reference(tokens, keep_ratio):
    """Explicit magnitude selection: CLS, then the patches of largest L1 norm. tokens: [B, N, D]."""
    k = round(keep_ratio * tokens.shape[1])
    scores = tokens[:, 1:].abs().sum(-1)  # [B, N-1]
    return [[0] + sorted((scores[b].argsort(descending=True)[:k - 1] + 1).tolist()) for b in range(len(tokens))]


def timm_tokens(model, images):
    """timm's tokens after the patch and (if any) absolute position embedding, CLS first."""
    if hasattr(model, '_pos_embed'):  # VisionTransformer
        return model._pos_embed(model.patch_embed(images))
    x = model.patch_embed(images)  # Beit
    x = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    return x if model.pos_embed is None else x + model.pos_embed


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
@pytest.mark.parametrize('name', list(ARCHITECTURES))
def test_timm_checkpoint_gives_timm_logits(tmp_path, caplog, name, suffix):
    reference = timm_model(name)
    path = save(reference.state_dict(), tmp_path / f'{name}{suffix}')
    model = our_model(ARCHITECTURES[name])
    with caplog.at_level(logging.INFO, logger='test_pretrained'):
        missing, unexpected = load_pretrained(path, model, LOGGER)
    assert missing == [] and unexpected == []
    assert f"recognised the format: timm {'beit' if 'beit' in name else 'vision_transformer'}" in caplog.text

    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = reference(images)
        assert (model(images) - expected).abs().max() < 1e-5  # rho = 1

        model.set_patch_drop_ratio(0.4)
        kept = model.get_kept_token_indices(images)
        assert kept.shape == (4, num_kept_tokens(17, 0.4))
        assert kept[:, 0].eq(0).all()
        assert [[0] + sorted(row[1:].tolist()) for row in kept] == topk_reference(timm_tokens(reference, images), 0.6)
        if 'beit' not in name:  # no relative bias: timm's blocks on the kept tokens are the reference
            x = timm_tokens(reference, images)
            x = x.gather(1, kept.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
            assert (model(images) - reference.forward_head(reference.norm(reference.blocks(x)))).abs().max() < 1e-5


def test_timm_prefix_goes_through_timms_pretrained_loading(tmp_path, monkeypatch, caplog):
    reference = timm_model('deit_small_patch16_224')
    path = save(reference.state_dict(), tmp_path / 'weights.safetensors')
    # timm's local-file override of the pretrained config instead of the Hugging Face download
    monkeypatch.setattr(pretrained, 'timm_state_dict', functools.partial(
        pretrained.timm_state_dict, pretrained_cfg_overlay=dict(file=path, num_classes=5), **SMALL))
    model = our_model(ARCHITECTURES['deit_small_patch16_224'])
    with caplog.at_level(logging.INFO, logger='test_pretrained'):
        load_pretrained('timm:deit_small_patch16_224', model, LOGGER)
    assert 'recognised the format: timm vision_transformer' in caplog.text
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (model(images) - reference(images)).abs().max() < 1e-5


def test_timm_prefix_errors_name_the_model(tmp_path):
    with pytest.raises(CheckpointError, match="timm could not create 'no_such_model' .*internet"):
        load_pretrained('timm:no_such_model', our_model(ARCHITECTURES['vit_base_patch16_224']), LOGGER)
    resnet = save(timm.create_model('resnet18', pretrained=False).state_dict(), tmp_path / 'resnet.pth')
    with pytest.raises(CheckpointError, match="'resnet18' is a ResNet; timm:<name> takes vision_transformer"):
        pretrained.timm_state_dict('resnet18', pretrained_cfg_overlay=dict(file=resnet))


def mae_pretraining(model):
    """An MAE pre-training checkpoint of timm ViT `model`: no head, with a decoder and a mask token."""
    state = {k: v for k, v in model.state_dict().items() if not k.startswith('head.')}
    state.update({'mask_token': torch.zeros(1, 1, 16), 'decoder_embed.weight': torch.randn(16, 32),
                  'decoder_blocks.0.attn.qkv.weight': torch.randn(48, 16), 'decoder_pred.bias': torch.randn(192)})
    return {'model': state}


def test_mae_pretraining_into_the_mae_config(tmp_path, caplog):
    source = timm_model('vit_base_patch16_224')
    path = tmp_path / 'mae_pretrain.pth'
    torch.save(mae_pretraining(source), path)
    model = our_model('configs/mae/vit-b/magnitude_cyclic_80_0.yaml')
    with caplog.at_level(logging.INFO, logger='test_pretrained'):
        missing, unexpected = load_pretrained(str(path), model, LOGGER)
    assert 'recognised the format: MAE pre-training' in caplog.text
    assert 'dropped 4 keys not used for fine-tuning: mask_token, decoder_embed.weight' in caplog.text
    # global pooling: the classifier and its norm are new, the pre-training's final norm is unused (as MAE)
    assert sorted(missing) == ['fc_norm.bias', 'fc_norm.weight', 'head.bias', 'head.weight']
    assert sorted(unexpected) == ['norm.bias', 'norm.weight']
    assert torch.equal(model.blocks[1].attn.qkv.bias, source.blocks[1].attn.qkv.bias)
    assert torch.equal(model.pos_embed, source.pos_embed)


def test_mae_finetuned_and_deit_are_told_apart(tmp_path, caplog):
    finetuned = timm_model('vit_base_patch16_224', global_pool='avg')
    torch.save({'model': finetuned.state_dict()}, tmp_path / 'mae_finetuned.pth')
    model = our_model('configs/mae/vit-b/baseline.yaml')
    with caplog.at_level(logging.INFO, logger='test_pretrained'):
        assert load_pretrained(str(tmp_path / 'mae_finetuned.pth'), model, LOGGER) == ([], [])
    assert 'recognised the format: MAE fine-tuned' in caplog.text
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (model(images) - finetuned(images)).abs().max() < 1e-5

    deit = timm_model('deit_small_patch16_224')
    torch.save({'model': deit.state_dict()}, tmp_path / 'deit.pth')
    caplog.clear()
    with caplog.at_level(logging.INFO, logger='test_pretrained'):
        load_pretrained(str(tmp_path / 'deit.pth'), our_model(ARCHITECTURES['deit_small_patch16_224']), LOGGER)
    assert 'recognised the format: DeiT' in caplog.text


def test_distilled_deit_loses_its_distillation_token(tmp_path, caplog):
    distilled = timm_model('deit_small_distilled_patch16_224')
    torch.save({'model': distilled.state_dict()}, tmp_path / 'deit_distilled.pth')
    model = our_model(ARCHITECTURES['deit_small_patch16_224'])
    with caplog.at_level(logging.INFO, logger='test_pretrained'):
        assert load_pretrained(str(tmp_path / 'deit_distilled.pth'), model, LOGGER) == ([], [])
    assert 'recognised the format: DeiT (distilled)' in caplog.text
    assert 'dist_token' in caplog.text and 'head_dist.weight' in caplog.text
    pos = distilled.pos_embed
    assert torch.equal(model.pos_embed, torch.cat([pos[:, :1], pos[:, 2:]], dim=1))  # CLS and patch rows
    assert torch.equal(model.head.weight, distilled.head.weight)


def test_beit_unilm_pretraining_with_a_shared_table(tmp_path, caplog):
    source = timm_model('beit_base_patch16_224', use_rel_pos_bias=False, use_shared_rel_pos_bias=True)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith(('head.', 'fc_norm.'))}
    state.update({'mask_token': torch.zeros(1, 1, 32), 'lm_head.weight': torch.randn(64, 32),
                  'lm_head.bias': torch.randn(64)})
    torch.save({'model': state}, tmp_path / 'beit_pretrain.pth')
    model = our_model(ARCHITECTURES['beit_base_patch16_224'])
    with caplog.at_level(logging.INFO, logger='test_pretrained'):
        missing, _ = load_pretrained(str(tmp_path / 'beit_pretrain.pth'), model, LOGGER)
    assert 'recognised the format: BEiT (unilm)' in caplog.text
    assert 'dropped 3 keys not used for fine-tuning: mask_token, lm_head.weight, lm_head.bias' in caplog.text
    assert sorted(missing) == ['fc_norm.bias', 'fc_norm.weight', 'head.bias', 'head.weight']
    for block in model.blocks:
        assert torch.equal(block.attn.relative_position_bias_table, source.rel_pos_bias.relative_position_bias_table)


@pytest.mark.parametrize('name, cfg, expects', [
    ('deit_small_patch16_224', ARCHITECTURES['beit_base_patch16_224'],
     r"is timm vision_transformer \(full qkv bias, no layer scale, no relative position bias, absolute position "
     r"embedding\), but the config builds a model with q and v biases, layer scale, relative position bias, no "
     r"absolute position embedding; for this checkpoint set MODEL.VIT.FULL_QKV_BIAS True; MODEL.VIT.INIT_VALUES 0; "
     r"MODEL.VIT.USE_RPB and USE_SHARED_RPB False; MODEL.VIT.USE_APE True$"),
    ('beit_base_patch16_224', ARCHITECTURES['deit_small_patch16_224'],
     r'is timm beit \(q and v biases, layer scale, relative position bias, no absolute position embedding\), '
     r'but the config builds .*; for this checkpoint set MODEL.VIT.QKV_BIAS True, MODEL.VIT.FULL_QKV_BIAS '
     r'False; MODEL.VIT.INIT_VALUES > 0; MODEL.VIT.USE_RPB or USE_SHARED_RPB True$'),
])
def test_a_checkpoint_of_another_family_is_one_line(tmp_path, name, cfg, expects):
    path = save(timm_model(name).state_dict(), tmp_path / 'other.safetensors')
    model = our_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=expects) as error:
        load_pretrained(path, model, LOGGER)
    assert '\n' not in str(error.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_unrecognised_and_unreadable_files(tmp_path):
    model = our_model(ARCHITECTURES['vit_base_patch16_224'])
    resnet = timm.create_model('resnet18', pretrained=False, num_classes=5).state_dict()
    path = save(resnet, tmp_path / 'resnet.pth')
    with pytest.raises(CheckpointError, match="is not a ViT checkpoint --pretrained knows .*; its first keys: "
                                              r'conv1.weight, bn1.weight, bn1.bias, .*$'):
        load_pretrained(path, model, LOGGER)
    (tmp_path / 'broken.safetensors').write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00not a header')
    with pytest.raises(CheckpointError, match="broken.safetensors' cannot be read as safetensors"):
        load_pretrained(str(tmp_path / 'broken.safetensors'), model, LOGGER)
    with pytest.raises(CheckpointError, match="nowhere.safetensors' not found"):
        load_pretrained(str(tmp_path / 'nowhere.safetensors'), model, LOGGER)


def test_foreign_timm_parts_are_refused(tmp_path):
    clip_like = timm_model('vit_base_patch16_224', pre_norm=True)  # a CLIP-style ViT: norm_pre
    path = save(clip_like.state_dict(), tmp_path / 'clip.pth')
    with pytest.raises(CheckpointError, match=r"\(timm vision_transformer\) has parts this model does not: "
                                              r'norm_pre.bias, norm_pre.weight'):
        load_pretrained(path, our_model(ARCHITECTURES['vit_base_patch16_224']), LOGGER)


def test_layer_scale_is_converted_from_timms_names(tmp_path):
    reference = timm_model('vit_base_patch16_224', init_values=0.1)
    path = save(reference.state_dict(), tmp_path / 'ls.safetensors')
    model = our_model(ARCHITECTURES['vit_base_patch16_224'], ['MODEL.VIT.INIT_VALUES', '0.1'])
    assert load_pretrained(path, model, LOGGER) == ([], [])
    assert torch.equal(model.blocks[1].gamma_2, reference.blocks[1].ls2.gamma)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (model(images) - reference(images)).abs().max() < 1e-5


def test_our_own_checkpoint_of_the_plain_vit_family(tmp_path, caplog):
    source = our_model('configs/deit-s/magnitude_cyclic_80_0.yaml')  # absolute and relative position terms
    torch.save({'model': source.state_dict(), 'config': 'MODEL: {}', 'epoch': 3}, tmp_path / 'checkpoint.pth')
    model = our_model('configs/deit-s/magnitude_cyclic_80_0.yaml')
    with caplog.at_level(logging.INFO, logger='test_pretrained'):
        assert load_pretrained(str(tmp_path / 'checkpoint.pth'), model, LOGGER) == ([], [])
    assert 'recognised the format: PSS / SimMIM fine-tuned' in caplog.text
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())


def test_position_embedding_resized_to_another_grid(tmp_path):
    from pretrained import resize_pos_embed
    source = timm_model('deit_small_patch16_224', img_size=24)  # a 3x3 grid; ours is 4x4
    path = save(source.state_dict(), tmp_path / 'deit_24.safetensors')
    model = our_model(ARCHITECTURES['deit_small_patch16_224'])
    assert load_pretrained(path, model, LOGGER) == ([], [])
    assert torch.equal(model.pos_embed, resize_pos_embed(source.pos_embed, (3, 3), (4, 4)))


def test_position_embedding_without_a_cls_row(tmp_path, caplog):
    reference = timm_model('deit3_small_patch16_224')  # no_embed_class: positions for the patches only
    assert reference.pos_embed.shape[1] == 16
    path = save(reference.state_dict(), tmp_path / 'deit3.safetensors')
    model = our_model(ARCHITECTURES['deit_small_patch16_224'], ['MODEL.VIT.INIT_VALUES', '1e-5'])
    with caplog.at_level(logging.INFO, logger='test_pretrained'):
        assert load_pretrained(path, model, LOGGER) == ([], [])
    assert 'a zero row added for CLS' in caplog.text
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (model(images) - reference(images)).abs().max() < 1e-5


def test_a_hugging_face_model_folder_is_read_from_its_weights_file(tmp_path, caplog):
    """A Hub download or timm's save_for_hf: config.json beside model.safetensors (or, older,
    pytorch_model.bin). The folder itself names the weights; one without them is one line."""
    reference = timm_model('deit_small_patch16_224')
    images = torch.randn(2, 3, 32, 32)
    for weights in ('model.safetensors', 'pytorch_model.bin'):
        folder = tmp_path / weights.split('.')[0]
        folder.mkdir()
        (folder / 'config.json').write_text('{"architecture": "deit_small_patch16_224", "num_classes": 5}')
        save(reference.state_dict(), folder / weights)
        model = our_model(ARCHITECTURES['deit_small_patch16_224'])
        with caplog.at_level(logging.INFO, logger='test_pretrained'):
            assert load_pretrained(str(folder), model, LOGGER) == ([], [])
        assert 'recognised the format: timm vision_transformer' in caplog.text
        with torch.no_grad():
            assert (model(images) - reference(images)).abs().max() < 1e-5, weights
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'empty' / 'config.json').write_text('{}')
    with pytest.raises(CheckpointError) as error:
        load_pretrained(str(tmp_path / 'empty'), our_model(ARCHITECTURES['deit_small_patch16_224']), LOGGER)
    assert str(error.value) == (f"checkpoint '{tmp_path / 'empty'}' is a folder without model.safetensors or "
                                'pytorch_model.bin (the weights of a Hugging Face model folder): pass the weights '
                                'file itself')


def test_a_ddp_prefixed_safetensors_file(tmp_path):
    reference = timm_model('vit_base_patch16_224')
    path = save({f'module.{k}': v for k, v in reference.state_dict().items()}, tmp_path / 'ddp.safetensors')
    model = our_model(ARCHITECTURES['vit_base_patch16_224'])
    assert load_pretrained(path, model, LOGGER) == ([], [])
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (model(images) - reference(images)).abs().max() < 1e-5
