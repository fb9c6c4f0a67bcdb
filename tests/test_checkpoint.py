import logging
import os

import pytest
import torch
from yacs.config import CfgNode

from checkpoint import (CheckpointError, check_state_dict, find_checkpoints, load_checkpoint_file, prune_checkpoints,
                        save_checkpoint)
from pretrained import load_pretrained, resize_pos_embed, resize_rel_pos_bias_table
from tests.helpers import tiny_model

LOGGER = logging.getLogger('test_checkpoint')
SHARED = ['MODEL.VIT.USE_RPB', 'False', 'MODEL.VIT.USE_SHARED_RPB', 'True']


class Opaque:
    """A custom class: pickled by reference, so weights_only loading must refuse it."""

    def __init__(self):
        self.value = 3


# --- files ---------------------------------------------------------------------------------------
def test_atomic_save_leaves_no_temp_file_and_loads_weights_only(tmp_path):
    path = tmp_path / 'checkpoint.pth'
    state = {'model': tiny_model().state_dict(), 'epoch': 3, 'config': 'MODEL:\n  TYPE: pss_vit\n',
             'max_accuracy': 12.5, 'rng': torch.get_rng_state()}
    save_checkpoint(state, str(path))
    assert os.listdir(tmp_path) == ['checkpoint.pth']
    loaded = torch.load(path, weights_only=True)
    assert loaded['epoch'] == 3 and loaded['config'] == state['config']
    assert torch.equal(loaded['model']['head.weight'], state['model']['head.weight'])
    assert load_checkpoint_file(str(path))['max_accuracy'] == 12.5


def test_failed_save_keeps_the_previous_file(tmp_path):
    path = tmp_path / 'checkpoint.pth'
    save_checkpoint({'epoch': 1}, str(path))
    with pytest.raises(Exception):  # noqa: B017  (whatever pickle raises for a lambda)
        save_checkpoint({'epoch': 2, 'bad': lambda: None}, str(path))
    assert os.listdir(tmp_path) == ['checkpoint.pth']
    assert load_checkpoint_file(str(path)) == {'epoch': 1}


