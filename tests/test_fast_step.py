"""The fast training step (fast_step.py) and the per-step host syncs it removes, on the CPU.

CUDA graphs cannot be captured here; what can be run is: the captured body (in-place gradient
zeroing, device learning rates, results into a static tensor) executed eagerly against the plain
step, the fp16 skip inside it, the absence of host syncs in both, a compiled model through the
step, and main_finetune.py with TRAIN.CUDA_GRAPHS on (eager on CPU) against the default loop.
"""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import main_finetune
import launch
from benchmarks.op_count import OpCounter
from fast_step import TrainStep
from tests.helpers import make_image_folder, tiny_model
from tests.test_finetune import ROOT, TINY, read_jsonl
from utils import autocast_dtype

HOST_SYNC_OPS = {'_local_scalar_dense', 'item', 'is_nonzero'}  # .item(), bool(tensor), float(tensor)


def make_step(scaler_on=False, clip=5.0, criterion=F.cross_entropy, seed=0):
    torch.manual_seed(seed)
    model = tiny_model(opts=['MODEL.DROP_PATH_RATE', '0.0'], seed=seed).train()
    groups = [{'params': [p for n, p in model.named_parameters() if n.startswith('blocks.0')], 'lr': 2e-3},
              {'params': [p for n, p in model.named_parameters() if not n.startswith('blocks.0')], 'lr': 1e-3}]
    optimizer = torch.optim.AdamW(groups, weight_decay=0.05, fused=True)
    scaler = torch.amp.GradScaler('cpu', enabled=scaler_on, init_scale=2.0 ** 10)
    return model, optimizer, TrainStep(model, criterion, optimizer, scaler, clip)


def graph_body(step, samples, targets):
    """What a replay computes, run eagerly: the CPU stand-in for a captured graph."""
    step._copy_inputs(samples, targets)
    with step._device_learning_rates():
        step._graphed_step()
    return step.static_stats.clone()


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 5, (4,), generator=g)


@pytest.mark.parametrize('scaler_on', [False, True], ids=['bf16-or-fp32', 'fp16-scaler'])
def test_graph_body_equals_the_eager_step(scaler_on):
    # Tolerance: the captured optimizer reads each group's LR from an fp32 device tensor, the eager
    # one from a Python float, so updates differ by the LR's rounding to fp32 (~1e-8 relative).
    eager_model, _, eager = make_step(scaler_on)
    graph_model, optimizer, graphed = make_step(scaler_on)
    for i, drop in enumerate((0.0, 0.6, 0.0, 0.6)):  # two keys, as the graphs would see them
        for model in (eager_model, graph_model):
            model.set_patch_drop_ratio(drop)
        samples, targets = batch(i)
        torch.testing.assert_close(graph_body(graphed, samples, targets), eager(samples, targets),
                                   rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(eager_model.named_parameters(), graph_model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7, msg=name)
    assert not torch.equal(graph_model.head.bias, tiny_model(seed=0).head.bias)  # it trained
    # the optimizer looks as before: float LRs (for the scheduler and checkpoints), capturable off
    assert [g['lr'] for g in optimizer.param_groups] == [2e-3, 1e-3]
    assert not any(g['capturable'] for g in optimizer.param_groups)


def test_fp16_overflow_skips_the_step_inside_the_graph_body():
    poison = torch.ones(())  # set to inf on the device: no Python branch sees it

    def criterion(logits, targets):
        return F.cross_entropy(logits, targets) * poison

    model, optimizer, step = make_step(scaler_on=True, criterion=criterion)
    samples, targets = batch()
    graph_body(step, samples, targets)  # a normal step creates the optimizer state
    before = [p.detach().clone() for p in model.parameters()]
    steps_before = [s['step'].clone() for s in optimizer.state.values()]
    scale = step.scaler._scale.clone()

    poison.fill_(float('inf'))
    stats = graph_body(step, samples, targets)
    assert not torch.isfinite(stats).all()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # skipped
    assert all(torch.equal(a, s['step']) for a, s in zip(steps_before, optimizer.state.values()))
    assert step.scaler._scale == scale / 2  # backoff

    poison.fill_(1.0)
    assert torch.isfinite(graph_body(step, samples, targets)).all()
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # stepped again


@pytest.mark.parametrize('scaler_on', [False, True])
def test_a_step_makes_no_host_sync(scaler_on):
    # .item() and bool(tensor) dispatch _local_scalar_dense: none in the eager step nor the captured body
    _, _, step = make_step(scaler_on)
    samples, targets = batch()
    step(samples, targets)  # optimizer state exists from here on
    with OpCounter() as eager_ops:
        step(samples, targets)
    with OpCounter() as body_ops:
        graph_body(step, samples, targets)
    assert eager_ops.counts['_fused_adamw_'] >= 1 and body_ops.counts['_fused_adamw_'] >= 1
    assert not HOST_SYNC_OPS & (set(eager_ops.counts) | set(body_ops.counts))


@pytest.mark.parametrize('scaler_on', [False, True], ids=['bf16-or-fp32', 'fp16-scaler'])
def test_the_clip_rescale_is_left_to_the_fused_adamw_unless_fp16(scaler_on):
    # a clip at 1e-3 acts at every step; the fused kernel divides by the clip factor instead of a
    # pass of _foreach_mul_ over the gradients, except behind an enabled GradScaler
    model, optimizer, step = make_step(scaler_on, clip=1e-3)
    reference, _, _ = make_step(scaler_on, clip=1e-3)
    samples, targets = batch()
    with OpCounter() as ops:
        stats = step(samples, targets)
    assert ('_foreach_mul_' in ops.counts) == scaler_on
    assert not hasattr(optimizer, 'grad_scale')
    F.cross_entropy(reference(samples), targets).backward()  # the logged norm: clip_grad_norm_'s
    norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), 1e-3)
    assert stats[1] == norm and norm > 1e-2


