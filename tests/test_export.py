"""export.py: a checkpoint becomes timm's model (same logits at rho = 1 within 1e-5 in fp32), a Hub
config.json that timm reads back, or a plain state dict that --pretrained reads back.

Small models (32 px, patch 8, width 32, 2 blocks) of each family stand for the full-size ones; every
parameter is random, the key bias of the original's DeiT-S included (zeros would hide a dropped part).
"""
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import export
from pretrained import load_pretrained
from data.build import build_transform
from models import build_model
from tests.helpers import make_image_folder, tiny_config
from tests.test_finetune import ROOT

NUM_CLASSES = 5
CASES = {  # name: (config, extra opts, --arch, the architecture written)
    'simmim_beit': ('configs/vit-b/magnitude_cyclic_80_0.yaml', [], None, 'beit_base_patch16_224'),
    'timm_vit': ('configs/timm/vit_base_patch16_224.yaml', [], None, 'vit_base_patch16_224'),
    'deit_small': ('configs/timm/deit_small_patch16_224.yaml', [], 'deit_small_patch16_224', 'deit_small_patch16_224'),
    'mae_mean_pooling': ('configs/mae/vit-b/baseline.yaml', [], None, 'vit_base_patch16_224'),
    # the original's DeiT-S: absolute and relative position terms and a learned key bias
    'original_deit_s': ('configs/deit-s/baseline.yaml', [], None, 'beit_base_patch16_224'),
    # q and v biases and layer scale in timm's VisionTransformer: qkv.bias with a zero key part, ls1 / ls2
    'simmim_ape_as_vit': ('configs/vit-b/magnitude_cyclic_80_0.yaml', ['MODEL.VIT.USE_RPB', 'False',
                                                                        'MODEL.VIT.USE_APE', 'True'],
                          'vit_base_patch16_224', 'vit_base_patch16_224'),
    # neither position term: timm's Beit (its VisionTransformer would leave CLS out)
    'no_position_terms': ('configs/timm/vit_base_patch16_224.yaml', ['MODEL.VIT.USE_APE', 'False'], None,
                          'beit_base_patch16_224'),
    'shared_and_own_rpb': ('configs/vit-b/magnitude_cyclic_80_0.yaml', ['MODEL.VIT.USE_SHARED_RPB', 'True'], None,
                           'beit_base_patch16_224'),
    'shared_rpb_only': ('configs/vit-b/magnitude_cyclic_80_0.yaml', ['MODEL.VIT.USE_SHARED_RPB', 'True',
                                                                     'MODEL.VIT.USE_RPB', 'False'], None,
                        'beit_base_patch16_224'),
}
KEY_BIAS_LEFT_OUT = ('original_deit_s', 'no_position_terms')
SHARED_TABLE_SPREAD = ('shared_and_own_rpb', 'shared_rpb_only')


