"""configs/deit-s/, configs/mae/ and configs/timm/: the recipes they state, and they train end to end."""
import argparse
import json
import os

import pytest
import safetensors.torch
import timm
import torch

import main_finetune
from config import get_config
from models import build_model
from tests.helpers import make_image_folder
from tests.test_bad_input import expect_error
from tests.test_finetune import TINY

DEIT = 'configs/deit-s/magnitude_cyclic_80_0.yaml'
MAE = 'configs/mae/vit-b/magnitude_cyclic_80_0.yaml'


def load(cfg, opts=()):
    return get_config(argparse.Namespace(cfg=cfg, opts=list(opts)))


def num_params(model):
    return sum(p.numel() for p in model.parameters())


def timm_num_params(name, **kwargs):
    with torch.device('meta'):  # shapes only: a full-size timm model without initialising its weights
        return num_params(timm.create_model(name, **kwargs))


def test_deit_s_recipe():
    c = load(DEIT)
    vit = c.MODEL.VIT
    assert (vit.EMBED_DIM, vit.DEPTH, vit.NUM_HEADS, vit.FULL_QKV_BIAS, vit.INIT_VALUES) == (384, 12, 6, True, 0.0)
    assert vit.USE_APE and vit.USE_RPB and not vit.USE_MEAN_POOLING
    assert (c.TRAIN.EPOCHS, c.DATA.BATCH_SIZE, c.TRAIN.BASE_LR, c.TRAIN.WARMUP_EPOCHS) == (300, 256, 5e-4, 5)
    assert (c.AUG.NUM_REPEATS, c.MODEL.DROP_PATH_RATE, c.TRAIN.WEIGHT_DECAY, c.TRAIN.CLIP_GRAD) == (3, 0.1, 0.05, 0.0)
    ps = c.TRAIN.PATCH_SCHEDULER
    assert (ps.NAME, ps.START_PATCH_DROP_RATIO, ps.END_PATCH_DROP_RATIO) == ('cyclic', 0.8, -0.1)
    assert ps.COOLDOWN_EPOCHS == 10 and c.TRAIN.PATCH_DROP_FUNC == 'magnitude'
    assert c.MODEL.TYPE == 'pss_vit' and load('configs/deit-s/baseline.yaml').TRAIN.PATCH_SCHEDULER.NAME == 'none'
    # without the relative bias it is exactly timm's DeiT-S; the bias adds 12 tables of 27^2 + 3 rows x 6 heads
    assert num_params(build_model(c)) == timm_num_params('deit_small_patch16_224') + 12 * (27 * 27 + 3) * 6


def test_mae_vit_b_recipe():
    c = load(MAE)
    assert (c.TRAIN.EPOCHS, c.TRAIN.WARMUP_EPOCHS, c.TRAIN.LAYER_DECAY, c.MODEL.DROP_PATH_RATE) == (100, 5, 0.65, 0.1)
    # MAE's lr = 5e-4 x batch / 256 is ours, BASE_LR x batch / 512, at BASE_LR 1e-3
    assert c.TRAIN.BASE_LR * 1024 / 512 == pytest.approx(5e-4 * 1024 / 256)
    assert c.MODEL.VIT.USE_MEAN_POOLING and not c.MODEL.VIT.USE_RPB
    assert num_params(build_model(c)) == timm_num_params('vit_base_patch16_224', global_pool='avg')
    assert num_params(build_model(load('configs/timm/vit_base_patch16_224.yaml'))) == \
        timm_num_params('vit_base_patch16_224')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('data'), num_train=8, num_val=2)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def run_args(cfg, data, out, *opts, extra=()):
    return ['--cfg', cfg, '--data-path', data, '--output', str(out), '--batch-size', '4', *extra,
            '--opts', *TINY, *opts]