def test_missing_truncated_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match='nowhere.pth.*not found'):
        load_checkpoint_file(str(tmp_path / 'nowhere.pth'))
    good = tmp_path / 'good.pth'
    save_checkpoint({'model': {'w': torch.randn(1000)}}, str(good))
    data = good.read_bytes()
    for name, content in [('truncated.pth', data[:len(data) // 2]), ('empty.pth', b''),
                          ('text.pth', b'this is not a checkpoint')]:
        (tmp_path / name).write_bytes(content)
        for trusted in (False, True):
            with pytest.raises(CheckpointError, match=f"'{tmp_path / name}' cannot be read: .+"):
                load_checkpoint_file(str(tmp_path / name), trusted=trusted)


@pytest.mark.parametrize('payload', [CfgNode({'MODEL': CfgNode({'TYPE': 'pss_vit'})}), Opaque()],
                         ids=['yacs_cfgnode', 'custom_class'])
def test_pickled_objects_need_the_trust_flag(tmp_path, payload):
    path = tmp_path / 'release.pth'
    torch.save({'model': {'w': torch.ones(2)}, 'config': payload}, path)
    with pytest.raises(CheckpointError, match="release.pth' pickles Python objects.*--trust-checkpoint"):
        load_checkpoint_file(str(path))
    loaded = load_checkpoint_file(str(path), trusted=True)
    assert torch.equal(loaded['model']['w'], torch.ones(2)) and type(loaded['config']) is type(payload)


def test_find_checkpoints_order_and_ignored_files(tmp_path):
    assert find_checkpoints(str(tmp_path / 'missing')) == []
    for name in ['ckpt_epoch_2.pth', 'ckpt_epoch_10.pth', 'checkpoint.pth', 'ckpt_epoch_9.pth',
                 '.checkpoint.pth.123.abcd.tmp', '.ckpt_epoch_11.pth.5.ef01.tmp', 'ckpt_epoch_x.pth',
                 'config.yaml', 'ckpt_epoch_3.pth.bak']:
        (tmp_path / name).write_bytes(b'')
    assert find_checkpoints(str(tmp_path)) == [str(tmp_path / n) for n in
                                               ['checkpoint.pth', 'ckpt_epoch_10.pth', 'ckpt_epoch_9.pth',
                                                'ckpt_epoch_2.pth']]


def test_a_crash_during_save_leaves_nothing_that_is_picked_up(tmp_path):
    save_checkpoint({'epoch': 1}, str(tmp_path / 'ckpt_epoch_1.pth'))
    (tmp_path / '.checkpoint.pth.999.0000.tmp').write_bytes(b'PK\x03\x04 half written')
    assert find_checkpoints(str(tmp_path)) == [str(tmp_path / 'ckpt_epoch_1.pth')]


def test_prune_checkpoints(tmp_path):
    for epoch in (0, 5, 10, 15, 20):
        (tmp_path / f'ckpt_epoch_{epoch}.pth').write_bytes(b'')
    (tmp_path / 'checkpoint.pth').write_bytes(b'')
    assert prune_checkpoints(str(tmp_path), 0) == []
    assert len(os.listdir(tmp_path)) == 6
    removed = prune_checkpoints(str(tmp_path), 2)
    assert sorted(removed) == sorted(str(tmp_path / f'ckpt_epoch_{e}.pth') for e in (0, 5, 10))
    assert sorted(os.listdir(tmp_path)) == ['checkpoint.pth', 'ckpt_epoch_15.pth', 'ckpt_epoch_20.pth']


# --- state dicts ---------------------------------------------------------------------------------
def test_check_state_dict_accepts_its_own_and_ignores_index_buffers():
    model = tiny_model()
    state = model.state_dict()
    check_state_dict(model, state, 'same.pth')
    check_state_dict(model, {k: v for k, v in state.items() if not k.endswith('relative_position_index')}, 'x.pth')


def test_check_state_dict_lists_the_differences():
    model = tiny_model()
    other = tiny_model(opts=['MODEL.NUM_CLASSES', '7', 'MODEL.VIT.USE_APE', 'True'])
    state = other.state_dict()
    del state['blocks.1.mlp.fc2.bias']
    with pytest.raises(CheckpointError) as info:
        check_state_dict(model, state, 'other.pth')
    message = str(info.value)
    assert "'other.pth'" in message
    assert '1 missing keys: blocks.1.mlp.fc2.bias' in message
    assert '1 unexpected keys: pos_embed' in message
    assert '2 shape mismatches: head.weight (7, 32) in the checkpoint, (5, 32) in the model' in message


def test_check_state_dict_truncates_long_lists():
    model = tiny_model()
    wide = tiny_model(opts=['MODEL.VIT.EMBED_DIM', '48'])
    with pytest.raises(CheckpointError, match=r'shape mismatches: .*\(\+\d+ more\)'):
        check_state_dict(model, wide.state_dict(), 'wide.pth')


# --- resizing ------------------------------------------------------------------------------------
def test_resize_rel_pos_bias_table():
    torch.manual_seed(0)
    table = torch.randn(7 * 7 + 3, 2)  # a 4x4 grid, 2 heads
    same = resize_rel_pos_bias_table(table, (4, 4), (4, 4))
    assert torch.allclose(same, table, atol=1e-6)

    bigger = resize_rel_pos_bias_table(table, (4, 4), (7, 7))
    assert bigger.shape == (13 * 13 + 3, 2)
    assert torch.equal(bigger[-3:], table[-3:])  # cls rows kept
    # geometric placement: offsets 0 and +-1 in each direction keep their values exactly
    src, dst = table[:-3].reshape(7, 7, 2), bigger[:-3].reshape(13, 13, 2)
    assert torch.allclose(dst[5:8, 5:8], src[2:5, 2:5], atol=1e-5)
    smaller = resize_rel_pos_bias_table(table, (4, 4), (3, 3))
    assert smaller.shape == (5 * 5 + 3, 2)

    constant = torch.full((5 * 5 + 3, 3), 0.25)
    assert torch.allclose(resize_rel_pos_bias_table(constant, (3, 3), (6, 6)), torch.tensor(0.25), atol=1e-6)


def test_resize_pos_embed():
    pos_embed = torch.randn(1, 1 + 9, 8)
    resized = resize_pos_embed(pos_embed, (3, 3), (4, 4))
    assert resized.shape == (1, 1 + 16, 8) and torch.equal(resized[:, 0], pos_embed[:, 0])
    assert torch.allclose(resize_pos_embed(pos_embed, (3, 3), (3, 3)), pos_embed, atol=1e-6)


# --- pretrained ----------------------------------------------------------------------------------
def simmim_checkpoint(path, model):
    """Save `model` as SimMIM pre-training does: encoder.-prefixed, with a decoder and no head."""
    state = {f'encoder.{k}': v for k, v in model.state_dict().items() if not k.startswith(('head.', 'fc_norm.'))}
    state['encoder.mask_token'] = torch.zeros(1, 1, 32)
    state['decoder.0.weight'] = torch.randn(192, 32, 1, 1)
    torch.save({'model': state, 'epoch': 99}, path)


def test_pretrained_simmim_with_a_shared_table(tmp_path):
    source = tiny_model(opts=SHARED, seed=1)
    path = tmp_path / 'simmim.pth'
    simmim_checkpoint(path, source)
    model = tiny_model(seed=2)
    head_before = model.head.weight.clone()
    missing, unexpected = load_pretrained(str(path), model, LOGGER)

    shared = source.rel_pos_bias.relative_position_bias_table
    for block in model.blocks:
        assert torch.equal(block.attn.relative_position_bias_table, shared)
    assert torch.equal(model.blocks[1].mlp.fc1.weight, source.blocks[1].mlp.fc1.weight)
    assert torch.equal(model.patch_embed.proj.weight, source.patch_embed.proj.weight)
    assert torch.equal(model.head.weight, head_before)  # the classifier stays initialised
    assert sorted(missing) == ['fc_norm.bias', 'fc_norm.weight', 'head.bias', 'head.weight']
    assert unexpected == ['mask_token']
    assert all(torch.equal(b.attn.relative_position_index, tiny_model().blocks[0].attn.relative_position_index)
               for b in model.blocks)


def test_pretrained_resizes_tables_and_pos_embed_from_another_grid(tmp_path, caplog):
    opts = ['MODEL.VIT.USE_APE', 'True']
    source = tiny_model(opts=opts + ['DATA.IMG_SIZE', '24'], seed=1)  # 3x3 grid
    path = tmp_path / 'small.pth'
    torch.save(source.state_dict(), path)  # a bare state dict
    model = tiny_model(opts=opts, seed=2)  # 4x4 grid
    with caplog.at_level(logging.INFO, logger='test_checkpoint'):
        missing, unexpected = load_pretrained(str(path), model, LOGGER)
    assert missing == [] and unexpected == []
    assert 'resized from a 3x3 to a 4x4 patch grid' in caplog.text
    expected = resize_rel_pos_bias_table(source.blocks[0].attn.relative_position_bias_table, (3, 3), (4, 4))
    assert torch.equal(model.blocks[0].attn.relative_position_bias_table, expected)
    assert torch.equal(model.pos_embed, resize_pos_embed(source.pos_embed, (3, 3), (4, 4)))
    assert torch.equal(model.head.weight, source.head.weight)  # same number of classes: loaded


def test_pretrained_with_another_number_of_classes_keeps_the_head(tmp_path):
    source = tiny_model(opts=['MODEL.NUM_CLASSES', '1000'], seed=1)
    path = tmp_path / 'finetuned.pth'
    torch.save({'model': source.state_dict(), 'config': 'MODEL: {}'}, path)
    model = tiny_model(seed=2)
    head_before = model.head.weight.clone()
    missing, _ = load_pretrained(str(path), model, LOGGER)
    assert sorted(missing) == ['head.bias', 'head.weight']
    assert torch.equal(model.head.weight, head_before)
    assert torch.equal(model.fc_norm.weight, source.fc_norm.weight)


def test_pretrained_fails_on_shapes_it_cannot_resize(tmp_path):
    path = tmp_path / 'wide.pth'
    torch.save({'model': tiny_model(opts=['MODEL.VIT.EMBED_DIM', '48']).state_dict()}, path)
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"wide.pth' does not fit the model: \d+ shape mismatches: "):
        load_pretrained(str(path), model, LOGGER)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing half-loaded


def test_pretrained_that_is_not_a_state_dict(tmp_path):
    path = tmp_path / 'odd.pth'
    torch.save({'epoch': 3, 'weights': [1, 2]}, path)
    with pytest.raises(CheckpointError, match="odd.pth' holds no model weights"):
        load_pretrained(str(path), tiny_model(), LOGGER)


# --- issue 24: small things that were tracebacks or misread ----------------------------------------
def test_pretrained_into_and_from_a_one_patch_grid(tmp_path):
    """IMG_SIZE == PATCH_SIZE: a 1x1 grid, whose only patch-to-patch offset is 0."""
    source = tiny_model(seed=1)  # 4x4 grid: 7 x 7 offsets + 3 CLS rows per table
    torch.save({'model': source.state_dict()}, tmp_path / 'grid4.pth')
    one = tiny_model(opts=['DATA.IMG_SIZE', '8'], seed=2)
    assert tuple(one.patch_embed.grid_size) == (1, 1)
    assert load_pretrained(str(tmp_path / 'grid4.pth'), one, LOGGER) == ([], [])
    for block, src in zip(one.blocks, source.blocks):
        table = src.attn.relative_position_bias_table  # offset (0, 0) is row 3 * 7 + 3
        assert torch.equal(block.attn.relative_position_bias_table, torch.cat([table[24:25], table[-3:]]))
    assert torch.equal(one.blocks[1].mlp.fc1.weight, source.blocks[1].mlp.fc1.weight)

    # and back: offset 0 is all a 1x1 grid knows, so every offset of the 4x4 grid gets its bias
    torch.save({'model': one.state_dict()}, tmp_path / 'grid1.pth')
    four = tiny_model(seed=3)
    assert load_pretrained(str(tmp_path / 'grid1.pth'), four, LOGGER) == ([], [])
    for block, src in zip(four.blocks, one.blocks):
        table = src.attn.relative_position_bias_table
        assert torch.equal(block.attn.relative_position_bias_table, torch.cat([table[:1].expand(49, -1), table[1:]]))


def test_a_ddp_module_prefix_is_stripped(tmp_path):
    """A state dict saved from a DistributedDataParallel wrapper: every key under 'module.'."""
    from checkpoint import load_model_weights

    source = tiny_model(seed=1)
    prefixed = {f'module.{k}': v for k, v in source.state_dict().items()}
    for name, saved in (('wrapped.pth', {'model': prefixed, 'epoch': 3}), ('bare.pth', prefixed)):
        torch.save(saved, tmp_path / name)
        for load in (lambda p, m: load_pretrained(p, m, LOGGER), load_model_weights):
            model = tiny_model(seed=2)
            load(str(tmp_path / name), model)
            assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items()), name