def trained_checkpoint(tmp_path, cfg, opts=(), num_classes=NUM_CLASSES):
    """A checkpoint of `cfg`'s model at small width, every parameter random; (model, --resume, --cfg)."""
    config = tiny_config(cfg, opts=list(opts) + ['MODEL.NUM_CLASSES', str(num_classes)])
    torch.manual_seed(0)
    model = build_model(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path, cfg_path = tmp_path / 'checkpoint.pth', tmp_path / 'config.yaml'
    torch.save({'model': model.state_dict(), 'config': config.dump(), 'epoch': 3}, path)
    cfg_path.write_text(config.dump())
    return model, str(path), str(cfg_path)


def run_export(resume, cfg, out, *extra):
    return export.main(['--resume', resume, '--cfg', cfg, '--out', str(out), *extra])


def logits(model, images):
    with torch.no_grad():
        return model.eval()(images)


@pytest.mark.parametrize('case', list(CASES))
def test_timm_loads_the_export_with_our_logits(tmp_path, case, capsys):
    cfg, opts, arch, expected_arch = CASES[case]
    model, resume, cfg_path = trained_checkpoint(tmp_path, cfg, opts)
    out = tmp_path / 'export'
    assert run_export(resume, cfg_path, out, *(['--arch', arch] if arch else [])) == 0
    assert sorted(os.listdir(out)) == ['config.json', 'model.safetensors']
    printed = capsys.readouterr().out
    assert ('key bias (MODEL.VIT.FULL_QKV_BIAS) is left out' in printed) == (case in KEY_BIAS_LEFT_OUT)
    assert ("added into every block's table" in printed) == (case in SHARED_TABLE_SPREAD)

    hub = json.loads((out / 'config.json').read_text())
    assert hub['architecture'] == expected_arch and hub['num_classes'] == NUM_CLASSES
    pre = hub['pretrained_cfg']
    assert (pre['input_size'], pre['interpolation'], pre['crop_pct'], pre['crop_mode']) == \
        ([3, 32, 32], 'bicubic', 0.875, 'center')
    assert (pre['mean'], pre['std']) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert 'label_names' not in hub  # the config names no dataset folder

    torch.manual_seed(1)
    images = torch.randn(4, 3, 32, 32)
    model.set_patch_drop_ratio(0.0)
    ours = logits(model, images)
    from_dir = timm.create_model(f'local-dir:{out}', pretrained=True)
    overlay = timm.create_model(expected_arch, pretrained=True, num_classes=NUM_CLASSES, **hub['model_args'],
                                pretrained_cfg_overlay=dict(file=str(out / 'model.safetensors'),
                                                            num_classes=NUM_CLASSES))
    for timm_model in (from_dir, overlay):
        assert type(timm_model).__name__ == ('Beit' if 'beit' in expected_arch else 'VisionTransformer')
        assert (logits(timm_model, images) - ours).abs().max().item() <= 1e-5
    assert ours.std() > 0.1  # logits of a network, not of zeros


@pytest.mark.parametrize('opts', [[], ['TEST.CROP', 'False', 'DATA.INTERPOLATION', 'bilinear'],
                                  ['DATA.INTERPOLATION', 'random', 'DATA.IMG_SIZE', '48']])
def test_timm_preprocesses_as_our_validation(tmp_path, opts):
    """timm's eval transform from the exported pretrained_cfg gives our validation tensors."""
    _, resume, cfg_path = trained_checkpoint(tmp_path, CASES['timm_vit'][0], opts)
    assert run_export(resume, cfg_path, tmp_path / 'export') == 0
    timm_model = timm.create_model(f'local-dir:{tmp_path / "export"}', pretrained=True)
    theirs = timm.data.create_transform(**timm.data.resolve_data_config({}, model=timm_model))
    ours = build_transform(False, tiny_config(CASES['timm_vit'][0], opts=opts))
    rng = np.random.default_rng(0)
    for shape in ((70, 90, 3), (61, 47, 3)):  # landscape, portrait, neither a multiple of the size
        image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
        assert torch.equal(theirs(image), ours(image))


def test_label_names_are_the_class_folders(tmp_path):
    data = make_image_folder(tmp_path / 'data', classes=('cat', 'dog', 'eel'), num_train=1, num_val=1)
    _, resume, cfg_path = trained_checkpoint(tmp_path, CASES['timm_vit'][0], num_classes=3)
    assert run_export(resume, cfg_path, tmp_path / 'export', '--data-path', data) == 0
    hub = json.loads((tmp_path / 'export' / 'config.json').read_text())
    assert hub['label_names'] == ['cat', 'dog', 'eel']
    timm_model = timm.create_model(f'local-dir:{tmp_path / "export"}', pretrained=True)
    assert timm_model.pretrained_cfg['label_names'] == ['cat', 'dog', 'eel']


def test_label_names_from_the_runs_own_config(tmp_path):
    """A run's config.yaml names its data path: the class folders come from there when it exists,
    and are left out (no error) when it does not, as on another machine."""
    data = make_image_folder(tmp_path / 'data', classes=('x', 'y', 'z'), num_train=1, num_val=1)
    _, resume, cfg_path = trained_checkpoint(tmp_path, CASES['timm_vit'][0], ['DATA.DATA_PATH', data], num_classes=3)
    assert run_export(resume, cfg_path, tmp_path / 'here') == 0
    assert json.loads((tmp_path / 'here' / 'config.json').read_text())['label_names'] == ['x', 'y', 'z']
    os.rename(data, tmp_path / 'moved')
    assert run_export(resume, cfg_path, tmp_path / 'elsewhere') == 0
    assert 'label_names' not in json.loads((tmp_path / 'elsewhere' / 'config.json').read_text())


def refused(capsys, tmp_path, argv, message):
    assert export.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and message in err and err.count('\n') == 1, err
    assert not (tmp_path / 'export').exists()
    assert [name for name in os.listdir(tmp_path) if name.endswith('.tmp')] == []  # no temporary folder left


def test_an_architecture_timm_cannot_build_this_model_with_is_refused(tmp_path, capsys):
    _, resume, cfg_path = trained_checkpoint(tmp_path, CASES['original_deit_s'][0])
    base = ['--resume', resume, '--cfg', cfg_path, '--out', str(tmp_path / 'export')]
    refused(capsys, tmp_path, base + ['--arch', 'deit_small_patch16_224'],
            "timm's VisionTransformer (deit_small_patch16_224) has no relative position bias, which this model has "
            '(MODEL.VIT.USE_RPB): use a timm beit model, the default here; nothing written')
    refused(capsys, tmp_path, base + ['--arch', 'resnet18'], "timm's 'resnet18' is a ResNet")
    _, resume, cfg_path = trained_checkpoint(tmp_path, CASES['timm_vit'][0], ['MODEL.VIT.USE_APE', 'False'])
    refused(capsys, tmp_path, ['--resume', resume, '--cfg', cfg_path, '--out', str(tmp_path / 'export'),
                               '--arch', 'vit_base_patch16_224'],
            "timm's VisionTransformer (vit_base_patch16_224) without an absolute position embedding leaves the CLS "
            'token out, and this model (MODEL.VIT.USE_APE False) keeps it')
    refused(capsys, tmp_path, base + ['--arch', 'deit_small_distilled_patch16_224'], 'is a VisionTransformerDistilled')
    refused(capsys, tmp_path, base + ['--arch', 'no_such_vit'], "timm has no model 'no_such_vit'")


def test_other_logits_are_refused_and_nothing_is_written(tmp_path, capsys, monkeypatch):
    """The last check before writing: a conversion that changed the network (here the classifier
    bias, as a part timm lacked would) is caught by the logits."""
    _, resume, cfg_path = trained_checkpoint(tmp_path, CASES['simmim_beit'][0])
    to_timm = export.to_timm

    def changed(*args):
        state, notes = to_timm(*args)
        return dict(state, **{'head.bias': state['head.bias'] + 0.01}), notes

    monkeypatch.setattr(export, 'to_timm', changed)
    refused(capsys, tmp_path, ['--resume', resume, '--cfg', cfg_path, '--out', str(tmp_path / 'export')],
            "timm's Beit (beit_base_patch16_224) with these weights computes other logits (largest difference "
            '1.00e-02)')


def test_a_folder_with_other_weights_is_refused(tmp_path, capsys):
    _, resume, cfg_path = trained_checkpoint(tmp_path, CASES['timm_vit'][0])
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'pytorch_model.bin').write_bytes(b'')
    assert export.main(['--resume', resume, '--cfg', cfg_path, '--out', str(out)]) == 2
    assert "already holds pytorch_model.bin; timm's local-dir: reads every weight file" in capsys.readouterr().err
    assert os.listdir(out) == ['pytorch_model.bin']


