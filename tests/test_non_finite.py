"""A diverged run is never checkpointed, and non-finite weights are never loaded (issue 24, items 1-2).

The step's one read ([loss, grad norm]) stops the run at the step that diverged; every checkpoint
write checks the weights and optimizer state first; auto-resume skips a checkpoint that holds NaN or
inf; --pretrained, --resume and --eval refuse one with exit status 2.
"""
import logging
import math
import os
import re

import pytest
import torch
import torch.nn.functional as F

import main_finetune
import main_simmim
from checkpoint import CheckpointError, check_finite, load_model_weights, non_finite_tensors, optimizer_tensors
from fast_step import TrainStep
from lr_scheduler import build_scheduler
from optimizer import build_optimizer
from pretrained import load_pretrained
from tests.helpers import make_image_folder, tiny_config, tiny_model
from tests.test_bad_input import args_for, expect_error, snapshot
from tests.test_finetune import TINY, read_jsonl
from training import NonFiniteLossError, TrainingRun, find_resume_checkpoint, is_divergence

LOGGER = logging.getLogger('test_non_finite')
STEPS = 4


# --- finding the tensors --------------------------------------------------------------------------
def test_non_finite_tensors_names_floating_tensors_with_nan_or_inf_in_order():
    named = [('a', torch.ones(3)), ('b', torch.tensor([1.0, float('nan')])), ('index', torch.arange(4)),
             ('c', torch.tensor([float('-inf')], dtype=torch.float64)), ('empty', torch.ones(0)),
             ('half', torch.tensor([float('inf')], dtype=torch.float16)), ('step', 3.0)]
    assert non_finite_tensors(named) == ['b', 'c', 'half']
    assert non_finite_tensors([('a', torch.ones(3))]) == []


def test_optimizer_tensors_are_named_after_their_parameters():
    model = tiny_model()
    config = tiny_config()
    optimizer = build_optimizer(config, model)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    state = optimizer.state_dict()
    names = [name for name, _ in optimizer_tensors(state)]
    params = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(names) == 3 * len(params)  # step, exp_avg, exp_avg_sq of each parameter
    assert {f'optimizer[{n}].exp_avg' for n in params} <= set(names)
    # without recorded names (an older or foreign optimizer state) the ids stand in
    for group in state['param_groups']:
        del group['param_names']
    assert 'optimizer[0].exp_avg' in [name for name, _ in optimizer_tensors(state)]


def test_check_finite_lists_the_first_ten_and_counts_the_rest():
    state = {f'blocks.{i}.w': torch.full((2,), float('nan')) for i in range(12)}
    state['ok'] = torch.zeros(2)
    with pytest.raises(CheckpointError) as error:
        check_finite('ckpt.pth', state)
    message = str(error.value)
    assert message.startswith("checkpoint 'ckpt.pth' holds NaN or infinite values in 12 tensors: blocks.0.w, ")
    assert 'blocks.9.w (+2 more)' in message and 'blocks.10.w' not in message and 'ok' not in message
    check_finite('ckpt.pth', {'ok': torch.zeros(2)})  # finite: no error


# --- the step -------------------------------------------------------------------------------------
@pytest.mark.parametrize('loss, grad_norm, scaler_on, diverged', [
    (1.0, 2.0, False, False),
    (float('nan'), 2.0, False, True),
    (1.0, float('nan'), False, True),
    (1.0, float('inf'), False, True),
    (1.0, float('inf'), True, False),  # fp16: the scaler skipped the step and lowers its scale
    (1.0, float('nan'), True, False),
    (float('inf'), float('nan'), True, True),  # a forward that overflowed: no scale undoes it
])
def test_is_divergence(loss, grad_norm, scaler_on, diverged):
    assert is_divergence(loss, grad_norm, scaler_on) == diverged


def make_run(tmp_path, scaler_on=False, clip=0.0, every=0):
    """A TrainingRun of a tiny model over STEPS random batches, with a multiplier on one gradient."""
    config = tiny_config(opts=['TRAIN.CHECKPOINT_EVERY_STEPS', str(every), 'MODEL.DROP_PATH_RATE', '0.0',
                               'TRAIN.EPOCHS', '2', 'PRINT_FREQ', '100'], output=str(tmp_path))
    model = tiny_model(opts=['MODEL.DROP_PATH_RATE', '0.0'])
    optimizer = build_optimizer(config, model)
    lr_scheduler = build_scheduler(config, optimizer, STEPS)
    scaler = torch.amp.GradScaler('cpu', enabled=scaler_on, init_scale=2.0 ** 10)
    run = TrainingRun(config, model, optimizer, lr_scheduler, scaler, STEPS, 1)
    os.makedirs(config.OUTPUT)
    run.logger = LOGGER
    poison = torch.ones(())
    model.head.weight.register_hook(lambda grad: grad * poison)
    step = TrainStep(model, F.cross_entropy, optimizer, scaler, clip)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 5, (4,), generator=g))
               for _ in range(STEPS)]
    return run, step, batches, poison