@pytest.mark.slow
def test_compiled_model_step_equals_eager_within_tolerance():
    # torch.compile (TRAIN.COMPILE) through the same step: inductor reorders sums, so rtol 1e-4 /
    # atol 1e-5 on the stats and the weights after two steps at rho = 0.4 (one graph).
    eager_model, _, eager = make_step()
    compiled_model, optimizer, _ = make_step()
    compiled = TrainStep(torch.compile(compiled_model, dynamic=False), F.cross_entropy, optimizer,
                         torch.amp.GradScaler('cpu', enabled=False), 5.0)
    for i in range(2):
        for model in (eager_model, compiled_model):
            model.set_patch_drop_ratio(0.6)
        samples, targets = batch(i)
        torch.testing.assert_close(compiled(samples, targets), eager(samples, targets), rtol=1e-4, atol=1e-5)
    for (name, a), b in zip(eager_model.named_parameters(), compiled_model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)


# --- main_finetune.py -----------------------------------------------------------------------------
@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('data'), num_train=8, num_val=[3, 3, 1])


def finetune_args(data, out, *opts):
    # random selection, drop path and Mixup: every random draw must be the same in both runs
    return ['--cfg', 'configs/demo/random_cyclic.yaml', '--data-path', data, '--output', str(out),
            '--batch-size', '2', '--opts', *TINY, 'TRAIN.EPOCHS', '2', 'MODEL.DROP_PATH_RATE', '0.1',
            'AUG.MIXUP', '0.8', 'AUG.CUTMIX', '1.0', 'PRINT_FREQ', '100', *opts]


