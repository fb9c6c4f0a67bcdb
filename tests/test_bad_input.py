"""Bad input gets one clear message, exit status 2, and leaves an existing output folder as it was."""
import hashlib
import logging
import os
import shutil

import pytest
import torch
from yacs.config import CfgNode

import main_finetune
from data import DataError
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


# --- configs that were accepted and crashed (or trained NaN) later: now one line, before anything is written
@pytest.mark.parametrize('content, opts, message', [
    ('', ('SAVE_FREQ', '0'), 'SAVE_FREQ = 0 must be at least 1'),
    # the schedule is checked at its largest drop over the whole run, after rounding (17 tokens here)
    ('', ('TRAIN.PATCH_SCHEDULER.START_PATCH_DROP_RATIO', '1.0'), 'keeps no patch at its largest drop ratio 1 '),
    ('', ('TRAIN.PATCH_SCHEDULER.ROUND_TO', '0.7'), 'keeps no patch at its largest drop ratio 1 (after rounding '
                                                   'to ROUND_TO 0.7; START_PATCH_DROP_RATIO 0.8'),
    # cyclic, 3 steps per epoch: drop 0.93 at step 1, which rounds to 1.0
    ('', ('TRAIN.PATCH_SCHEDULER.END_PATCH_DROP_RATIO', '1.0'), 'keeps no patch at its largest drop ratio 1 '),
    ('TRAIN:\n  BASE_LR: .nan\n', (), 'TRAIN.BASE_LR = nan must be a finite number'),
    ('TRAIN:\n  WEIGHT_DECAY: .inf\n', (), 'TRAIN.WEIGHT_DECAY = inf must be a finite number'),
    ('', ('TRAIN.BASE_LR', '-0.001'), 'TRAIN.BASE_LR = -0.001 must be at least 0'),
    ('', ('TRAIN.WARMUP_LR', '-0.5'), 'TRAIN.WARMUP_LR = -0.5 must be at least 0'),
    ('TRAIN:\n  MIN_LR: -1.0e-6\n', (), 'TRAIN.MIN_LR = -1e-06 must be at least 0'),
    ('', ('DATA.IMG_SIZE', '0'), 'DATA.IMG_SIZE = 0 must be at least 1'),
    ('', ('MODEL.VIT.PATCH_SIZE', '0'), 'MODEL.VIT.PATCH_SIZE = 0 must be at least 1'),
    ('', ('MODEL.VIT.PATCH_SIZE', '32'), 'MODEL.VIT.PATCH_SIZE 32 is larger than DATA.IMG_SIZE 16'),
    ('', ('SEED', '-1'), 'SEED = -1 must be at least 0'),
    ('', ('MODEL.VIT.DEPTH', '0'), 'MODEL.VIT.DEPTH = 0 must be at least 1'),
    ('', ('TRAIN.EPOCHS', '-1'), 'TRAIN.EPOCHS = -1 must be at least 0'),
    ('', ('TRAIN.ACCUMULATION_STEPS', '-1'), 'TRAIN.ACCUMULATION_STEPS = -1 must be at least 0'),
])
def test_config_errors_found_by_the_hostile_test(existing_run, tmp_path, capsys, content, opts, message):
    test_config_errors(existing_run, tmp_path, capsys, content, opts, message)