class NotStopped:
    def __call__(self):
        return False


def poisoned_at(batches, index, poison, value):
    """The batches, with `poison` set to `value` for the step of batch `index` only."""
    for i, batch in enumerate(batches):
        poison.fill_(value if i == index else 1.0)
        yield batch


@pytest.mark.parametrize('clip', [0.0, 5.0])
def test_a_nan_gradient_with_a_finite_loss_stops_at_that_step_and_writes_no_checkpoint(tmp_path, clip):
    run, step, batches, poison = make_run(tmp_path, clip=clip, every=1)
    with pytest.raises(NonFiniteLossError) as error:
        run.train_epoch(step, poisoned_at(batches, 2, poison, float('nan')), 0, 0, NotStopped())
    message = str(error.value)
    checkpoint = os.path.join(run.config.OUTPUT, 'checkpoint.pth')
    assert message.startswith('training diverged at epoch 0, iteration 2 of 4 (global 2), rho ')
    assert ': loss 1.' in message and 'grad norm nan' in message  # the loss was finite
    assert f"the newest checkpoint, '{checkpoint}' (epoch 0, step 2 of 4), is left as it was" in message
    assert '\n' not in message
    state = torch.load(checkpoint, weights_only=True)
    assert (state['epoch'], state['step_in_epoch']) == (0, 2)  # the diverged step 3 is in no checkpoint
    assert not non_finite_tensors(list(state['model'].items()) + list(optimizer_tensors(state['optimizer'])))
    assert sorted(os.listdir(run.config.OUTPUT)) == ['checkpoint.pth']


def test_a_diverged_first_step_says_no_checkpoint_was_written(tmp_path):
    run, step, batches, poison = make_run(tmp_path)
    with pytest.raises(NonFiniteLossError, match=r'grad norm inf; no checkpoint of this run was written'):
        run.train_epoch(step, poisoned_at(batches, 0, poison, float('inf')), 0, 0, NotStopped())
    assert os.listdir(run.config.OUTPUT) == []


def test_fp16_overflow_is_skipped_not_a_divergence(tmp_path):
    run, step, batches, poison = make_run(tmp_path, scaler_on=True, every=1)
    before_step = []  # the weights before each step

    def loader():
        for i, batch in enumerate(batches):
            before_step.append([p.detach().clone() for p in run.model.parameters()])
            poison.fill_(float('inf') if i == 2 else 1.0)  # step 2's gradients overflow
            yield batch

    assert run.train_epoch(step, loader(), 0, 0, NotStopped()) == STEPS  # the run goes on
    assert run.scaler.get_scale() == 2.0 ** 9  # the overflow halved the scale, once
    assert all(torch.equal(a, b) for a, b in zip(before_step[2], before_step[3]))  # step 2 changed nothing
    assert not all(torch.equal(a, b) for a, b in zip(before_step[1], before_step[2]))  # step 1 trained
    assert all(torch.isfinite(p).all() for p in run.model.parameters())
    state = torch.load(os.path.join(run.config.OUTPUT, 'checkpoint.pth'), weights_only=True)
    assert state['step_in_epoch'] == 3  # every mid-epoch checkpoint was written


def test_weights_that_are_not_finite_are_never_written(tmp_path):
    run, step, batches, _ = make_run(tmp_path)
    assert run.train_epoch(step, batches[:2], 0, 0, NotStopped()) == 2
    run.write_checkpoint(0, 2)
    checkpoint = os.path.join(run.config.OUTPUT, 'checkpoint.pth')
    good = open(checkpoint, 'rb').read()
    with torch.no_grad():
        run.model.blocks[1].attn.proj.weight[0, 0] = float('inf')
    with pytest.raises(NonFiniteLossError) as error:
        run.write_checkpoint(0, 3, epoch_file=True)
    message = str(error.value)
    assert message.startswith('training diverged: at epoch 0, step 3 of 4 the weights hold NaN or infinite '
                              'values in 1 tensor: blocks.1.attn.proj.weight; no checkpoint written, ')
    assert f"the newest checkpoint, '{checkpoint}' (epoch 0, step 2 of 4), is left as it was" in message
    assert open(checkpoint, 'rb').read() == good and sorted(os.listdir(run.config.OUTPUT)) == ['checkpoint.pth']

    with torch.no_grad():
        run.model.blocks[1].attn.proj.weight[0, 0] = 0.0
    run.optimizer.state[run.model.head.bias]['exp_avg_sq'][1] = float('nan')
    with pytest.raises(NonFiniteLossError, match=r'in 1 tensor: optimizer\[head.bias\].exp_avg_sq; '):
        run.write_checkpoint(0, 3)
    assert open(checkpoint, 'rb').read() == good