def test_deit_s_trains_with_repeated_augmentation_and_a_cooldown(data, tmp_path):
    # 24 images, batch 4: 6 steps an epoch; the second of 2 epochs is the cooldown at rho = 1
    args = run_args(DEIT, data, tmp_path, 'TRAIN.EPOCHS', '2', 'TRAIN.PATCH_SCHEDULER.COOLDOWN_EPOCHS', '1')
    assert main_finetune.run(args) == 0
    train = read_jsonl(tmp_path / 'pss' / 'deit/deit-s-224/magnitude_cyclic_80_0' / 'train_log.json')
    assert len(train) == 12
    assert all(r['patch_drop_ratio'] == 0.0 for r in train[6:]) and max(r['patch_drop_ratio'] for r in train[:6]) > 0


def test_mae_fine_tunes_from_an_mae_pretraining_in_safetensors(data, tmp_path, capsys):
    mae = timm.create_model('vit_base_patch16_224', pretrained=False, img_size=16, patch_size=4, embed_dim=16,
                            depth=2, num_heads=2, num_classes=0)
    state = {k: v.contiguous() for k, v in mae.state_dict().items()}
    state['mask_token'] = mae.cls_token.detach().clone()
    state['decoder_embed.weight'] = mae.blocks[0].attn.proj.weight.detach().clone()
    path = str(tmp_path / 'mae_pretrain.safetensors')
    safetensors.torch.save_file(state, path)
    args = run_args(MAE, data, tmp_path / 'out', 'TRAIN.EPOCHS', '1', extra=['--pretrained', path])
    assert main_finetune.run(args) == 0
    run_dir = tmp_path / 'out' / 'pss' / 'mae/vit-b/magnitude_cyclic_80_0'
    assert len(read_jsonl(run_dir / 'train_log.json')) == 6
    captured = capsys.readouterr()
    log = captured.out + captured.err  # logged before the run folder (and its log file) is written
    assert 'recognised the format: MAE pre-training' in log
    assert 'dropped 2 keys not used for fine-tuning: decoder_embed.weight, mask_token' in log


@pytest.mark.parametrize('cfg', ['configs/deit-s/baseline.yaml', 'configs/mae/vit-b/baseline.yaml',
                                 'configs/timm/deit_small_patch16_224.yaml'])
def test_the_other_configs_train_a_few_steps(data, tmp_path, cfg):
    assert main_finetune.run(run_args(cfg, data, tmp_path, 'TRAIN.EPOCHS', '1')) == 0
    run_dir = os.path.join(tmp_path, 'pss', load(cfg).TAG)
    assert len(read_jsonl(os.path.join(run_dir, 'train_log.json'))) == 6


def test_another_family_or_an_unknown_file_stops_before_anything_is_written(data, tmp_path, capsys):
    beit = timm.create_model('beit_base_patch16_224', pretrained=False, img_size=16, patch_size=4, embed_dim=16,
                             depth=2, num_heads=2, num_classes=3)
    path = str(tmp_path / 'beit.safetensors')
    safetensors.torch.save_file({k: v.contiguous() for k, v in beit.state_dict().items()}, path)
    out = tmp_path / 'out'
    out.mkdir()
    expect_error(capsys, out, run_args(DEIT, data, out, extra=['--pretrained', path]),
                 f"checkpoint '{path}' is timm beit (q and v biases, layer scale", 'MODEL.VIT.FULL_QKV_BIAS False')
    resnet = str(tmp_path / 'resnet.pth')
    torch.save({'model': timm.create_model('resnet18', pretrained=False).state_dict()}, resnet)
    expect_error(capsys, out, run_args(DEIT, data, out, extra=['--pretrained', resnet]),
                 f"checkpoint '{resnet}' is not a ViT checkpoint", 'its first keys: conv1.weight, bn1.weight')
    assert os.listdir(out) == []


def test_settings_that_cannot_work_are_refused():
    from config import ConfigError
    with pytest.raises(ConfigError, match='FULL_QKV_BIAS True needs MODEL.VIT.QKV_BIAS True'):
        load(DEIT, ['MODEL.VIT.QKV_BIAS', 'False'])
    with pytest.raises(ConfigError, match='AUG.NUM_REPEATS = 0 must be at least 1'):
        load(DEIT, ['AUG.NUM_REPEATS', '0'])