def test_weight_files_are_found_in_any_case(tmp_path):
    """MODEL.SAFETENSORS is model.safetensors on a case-insensitive file system, and a weight file anyway."""
    for name in ('OLD.PTH', 'Weights.SafeTensors', 'pytorch_model.BIN'):
        out = tmp_path / name.split('.')[0]
        out.mkdir()
        (out / name).write_bytes(b'')
        with pytest.raises(export.ExportError, match=f'already holds {name};'):
            export.check_out_folder(str(out), export.TIMM_WEIGHTS)
    export.check_out_folder(str(tmp_path / 'nowhere'), export.TIMM_WEIGHTS)  # a new folder: fine


def test_bad_input_is_one_line(tmp_path, capsys):
    _, resume, cfg_path = trained_checkpoint(tmp_path, CASES['timm_vit'][0])
    (tmp_path / 'other').mkdir()
    _, other, _ = trained_checkpoint(tmp_path / 'other', CASES['simmim_beit'][0])  # another architecture
    cases = [(['--resume', str(tmp_path / 'missing.pth'), '--cfg', cfg_path], 'not found'),
             (['--resume', resume, '--cfg', 'missing.yaml'], "config file not found: 'missing.yaml'"),
             (['--resume', other, '--cfg', cfg_path], 'does not fit the model'),
             (['--resume', resume, '--cfg', cfg_path, '--data-path', str(tmp_path / 'nowhere')], 'does not exist')]
    for argv, message in cases:
        refused(capsys, tmp_path, argv + ['--out', str(tmp_path / 'export')], message)
    data = make_image_folder(tmp_path / 'data', classes=('a', 'b'), num_train=1, num_val=1)
    refused(capsys, tmp_path, ['--resume', resume, '--cfg', cfg_path, '--data-path', data, '--out',
                               str(tmp_path / 'export')], f"'{data}' has 2 class folders, the checkpoint 5 classes")


@pytest.mark.parametrize('case', ['original_deit_s', 'simmim_beit', 'deit_small'])
def test_the_plain_state_dict_reads_back_through_pretrained(tmp_path, case, capsys, caplog):
    cfg, opts, _, _ = CASES[case]
    model, resume, cfg_path = trained_checkpoint(tmp_path, cfg, opts)
    assert run_export(resume, cfg_path, tmp_path / 'plain', '--state-dict') == 0
    path = tmp_path / 'plain' / 'state_dict.safetensors'
    assert os.listdir(tmp_path / 'plain') == ['state_dict.safetensors']
    assert f'--pretrained {path}' in capsys.readouterr().out
    fresh = build_model(tiny_config(cfg, opts=list(opts) + ['MODEL.NUM_CLASSES', str(NUM_CLASSES)]))
    with caplog.at_level(logging.INFO):
        missing, unexpected = load_pretrained(str(path), fresh, logging.getLogger('test_export'))
    assert missing == [] and unexpected == []
    assert 'recognised the format: PSS state dict (export.py --state-dict)' in caplog.text
    ours, theirs = model.state_dict(), fresh.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    from safetensors import safe_open
    with safe_open(str(path), 'pt') as f:
        assert f.metadata()['format'] == 'pss' and 'MODEL:' in f.metadata()['config']


def test_help_names_every_option():
    result = subprocess.run([sys.executable, 'export.py', '--help'], cwd=ROOT, capture_output=True, text=True,
                            env=dict(os.environ, PYTHONWARNINGS='ignore'))
    assert result.returncode == 0
    for flag in ('--resume', '--cfg', '--opts', '--out', '--data-path', '--arch', '--state-dict', '--trust-checkpoint'):
        assert flag in result.stdout, flag