# --- auto-resume ----------------------------------------------------------------------------------
def resume_config(tmp_path, resume=None):
    return tiny_config(opts=['TRAIN.AUTO_RESUME', 'True'], output=str(tmp_path), resume=resume)


def test_auto_resume_skips_checkpoints_with_nan_and_falls_back_to_a_finite_one(tmp_path, caplog):
    config = resume_config(tmp_path)
    os.makedirs(config.OUTPUT)
    model = tiny_model()
    good = {k: v.clone() for k, v in model.state_dict().items()}
    bad = {k: v.clone() for k, v in good.items()}
    bad['head.bias'][0] = float('nan')
    torch.save({'model': bad}, os.path.join(config.OUTPUT, 'checkpoint.pth'))
    torch.save({'model': bad}, os.path.join(config.OUTPUT, 'ckpt_epoch_2.pth'))
    torch.save({'model': good}, os.path.join(config.OUTPUT, 'ckpt_epoch_1.pth'))
    with caplog.at_level(logging.WARNING):
        path, state = find_resume_checkpoint(config, model, LOGGER)
    assert path == os.path.join(config.OUTPUT, 'ckpt_epoch_1.pth') and torch.equal(state['model']['head.bias'],
                                                                                   good['head.bias'])
    skipped = [r.getMessage() for r in caplog.records if 'NaN or infinite' in r.getMessage()]
    assert skipped == [f"auto-resume: checkpoint '{os.path.join(config.OUTPUT, name)}' holds NaN or infinite "
                       'values in 1 tensor: head.bias; trying the previous checkpoint'
                       for name in ('checkpoint.pth', 'ckpt_epoch_2.pth')]

    # none finite: a fresh start, said so
    os.remove(os.path.join(config.OUTPUT, 'ckpt_epoch_1.pth'))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert find_resume_checkpoint(config, model, LOGGER) == (None, None)
    assert 'auto-resume: no usable checkpoint in' in caplog.text and 'starting from the beginning' in caplog.text

    # an explicit --resume is not skipped but refused
    explicit = resume_config(tmp_path, resume=os.path.join(config.OUTPUT, 'checkpoint.pth'))
    with pytest.raises(CheckpointError, match=r"holds NaN or infinite values in 1 tensor: head.bias$"):
        find_resume_checkpoint(explicit, model, LOGGER)


def test_an_optimizer_state_with_nan_is_refused_on_resume(tmp_path):
    run, step, batches, _ = make_run(tmp_path)
    run.train_epoch(step, batches[:1], 0, 0, NotStopped())
    state = run.state_dict(0, 1)
    state['optimizer']['state'][0]['exp_avg'].view(-1)[0] = float('inf')
    path = str(tmp_path / 'resume.pth')
    torch.save(state, path)
    config = resume_config(tmp_path / 'other', resume=path)
    with pytest.raises(CheckpointError, match=re.escape(f"'{path}' holds NaN or infinite values in 1 tensor: ")
                       + r'optimizer\[[\w.]+\]\.exp_avg$'):
        find_resume_checkpoint(config, run.model, LOGGER)


# --- loading weights ------------------------------------------------------------------------------
def test_load_model_weights_and_load_pretrained_refuse_nan_and_load_nothing(tmp_path):
    source = tiny_model(seed=1).state_dict()
    source['blocks.0.mlp.fc1.weight'][3, 4] = float('nan')
    source['cls_token'][0, 0, 0] = float('-inf')
    path = str(tmp_path / 'nan.pth')
    torch.save({'model': source}, path)
    for load in (lambda m: load_model_weights(path, m), lambda m: load_pretrained(path, m, LOGGER)):
        model = tiny_model()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(CheckpointError, match=re.escape(f"'{path}' holds NaN or infinite values in 2 tensors: "
                                                            'cls_token, blocks.0.mlp.fc1.weight') + '$'):
            load(model)
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing loaded