def test_a_simmim_pretraining_checkpoint_to_resume_or_eval_says_use_pretrained(tmp_path):
    """--eval / sweep_drop.py (load_model_weights) and --resume (check_state_dict on the raw keys)."""
    from checkpoint import load_model_weights, read_model_weights

    path = tmp_path / 'simmim.pth'
    encoder_opts = SHARED + ['MODEL.NUM_CLASSES', '0', 'MODEL.VIT.USE_MEAN_POOLING', 'False']  # as SimMIM's
    simmim_checkpoint(path, tiny_model(opts=encoder_opts, seed=1))
    expected = (f"checkpoint '{path}' is a pre-training checkpoint (encoder weights with a mask_token, no "
                'classifier), not a trained model of this config: to fine-tune from it, pass it to '
                'main_finetune.py as --pretrained')
    model = tiny_model(opts=SHARED, seed=2)
    with pytest.raises(CheckpointError) as error:
        load_model_weights(str(path), model)
    assert str(error.value) == expected
    with pytest.raises(CheckpointError) as error:
        check_state_dict(model, torch.load(path, weights_only=True)['model'], str(path))
    assert str(error.value) == expected
    # export.py still reads the encoder of one into a headless model (read_model_weights, then load)
    headless = tiny_model(opts=encoder_opts, seed=2)
    encoder = {k: v for k, v in read_model_weights(str(path)).items() if k != 'mask_token'}
    load_model_weights(str(path), headless, state_dict=encoder)
    assert torch.equal(headless.blocks[1].mlp.fc2.weight, encoder['blocks.1.mlp.fc2.weight'])


@pytest.mark.parametrize('name', ['weights.SAFETENSORS', 'weights.SafeTensors'])
def test_safetensors_suffix_in_any_case(tmp_path, name):
    import safetensors.torch

    source = tiny_model(seed=1)
    safetensors.torch.save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / name))
    assert load_checkpoint_file(str(tmp_path / name)).keys() == source.state_dict().keys()
    model = tiny_model(seed=2)
    assert load_pretrained(str(tmp_path / name), model, LOGGER) == ([], [])
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())
