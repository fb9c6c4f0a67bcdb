"""Bad input gets one clear message, exit status 2, and leaves an existing output folder as it was."""
import hashlib
import os
import shutil

import pytest
import torch
from yacs.config import CfgNode

import main_finetune
from tests.helpers import make_image_folder
from tests.test_finetune import TINY

CFG = 'configs/demo/magnitude_cyclic.yaml'


@pytest.fixture(scope='module')
def existing_run(tmp_path_factory):
    """A finished one-epoch run whose folder the bad commands must not touch."""
    root = tmp_path_factory.mktemp('run')
    data = make_image_folder(root / 'data', num_train=4, num_val=2)
    out = root / 'out'
    args = ['--cfg', CFG, '--data-path', data, '--output', str(out), '--batch-size', '4',
            '--opts', *TINY, 'TRAIN.EPOCHS', '1']
    assert main_finetune.run(args) == 0
    return root, data, out


def snapshot(folder):
    """Every file under `folder` with its bytes' hash and modification time."""
    result = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, 'rb') as f:
                result[path] = (hashlib.sha256(f.read()).hexdigest(), os.stat(path).st_mtime_ns)
    return result


def expect_error(capsys, out, args, *messages):
    before = snapshot(out)
    assert main_finetune.run(args) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1, err  # one message, no traceback
    for message in messages:
        assert message in err, err
    assert snapshot(out) == before


def args_for(data, out, *opts, extra=(), cfg=CFG):
    return ['--cfg', str(cfg), '--data-path', str(data), '--output', str(out), '--batch-size', '4', *extra,
            '--opts', *TINY, 'TRAIN.EPOCHS', '2', *opts]


@pytest.mark.parametrize('content, opts, message', [
    (None, (), 'config file not found'),
    ('MODEL: [unclosed\n', (), 'is not valid YAML'),
    ('TRAIN:\n  EPOCH: 3\n', (), "unknown config key 'TRAIN.EPOCH' (did you mean 'TRAIN.EPOCHS'?)"),
    ('', ('TRAIN.EPOCHS', 'many'), 'Type mismatch'),
    ('', ('TRAIN.PATCH_SCHEDULER.NAME', 'triangle'), "'triangle' is not known; valid values: none, linear"),
    ('', ('TRAIN.PATCH_DROP_FUNC', 'entropy'), "'entropy' is not known; valid values: magnitude"),
    ('', ('TRAIN.PATCH_SCHEDULER.START_PATCH_DROP_RATIO', '1.5'), 'outside [-1, 1]'),
    ('', ('TRAIN.PATCH_SCHEDULER.START_PATCH_DROP_RATIO', '1.0', 'TRAIN.PATCH_SCHEDULER.END_PATCH_DROP_RATIO',
          '1.0'), 'drops every token'),
])
def test_config_errors(existing_run, tmp_path, capsys, content, opts, message):
    _, data, out = existing_run
    cfg = tmp_path / 'bad.yaml'
    if content is not None:
        cfg.write_text(f"BASE: ['{os.path.abspath(CFG)}']\n" + content)
    expect_error(capsys, out, args_for(data, out, *opts, cfg=cfg), message)


def test_data_path_errors(existing_run, tmp_path, capsys):
    _, data, out = existing_run
    expect_error(capsys, out, args_for(tmp_path / 'nowhere', out), 'does not exist', 'nowhere')

    no_val = tmp_path / 'no_val'
    shutil.copytree(os.path.join(data, 'train'), no_val / 'train')
    expect_error(capsys, out, args_for(no_val, out), "no 'val/' folder")

    empty = tmp_path / 'empty'
    for split in ('train', 'val'):
        for name in ('a', 'b', 'c'):
            os.makedirs(empty / split / name)
    expect_error(capsys, out, args_for(empty, out), 'has no images')

    other_classes = tmp_path / 'other'
    shutil.copytree(data, other_classes)
    os.rename(other_classes / 'val' / 'c', other_classes / 'val' / 'z')
    expect_error(capsys, out, args_for(other_classes, out), 'class folders', 'differ')

    broken = tmp_path / 'broken'
    shutil.copytree(data, broken)
    (broken / 'train' / 'a' / '0.png').write_bytes(b'not an image at all')
    expect_error(capsys, out, args_for(broken, out), 'cannot be decoded', os.path.join('a', '0.png'))

    # 12 training images: a batch of 16 with drop_last would give zero iterations per epoch
    expect_error(capsys, out, args_for(data, out, 'DATA.BATCH_SIZE', '16', 'AUG.MIXUP', '0.0',
                                       'AUG.CUTMIX', '0.0') + ['--batch-size', '16'], 'larger than the 12 training')


def test_skip_bad_images_trains_without_them(existing_run, tmp_path, capsys):
    _, data, _ = existing_run
    broken = tmp_path / 'broken'
    shutil.copytree(data, broken)
    (broken / 'train' / 'a' / '0.png').write_bytes(b'not an image at all')
    args = args_for(broken, tmp_path / 'out', 'DATA.SKIP_BAD_IMAGES', 'True', 'TRAIN.EPOCHS', '1')
    assert main_finetune.run(args) == 0


def write_checkpoint(path, state):
    torch.save(state, path)
    return str(path)


@pytest.mark.parametrize('flag', ['--pretrained', '--resume'])
def test_checkpoint_errors(existing_run, tmp_path, capsys, flag):
    _, data, out = existing_run
    missing = str(tmp_path / 'missing.pth')
    expect_error(capsys, out, args_for(data, out, extra=[flag, missing]), missing, 'not found')

    garbage = tmp_path / 'garbage.pth'
    garbage.write_bytes(b'\x00' * 100)
    expect_error(capsys, out, args_for(data, out, extra=[flag, str(garbage)]), str(garbage))

    # another architecture: a wider, deeper ViT
    from argparse import Namespace

    from config import get_config
    from models import build_model
    other = build_model(get_config(Namespace(cfg=CFG, opts=TINY + ['MODEL.VIT.EMBED_DIM', '24',
                                                                  'MODEL.VIT.DEPTH', '3'])), num_classes=3)
    path = write_checkpoint(tmp_path / 'other.pth', {'model': other.state_dict()})
    expect_error(capsys, out, args_for(data, out, extra=[flag, path]), path, 'shape mismatches')

    # an old release that pickles its yacs config: refused unless trusted
    model = build_model(get_config(Namespace(cfg=CFG, opts=TINY)), num_classes=3)
    pickled = write_checkpoint(tmp_path / 'old.pth', {'model': model.state_dict(), 'config': CfgNode({'A': 1})})
    expect_error(capsys, out, args_for(data, out, extra=[flag, pickled]), pickled, '--trust-checkpoint')

    if flag == '--resume':  # a training state must say which epoch it ended
        no_epoch = write_checkpoint(tmp_path / 'no_epoch.pth', {'model': model.state_dict(), 'optimizer': {}})
        expect_error(capsys, out, args_for(data, out, extra=[flag, no_epoch]), no_epoch, "no integer 'epoch'")


def test_unwritable_output_folder(existing_run, tmp_path, capsys):
    _, data, out = existing_run
    blocker = tmp_path / 'a_file'
    blocker.write_text('x')
    expect_error(capsys, out, args_for(data, blocker / 'sub'), 'cannot be created', str(blocker))