# --- end to end: the issue's repro and the command-line flags -------------------------------------
@pytest.mark.slow
def test_the_issue_repro_stops_at_the_diverged_step_and_keeps_the_finite_checkpoint(tmp_path, capsys):
    data = make_image_folder(tmp_path / 'data', num_train=6, num_val=2, size=32)
    args = ['--cfg', 'configs/demo/magnitude_cyclic.yaml', '--data-path', data, '--output', str(tmp_path / 'out'),
            '--opts', 'DATA.DATASET', 'imagenet', 'TRAIN.EPOCHS', '6', 'TRAIN.WARMUP_EPOCHS', '0',
            'DATA.BATCH_SIZE', '16', 'TRAIN.BASE_LR', '8.0e+4', 'TRAIN.LR_SCHEDULER.NAME', 'step',
            'TRAIN.LR_SCHEDULER.DECAY_EPOCHS', '100']
    run_dir = tmp_path / 'out' / 'demo' / 'magnitude_cyclic'
    assert main_finetune.run(args) == 1
    err = capsys.readouterr().err
    assert err.startswith('error: training diverged at epoch 1, iteration 0 of 1 (global 1), rho 0.20: loss ')
    assert err.count('\n') == 1, err
    assert f"the newest checkpoint, '{run_dir / 'checkpoint.pth'}' (the end of epoch 0), is left as it was" in err
    state = torch.load(run_dir / 'checkpoint.pth', weights_only=True)
    assert (state['epoch'], state['step_in_epoch']) == (0, 0)
    check_finite('checkpoint.pth', state['model'], state['optimizer'])
    assert [r['epoch'] for r in read_jsonl(run_dir / 'val_log.json')] == [0]  # epoch 1 never validated
    assert all(math.isfinite(r['step_loss']) for r in read_jsonl(run_dir / 'train_log.json'))
    good = (run_dir / 'checkpoint.pth').read_bytes()

    assert main_finetune.run(args) == 1  # again: resumed from the finite checkpoint, the same divergence
    out, err2 = capsys.readouterr()
    assert 'resuming at epoch 1, step 0' in out and err2 == err
    assert (run_dir / 'checkpoint.pth').read_bytes() == good


