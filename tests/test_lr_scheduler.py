import io
import math

import pytest
import torch

from lr_scheduler import build_scheduler, lr_at, scaled_lrs
from tests.helpers import tiny_config

BASE, WARMUP, MIN = 1e-3, 1e-6, 1e-5


def config_for(name, epochs=10, warmup_epochs=2, batch_size=512, accumulation=0, extra=()):
    """A config whose scaled LRs are BASE, WARMUP, MIN at one process (batch 512)."""
    return tiny_config(opts=['TRAIN.LR_SCHEDULER.NAME', name, 'TRAIN.EPOCHS', str(epochs),
                             'TRAIN.WARMUP_EPOCHS', str(warmup_epochs), 'TRAIN.BASE_LR', str(BASE),
                             'TRAIN.WARMUP_LR', str(WARMUP), 'TRAIN.MIN_LR', str(MIN),
                             'DATA.BATCH_SIZE', str(batch_size), 'TRAIN.ACCUMULATION_STEPS', str(accumulation),
                             *extra])


def make(config, n_iter, world_size=1, lr_scale=None):
    param = torch.nn.Parameter(torch.zeros(2))
    group = {'params': [param], 'lr': scaled_lrs(config, world_size)[0]}
    if lr_scale is not None:
        group['lr_scale'] = lr_scale
    optimizer = torch.optim.SGD([group], lr=group['lr'])
    return optimizer, build_scheduler(config, optimizer, n_iter, world_size=world_size)


def test_cosine_warmup_and_end():
    # 10 epochs x 5 updates: T = 50, warm-up W = 10
    _, scheduler = make(config_for('cosine'), n_iter=5)
    warmup = [lr_at(scheduler, u) for u in range(10)]
    assert warmup[0] == pytest.approx(WARMUP)
    for u, lr in enumerate(warmup):  # on the line from WARMUP (u = 0) to BASE (u = W)
        assert lr == pytest.approx(WARMUP + u * (BASE - WARMUP) / 10)
    # SimMIM convention: the cosine spans the whole run, so after warm-up it is already at cos(pi W / T)
    assert lr_at(scheduler, 10) == pytest.approx(MIN + (BASE - MIN) * 0.9045084971874737)
    assert lr_at(scheduler, 30) == pytest.approx(MIN + (BASE - MIN) * 0.5 * (1 + math.cos(math.pi * 0.6)))
    after = [lr_at(scheduler, u) for u in range(10, 51)]
    assert all(a > b for a, b in zip(after, after[1:]))
    assert lr_at(scheduler, 50) == pytest.approx(MIN) and lr_at(scheduler, 80) == pytest.approx(MIN)


def test_cosine_without_warmup_starts_at_base():
    _, scheduler = make(config_for('cosine', warmup_epochs=0), n_iter=5)
    assert lr_at(scheduler, 0) == pytest.approx(BASE)
    assert lr_at(scheduler, 25) == pytest.approx((BASE + MIN) / 2)


def test_warmup_and_min_lr_are_scaled():
    # 64 per process x 2 processes x 2 accumulation steps = 256: everything halves
    _, scheduler = make(config_for('cosine', batch_size=64, accumulation=2), n_iter=5, world_size=2)
    assert lr_at(scheduler, 0) == pytest.approx(WARMUP / 2)
    assert lr_at(scheduler, 5) == pytest.approx((WARMUP + (BASE - WARMUP) / 2) / 2)
    assert lr_at(scheduler, 50) == pytest.approx(MIN / 2)


def test_stepping_once_per_update_reaches_the_right_lr():
    optimizer, scheduler = make(config_for('cosine'), n_iter=5, lr_scale=0.5)
    assert optimizer.param_groups[0]['lr'] == pytest.approx(0.5 * WARMUP)  # the LR of update 0
    num_updates = 0
    for _ in range(17):
        optimizer.step()
        num_updates += 1
        scheduler.step_update(num_updates)
    assert optimizer.param_groups[0]['lr'] == pytest.approx(0.5 * lr_at(scheduler, 17))
    assert lr_at(scheduler, 17) == pytest.approx(MIN + (BASE - MIN) * 0.5 * (1 + math.cos(math.pi * 17 / 50)))


def test_linear():
    _, scheduler = make(config_for('linear'), n_iter=5)
    assert lr_at(scheduler, 0) == pytest.approx(WARMUP)
    assert lr_at(scheduler, 10) == pytest.approx(BASE)  # the decay starts after warm-up
    assert lr_at(scheduler, 30) == pytest.approx((BASE + MIN) / 2)
    assert lr_at(scheduler, 50) == pytest.approx(MIN)


def test_step():
    config = config_for('step', warmup_epochs=0, extra=['TRAIN.LR_SCHEDULER.DECAY_EPOCHS', '3',
                                                         'TRAIN.LR_SCHEDULER.DECAY_RATE', '0.1'])
    _, scheduler = make(config, n_iter=5)
    assert lr_at(scheduler, 14) == pytest.approx(BASE)
    assert lr_at(scheduler, 15) == pytest.approx(BASE * 0.1)
    assert lr_at(scheduler, 30) == pytest.approx(BASE * 0.01)


def test_multistep_decays_on_the_milestone_update():
    config = config_for('multistep', warmup_epochs=1, extra=['TRAIN.LR_SCHEDULER.MULTISTEPS', '[5, 2]',
                                                              'TRAIN.LR_SCHEDULER.GAMMA', '0.5'])
    _, scheduler = make(config, n_iter=4)
    assert lr_at(scheduler, 2) == pytest.approx(WARMUP + 2 * (BASE - WARMUP) / 4)
    assert lr_at(scheduler, 7) == pytest.approx(BASE)  # last update of epoch 1
    assert lr_at(scheduler, 8) == pytest.approx(BASE * 0.5)  # first update of epoch 2
    assert lr_at(scheduler, 19) == pytest.approx(BASE * 0.5)
    assert lr_at(scheduler, 20) == pytest.approx(BASE * 0.25)


@pytest.mark.parametrize('name', ['cosine', 'linear', 'step', 'multistep'])
def test_state_dict_round_trip(name):
    extra = ['TRAIN.LR_SCHEDULER.MULTISTEPS', '[3, 6]', 'TRAIN.LR_SCHEDULER.DECAY_EPOCHS', '4']
    optimizer, scheduler = make(config_for(name, extra=extra), n_iter=5)
    for num_updates in range(1, 18):
        scheduler.step_update(num_updates)
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # plain Python values only

    # Built for another loader length: the loaded state must win.
    resumed_optimizer, resumed = make(config_for(name, extra=extra), n_iter=3)
    resumed.load_state_dict(state)
    assert [lr_at(resumed, u) for u in range(70)] == [lr_at(scheduler, u) for u in range(70)]
    scheduler.step_update(18)
    resumed.step_update(18)
    assert resumed_optimizer.param_groups[0]['lr'] == optimizer.param_groups[0]['lr']


def test_bad_arguments():
    optimizer, _ = make(config_for('cosine'), n_iter=5)
    with pytest.raises(ValueError, match='n_iter_per_epoch'):
        build_scheduler(config_for('cosine'), optimizer, 0, world_size=1)
    config = config_for('cosine').clone()
    config.defrost()
    config.TRAIN.LR_SCHEDULER.NAME = 'exponential'
    with pytest.raises(ValueError, match="'exponential'.*cosine, linear, step, multistep"):
        build_scheduler(config, optimizer, 5, world_size=1)