def test_a_base_chain_that_cycles_is_one_line(existing_run, tmp_path, capsys):
    _, data, out = existing_run
    selfish = tmp_path / 'self.yaml'
    selfish.write_text("BASE: ['self.yaml']\n")
    expect_error(capsys, out, args_for(data, out, cfg=selfish), 'its BASE: files form a cycle', 'self.yaml -> ')
    (tmp_path / 'a.yaml').write_text("BASE: ['b.yaml']\n")
    (tmp_path / 'b.yaml').write_text(f"BASE: ['{os.path.abspath(CFG)}', 'a.yaml']\n")
    expect_error(capsys, out, args_for(data, out, cfg=tmp_path / 'a.yaml'), 'a.yaml -> ', 'b.yaml -> ', 'a.yaml')
    # a diamond is no cycle: two files that share a base
    (tmp_path / 'c.yaml').write_text(f"BASE: ['{os.path.abspath(CFG)}']\n")
    (tmp_path / 'd.yaml').write_text(f"BASE: ['{os.path.abspath(CFG)}', 'c.yaml']\n")
    from argparse import Namespace

    from config import get_config
    assert get_config(Namespace(cfg=str(tmp_path / 'd.yaml'), opts=None)).TAG == 'magnitude_cyclic'
    # viz/patch_schedules.py reads configs the same way: one line too
    import subprocess
    import sys
    result = subprocess.run([sys.executable, 'viz/patch_schedules.py', '--configs', str(selfish), '--out',
                             str(tmp_path / 'x.png')], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.startswith('error: ') and result.stderr.count('\n') == 1
    assert 'form a cycle' in result.stderr


@pytest.mark.parametrize('content, messages', [
    (b'TRAIN:\n  EPOCHS: 3\nTRAIN:\n  BASE_LR: 0.001\n', ("key 'TRAIN' is given twice, at lines 2 and 4",)),
    ('TAG: caf\u00e9\n'.encode('latin-1'), ('is not UTF-8 text: byte 0xe9 at offset',)),
    (b'TRAIN:\n  # EPOCHS: 3\n', ("section 'TRAIN' has no keys",)),
    (b"BASE: ['no_such_base.yaml']\n", ('no_such_base.yaml', 'in the BASE: list of')),
])
def test_config_files_that_escaped_the_one_line_rule(existing_run, tmp_path, capsys, content, messages):
    _, data, out = existing_run
    cfg = tmp_path / 'bad.yaml'
    base = b'' if content.startswith(b'BASE') else f"BASE: ['{os.path.abspath(CFG)}']\n".encode()
    cfg.write_bytes(base + content)
    expect_error(capsys, out, args_for(data, out, cfg=cfg), str(cfg), *messages)


@pytest.mark.parametrize('dataset', ['digits', 'fashion_mnist'])
def test_a_data_path_the_demo_dataset_would_ignore_is_refused(existing_run, tmp_path, capsys, dataset):
    """The demo configs set DATA.DATASET digits: a --data-path of the user's own images must not be
    ignored (nor receive a digits export); the user is told to set DATA.DATASET imagenet."""
    _, _, out = existing_run
    mine = make_image_folder(tmp_path / 'my_images', num_train=4, num_val=2)
    before = sorted(os.path.relpath(os.path.join(d, n), mine) for d, ds, fs in os.walk(mine) for n in ds + fs)
    expect_error(capsys, out, args_for(mine, out, 'DATA.DATASET', dataset), f"'{mine}'",
                 'set DATA.DATASET imagenet')
    after = sorted(os.path.relpath(os.path.join(d, n), mine) for d, ds, fs in os.walk(mine) for n in ds + fs)
    assert after == before  # nothing written into the user's folder
    a_file = tmp_path / 'a_file'
    a_file.write_text('x')
    expect_error(capsys, out, args_for(a_file, out, 'DATA.DATASET', dataset), 'is not a folder',
                 'set DATA.DATASET imagenet')


def test_a_new_or_empty_data_path_receives_the_demo_export(tmp_path):
    """A --data-path that does not exist yet, or an empty folder, holds nothing the export would ignore:
    it is where the digits are exported."""
    from data.build import _check_export_folder

    (tmp_path / 'empty').mkdir()
    for path in (tmp_path / 'nowhere', tmp_path / 'empty'):
        _check_export_folder(str(path), 'digits')  # no error
        assert not (tmp_path / 'nowhere').exists()  # the check itself writes nothing
    # another process's export in progress (two ranks starting at once): a folder of exports too
    (tmp_path / 'empty' / '.digits_32.tmp.host.123.abc').mkdir()
    _check_export_folder(str(tmp_path / 'empty'), 'digits')
    (tmp_path / 'empty' / 'photo.jpg').write_bytes(b'x')
    (tmp_path / 'empty' / '.digits_32.tmp.host.123.abc').rmdir()
    with pytest.raises(DataError, match='holds no digits export'):
        _check_export_folder(str(tmp_path / 'empty'), 'digits')


@pytest.mark.parametrize('tag', ['../../../../escaped', '/abs/escaped', '../../escaped'])  # '../x' stays inside
def test_a_tag_may_not_leave_the_output_folder(existing_run, tmp_path, capsys, tag):
    _, data, out = existing_run
    expect_error(capsys, out, args_for(data, out, extra=['--tag', tag]), 'lies outside the output folder',
                 f"TAG '{tag}'")
    assert not os.path.exists('/abs') and not (tmp_path.parent / 'escaped').exists()


@pytest.mark.parametrize('steps', ['0', '-2'])
def test_accumulation_steps_below_one(existing_run, capsys, steps):
    _, data, out = existing_run
    expect_error(capsys, out, args_for(data, out, extra=['--accumulation-steps', steps]),
                 f'--accumulation-steps {steps} must be at least 1')


def test_world_size_without_a_launcher(existing_run, capsys, monkeypatch):
    _, data, out = existing_run
    for name in ('RANK', 'MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('WORLD_SIZE', '2')
    expect_error(capsys, out, args_for(data, out), 'WORLD_SIZE=2 is set in the environment but RANK, MASTER_ADDR, '
                 'MASTER_PORT is not', 'torchrun')
    monkeypatch.setenv('WORLD_SIZE', 'two')
    expect_error(capsys, out, args_for(data, out), "WORLD_SIZE='two' is not an integer")


def test_an_empty_class_folder_is_refused_hidden_folders_are_skipped(existing_run, tmp_path, capsys, caplog):
    _, data, out = existing_run
    empty_class = tmp_path / 'empty_class'
    shutil.copytree(data, empty_class)
    for split in ('train', 'val'):
        os.makedirs(empty_class / split / 'd')
    expect_error(capsys, out, args_for(empty_class, out), 'class folder(s) without images', 'train', ': d;')
    hidden = tmp_path / 'hidden'
    shutil.copytree(data, hidden)
    for split in ('train', 'val'):  # a notebook's checkpoints folder, with an image in it
        os.makedirs(hidden / split / '.ipynb_checkpoints')
        shutil.copy(hidden / split / 'a' / '0.png', hidden / split / '.ipynb_checkpoints' / '0-checkpoint.png')
    shutil.copy(hidden / 'train' / 'a' / '0.png', hidden / 'train' / 'a' / '._0.png')  # hidden file: not an image
    capsys.readouterr()
    with caplog.at_level(logging.WARNING, logger='data.folder'):
        assert main_finetune.run(args_for(hidden, tmp_path / 'out', 'TRAIN.EPOCHS', '1')) == 0
    assert '3 classes, 12 training / 6 validation images' in capsys.readouterr().out
    for split in ('train', 'val'):
        assert f'skipping hidden folder(s) in {hidden / split} (not classes): .ipynb_checkpoints' in caplog.text


def test_warnings_for_settings_probably_not_meant(existing_run, tmp_path, capsys):
    _, data, _ = existing_run
    assert main_finetune.run(args_for(data, tmp_path / 'a', 'TRAIN.EPOCHS', '0')) == 0
    assert 'TRAIN.EPOCHS is 0: nothing will be trained' in capsys.readouterr().out
    assert main_finetune.run(args_for(data, tmp_path / 'b', 'TRAIN.EPOCHS', '1', 'TRAIN.WARMUP_EPOCHS', '1')) == 0
    assert 'TRAIN.WARMUP_EPOCHS 1 is at least TRAIN.EPOCHS 1: the learning rate never leaves' in capsys.readouterr().out
    if not torch.cuda.is_available():
        assert main_finetune.run(args_for(data, tmp_path / 'c', 'TRAIN.EPOCHS', '1',
                                          extra=['--amp-opt-level', 'O1'])) == 0
        assert '--amp-opt-level O1 has no effect without CUDA: this run computes in fp32' in capsys.readouterr().out


def test_eval_pretrained_without_a_classifier_is_refused(existing_run, tmp_path, capsys):
    _, data, out = existing_run
    trained = torch.load(out / 'demo' / 'magnitude_cyclic' / 'checkpoint.pth', weights_only=True)['model']
    headless = write_checkpoint(tmp_path / 'headless.pth',
                                {'model': {k: v for k, v in trained.items() if not k.startswith('head.')}})
    expect_error(capsys, out, args_for(data, out, extra=['--eval', '--pretrained', headless]),
                 f"--eval --pretrained '{headless}': the checkpoint lacks head.", 'untrained')
    full = write_checkpoint(tmp_path / 'full.pth', {'model': trained})
    assert main_finetune.run(args_for(data, out, extra=['--eval', '--pretrained', full])) == 0
    assert 'Accuracy of the network on the 6 test images' in capsys.readouterr().out


@pytest.mark.parametrize('command', [
    ['main_finetune.py', '--cfg', 'no_such.yaml'],
    ['main_simmim.py', '--cfg', 'no_such.yaml'],
    ['sweep_drop.py', '--cfg', 'no_such.yaml'],
    ['image_patches.py', '--cfg', 'no_such.yaml'],
    ['patch_distribution.py', '--cfg', 'no_such.yaml'],
    ['-m', 'data.verify', '--data-path', 'no_such_folder'],
])
def test_the_error_line_is_the_only_output_no_timm_warning_above_it(command):
    """timm warns at import (torch.jit.interface is deprecated); a user's one-line error must stand alone."""
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONWARNINGS'}
    result = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=120, env=env,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith('error: ') and result.stderr.count('\n') == 1, result.stderr


# --- issue 24: a resume does not drop what the user asked for in silence ---------------------------------
def dataset_like(data, root, rename=None, add=None):
    """A copy of `data` with class folder rename[0] renamed rename[1], or class `add` added (a's images)."""
    shutil.copytree(data, root)
    for split in ('train', 'val'):
        if rename:
            os.rename(root / split / rename[0], root / split / rename[1])
        if add:
            shutil.copytree(root / split / 'a', root / split / add)
    return root


def test_resume_on_other_classes_is_refused(existing_run, tmp_path, capsys):
    _, data, out = existing_run
    checkpoint = out / 'demo' / 'magnitude_cyclic' / 'checkpoint.pth'
    assert torch.load(checkpoint, weights_only=True)['classes'] == ['a', 'b', 'c']  # the dataset's, in order
    again = args_for(data, out, 'TRAIN.EPOCHS', '1')  # the finished run's own command: it would resume
    renamed = dataset_like(data, tmp_path / 'renamed', rename=('c', 'z'))
    expect_error(capsys, out, [*again[:2], '--data-path', str(renamed), *again[4:]],
                 f"checkpoint '{checkpoint}' was trained on other classes than the dataset's: "
                 "class 2 is 'c' in the checkpoint, 'z' now (not in the checkpoint: z; not in the dataset: c)",
                 'another folder (--tag or --output)', 'TRAIN.ALLOW_CONFIG_CHANGE True')
    more = dataset_like(data, tmp_path / 'more', add='d')  # caught before the classifier's shape is compared
    expect_error(capsys, out, [*again[:2], '--data-path', str(more), *again[4:]],
                 f"checkpoint '{checkpoint}' was trained on other classes than the dataset's: 3 classes in the "
                 'checkpoint, 4 now (not in the checkpoint: d)', 'another folder (--tag or --output)')
    assert 'ALLOW_CONFIG_CHANGE' not in capsys.readouterr().err  # no way to continue a classifier of another size


def test_renamed_classes_on_purpose_and_old_checkpoints_resume(existing_run, tmp_path, capsys):
    _, data, out = existing_run
    run_dir = tmp_path / 'out' / 'demo' / 'magnitude_cyclic'
    shutil.copytree(out / 'demo' / 'magnitude_cyclic', run_dir)
    renamed = dataset_like(data, tmp_path / 'renamed', rename=('c', 'z'))
    assert main_finetune.run(args_for(renamed, tmp_path / 'out', 'TRAIN.EPOCHS', '1',
                                      'TRAIN.ALLOW_CONFIG_CHANGE', 'True')) == 0
    assert "other classes than the dataset's: class 2 is 'c' in the checkpoint, 'z' now" in capsys.readouterr().out
    state = torch.load(run_dir / 'checkpoint.pth', weights_only=True)
    del state['classes']  # written before the classes were stored
    torch.save(state, run_dir / 'checkpoint.pth')
    assert main_finetune.run(args_for(renamed, tmp_path / 'out', 'TRAIN.EPOCHS', '1')) == 0
    assert 'holds no class names (an older checkpoint): the classes are not compared' in capsys.readouterr().out


def test_a_pretrained_that_the_resume_replaces_gets_a_warning(existing_run, tmp_path, capsys):
    _, data, out = existing_run
    run_dir = tmp_path / 'out' / 'demo' / 'magnitude_cyclic'
    shutil.copytree(out / 'demo' / 'magnitude_cyclic', run_dir)
    weights = write_checkpoint(tmp_path / 'w.pth', {'model': torch.load(run_dir / 'checkpoint.pth',
                                                                        weights_only=True)['model']})
    resume_with_weights = args_for(data, tmp_path / 'out', 'TRAIN.EPOCHS', '1', extra=['--pretrained', weights])
    assert main_finetune.run(resume_with_weights) == 0
    log = capsys.readouterr().out
    expected = (f"--pretrained '{weights}' is not used: the run resumes from '{run_dir / 'checkpoint.pth'}', which "
                "started from random weights; to fine-tune from it, start a new run (--tag or --output)")
    assert expected in log and expected in (run_dir / 'log_rank0.txt').read_text()
    assert 'WARNING' in next(line for line in log.splitlines() if expected in line)
    # the same --pretrained the run started from: resuming is what the command means, no warning
    state = torch.load(run_dir / 'checkpoint.pth', weights_only=True)
    state['config'] = state['config'].replace("PRETRAINED: ''", f"PRETRAINED: {weights}")
    assert f'PRETRAINED: {weights}' in state['config']
    torch.save(state, run_dir / 'checkpoint.pth')
    assert main_finetune.run(resume_with_weights) == 0
    assert 'is not used' not in capsys.readouterr().out


def test_a_simmim_pretraining_checkpoint_to_resume_or_eval_is_one_line(existing_run, tmp_path, capsys):
    _, data, out = existing_run
    trained = torch.load(out / 'demo' / 'magnitude_cyclic' / 'checkpoint.pth', weights_only=True)['model']
    encoder = {f'encoder.{k}': v for k, v in trained.items() if not k.startswith(('head.', 'fc_norm.'))}
    encoder['encoder.mask_token'] = torch.zeros(1, 1, 16)
    encoder['decoder.0.weight'] = torch.zeros(48, 16, 1, 1)
    path = write_checkpoint(tmp_path / 'simmim.pth', {'model': encoder, 'optimizer': {}, 'epoch': 99})
    for extra in (['--resume', path], ['--resume', path, '--eval']):
        expect_error(capsys, out, args_for(data, out, extra=extra), f"checkpoint '{path}' is a pre-training checkpoint",
                     'pass it to main_finetune.py as --pretrained')