class NanGradient(torch.autograd.Function):
    """The identity forward, NaN gradients backward: a finite loss whose step diverges."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * float('nan')


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('data'), num_train=8, num_val=[3, 3, 1])


@pytest.mark.slow
def test_checkpoint_every_step_without_clip_writes_no_nan_checkpoint(dataset, tmp_path, monkeypatch, capsys):
    from models.vision_transformer import VisionTransformer
    forward, calls = VisionTransformer.forward, []

    def poisoned(self, x):  # the gradient of the fourth training step is NaN, its loss finite
        out = forward(self, x)
        if self.training:
            calls.append(1)
            if len(calls) == 4:
                out = NanGradient.apply(out)
        return out

    monkeypatch.setattr(VisionTransformer, 'forward', poisoned)
    args = ['--cfg', 'configs/demo/random_cyclic.yaml', '--data-path', dataset, '--output', str(tmp_path),
            '--batch-size', '2', '--opts', *TINY, 'TRAIN.EPOCHS', '2', 'TRAIN.CHECKPOINT_EVERY_STEPS', '1',
            'TRAIN.CLIP_GRAD', '0.0']
    assert main_finetune.run(args) == 1
    err = capsys.readouterr().err
    run_dir = tmp_path / 'demo' / 'random_cyclic'
    assert err.startswith('error: training diverged at epoch 0, iteration 3 of 12 (global 3), rho ')
    assert 'grad norm nan' in err and "(epoch 0, step 3 of 12), is left as it was" in err
    state = torch.load(run_dir / 'checkpoint.pth', weights_only=True)
    assert (state['epoch'], state['step_in_epoch']) == (0, 3)
    check_finite('checkpoint.pth', state['model'], state['optimizer'])
    assert [r['iteration'] for r in read_jsonl(run_dir / 'train_log.json')] == [0, 1, 2]  # not the diverged one


@pytest.mark.slow
def test_auto_resume_of_a_folder_with_nan_checkpoints_ends_as_the_run_did(dataset, tmp_path, capsys):
    args = ['--cfg', 'configs/demo/random_cyclic.yaml', '--data-path', dataset, '--output', str(tmp_path),
            '--batch-size', '4', '--opts', *TINY, 'TRAIN.EPOCHS', '2']
    run_dir = tmp_path / 'demo' / 'random_cyclic'
    assert main_finetune.run(args) == 0
    final = torch.load(run_dir / 'checkpoint.pth', weights_only=True)['model']
    for name in ('checkpoint.pth', 'ckpt_epoch_1.pth'):  # as an older release wrote a diverged run
        state = torch.load(run_dir / name, weights_only=True)
        state['model']['head.weight'][0, 0] = float('nan')
        torch.save(state, run_dir / name)
    capsys.readouterr()
    assert main_finetune.run(args) == 0
    out = capsys.readouterr().out
    assert out.count('holds NaN or infinite values in 1 tensor: head.weight; trying the previous checkpoint') == 2
    assert 'resuming at epoch 1, step 0' in out  # from ckpt_epoch_0.pth
    again = torch.load(run_dir / 'checkpoint.pth', weights_only=True)['model']
    assert all(torch.equal(again[k], final[k]) for k in final)  # bit-identical to the first run
    assert [r['epoch'] for r in read_jsonl(run_dir / 'val_log.json')] == [0, 1]


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
    """A finished one-epoch run (test_bad_input's): its data and output folder."""
    root = tmp_path_factory.mktemp('run')
    data = make_image_folder(root / 'data', num_train=4, num_val=2)
    out = root / 'out'
    assert main_finetune.run(args_for(data, out, 'TRAIN.EPOCHS', '1')) == 0
    return data, out


@pytest.mark.slow
@pytest.mark.parametrize('flags', [['--pretrained'], ['--resume'], ['--eval', '--resume'], ['--eval', '--pretrained']])
def test_nan_weights_are_refused_by_every_loading_flag(finished_run, tmp_path, capsys, flags):
    data, out = finished_run
    trained = torch.load(out / 'demo' / 'magnitude_cyclic' / 'checkpoint.pth', weights_only=True)
    trained['model']['blocks.1.norm1.weight'][2] = float('nan')
    path = str(tmp_path / 'nan.pth')
    torch.save(trained if flags[-1] == '--resume' else {'model': trained['model']}, path)
    expect_error(capsys, out, args_for(data, out, 'TRAIN.ALLOW_CONFIG_CHANGE', 'True', extra=[*flags, path]),
                 f"error: checkpoint '{path}' holds NaN or infinite values in 1 tensor: blocks.1.norm1.weight\n")
    fresh = tmp_path / 'fresh'  # a new output folder: nothing written there either
    assert main_finetune.run(args_for(data, fresh, extra=[*flags, path])) == 2
    assert not any(files for _, _, files in os.walk(fresh))


@pytest.mark.slow
def test_main_simmim_refuses_a_resume_with_nan(tmp_path, capsys):
    from tests.test_main_simmim import args_for as simmim_args
    data = make_image_folder(tmp_path / 'data', num_train=8, num_val=1)
    out = tmp_path / 'out'
    assert main_simmim.run(simmim_args(data, out, 'TRAIN.EPOCHS', '1')) == 0
    run_dir = out / 'simmim_demo' / 'default'
    state = torch.load(run_dir / 'checkpoint.pth', weights_only=True)
    state['model']['decoder.0.weight'].view(-1)[0] = float('inf')
    path = str(tmp_path / 'inf.pth')
    torch.save(state, path)
    capsys.readouterr()
    before = snapshot(out)
    assert main_simmim.run(simmim_args(data, out, 'TRAIN.EPOCHS', '2', extra=['--resume', path])) == 2
    err = capsys.readouterr().err
    assert err == f"error: checkpoint '{path}' holds NaN or infinite values in 1 tensor: decoder.0.weight\n"
    assert snapshot(out) == before


def test_a_non_finite_validation_loss_is_a_warning_in_the_log(finished_run, tmp_path, monkeypatch, capsys):
    # finite weights whose outputs overflow (the issue's repro on other images): the log says so; the
    # run goes on, as an fp16 evaluation can overflow too where training is fine
    data, _ = finished_run
    real = main_finetune.evaluate
    monkeypatch.setattr(main_finetune, 'evaluate', lambda *a, **k: {**real(*a, **k), 'loss': float('nan')})
    assert main_finetune.run(args_for(data, tmp_path, 'TRAIN.EPOCHS', '1')) == 0
    out = capsys.readouterr().out
    assert 'validation loss is nan after epoch 0: the model\'s outputs overflow, a sign that training diverges' in out