@pytest.mark.slow
def test_cuda_graphs_key_on_cpu_runs_the_fast_step_eagerly_and_equals_the_default_loop(dataset, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    runs = {}
    for graphs in ('False', 'True'):
        out = tmp_path / graphs
        result = subprocess.run([sys.executable, 'main_finetune.py',
                                 *finetune_args(dataset, out, 'TRAIN.CUDA_GRAPHS', graphs)],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        run_dir = out / 'demo' / 'random_cyclic'
        runs[graphs] = (torch.load(run_dir / 'checkpoint.pth', weights_only=True)['model'],
                        [(r['loss'], r['patch_drop_ratio']) for r in read_jsonl(run_dir / 'train_log.json')],
                        read_jsonl(run_dir / 'val_log.json'), result.stdout)
    assert 'TRAIN.CUDA_GRAPHS needs a CUDA device: on cpu every step runs eagerly' in runs['True'][3]
    assert 'TRAIN.CUDA_GRAPHS' not in runs['False'][3]
    (state_a, train_a, val_a, _), (state_b, train_b, val_b, _) = runs['False'], runs['True']
    assert len(train_a) == 24 and train_a == train_b  # every step's loss, bit for bit
    assert [(r['acc1'], r['loss']) for r in val_a] == [(r['acc1'], r['loss']) for r in val_b]
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


@pytest.mark.parametrize('opts, message', [
    (('TRAIN.ACCUMULATION_STEPS', '2'), 'TRAIN.ACCUMULATION_STEPS is 2: one micro-batch per step only'),
    (('TRAIN.USE_CHECKPOINT', 'True'), 'TRAIN.USE_CHECKPOINT'),
    (('TRAIN.OPTIMIZER.NAME', 'sgd'), 'fused AdamW'),
    (('TRAIN.COMPILE', 'True'), 'TRAIN.COMPILE is on: a compiled model inside a captured step is untested'),
])
def test_cuda_graphs_with_an_unsupported_setting_is_bad_input(dataset, tmp_path, capsys, opts, message):
    out = tmp_path / 'out'
    assert main_finetune.run(finetune_args(dataset, out, 'TRAIN.CUDA_GRAPHS', 'True', *opts)) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: TRAIN.CUDA_GRAPHS: ') and err.count('\n') == 1 and message in err, err
    assert not out.exists()


def test_amp_dtype_forces_fp16_or_bf16_on_cuda_and_leaves_cpu_fp32(dataset, tmp_path, capsys):
    cuda = torch.device('cuda')  # only the dtype choice is tested: no CUDA call for a forced dtype
    assert autocast_dtype('O1', cuda, 'float16') is torch.float16
    assert autocast_dtype('O2', cuda, 'bfloat16') is torch.bfloat16
    assert autocast_dtype('O0', cuda, 'float16') is None
    assert autocast_dtype('O1', torch.device('cpu'), 'float16') is None
    assert main_finetune.run(finetune_args(dataset, tmp_path / 'out', 'AMP_DTYPE', 'half')) == 2
    err = capsys.readouterr().err
    assert err == "error: AMP_DTYPE 'half' is not known; valid values: auto, bfloat16, float16\n"


# --- StopRequest ----------------------------------------------------------------------------------
def test_stop_request_in_one_process_reads_the_flag_without_a_collective(monkeypatch):
    def no_collective(tensor):
        raise AssertionError('all-reduce in one process')
    monkeypatch.setattr(launch, 'all_reduce_sum', no_collective)
    stop = launch.StopRequest()
    assert not any(stop() for _ in range(25)) and not stop.any_rank()
    stop.requested = True
    assert stop() and stop.any_rank()


def test_stop_request_with_several_processes_reduces_every_nth_call_on_every_rank(monkeypatch):
    reduced = []

    def fake_all_reduce(tensor):  # another rank got the signal: the sum is 1
        reduced.append(len(reduced))
        return tensor.fill_(1.0)
    monkeypatch.setattr(launch, 'get_world_size', lambda: 2)
    monkeypatch.setattr(launch, 'all_reduce_sum', fake_all_reduce)
    stop = launch.StopRequest(check_every=4)
    answers = [stop() for _ in range(8)]  # this rank got no signal itself
    assert answers == [False, False, False, True] * 2  # the stop lands on the same call on every rank
    assert len(reduced) == 2
    assert stop.any_rank() and len(reduced) == 3  # the epoch-end check always reduces


def test_profile_gpu_idle_fraction_from_a_chrome_trace(tmp_path):
    from benchmarks.profile_step import STEP_LABEL, device_busy, union_length
    assert union_length([(0, 4), (2, 6), (10, 11)]) == 7
    window = {'name': STEP_LABEL, 'ph': 'X', 'cat': 'user_annotation'}
    events = [dict(window, ts=100, dur=100), dict(window, ts=300, dur=50),
              {'name': 'k1', 'ph': 'X', 'cat': 'kernel', 'ts': 90, 'dur': 30},       # 20 inside the first step
              {'name': 'k2', 'ph': 'X', 'cat': 'kernel', 'ts': 110, 'dur': 20},      # overlaps k1 by 10
              {'name': 'c', 'ph': 'X', 'cat': 'gpu_memcpy', 'ts': 320, 'dur': 10},   # 10 in the second
              {'name': 'k3', 'ph': 'X', 'cat': 'kernel', 'ts': 250, 'dur': 10},      # between steps: not counted
              {'name': 'cpu', 'ph': 'X', 'cat': 'cpu_op', 'ts': 100, 'dur': 100}]
    trace = tmp_path / 'trace.json'
    trace.write_text(__import__('json').dumps({'traceEvents': events}))
    assert device_busy(trace) == (150, 40, 3)  # wall, busy (100..130 and 320..330), device operations


def test_cuda_graphs_refuses_several_processes_with_a_clear_message():
    from fast_step import CudaGraphsError, check_cuda_graphs
    from tests.helpers import tiny_config
    check_cuda_graphs(tiny_config(), world_size=1)  # fine
    with pytest.raises(CudaGraphsError, match='one process only, not 2 .*use TRAIN.COMPILE for several GPUs'):
        check_cuda_graphs(tiny_config(), world_size=2)
