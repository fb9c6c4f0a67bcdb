import math
from collections import Counter

import pytest

from patch_scheduler import PatchScheduler, patch_drop_ratio_at, round_drop_ratio

ITERS = 2502  # ImageNet iterations per epoch at a total batch of 512


def change_points(name, start, end, steps, iters=ITERS, epochs=100, cooldown=0):
    points, prev = [], None
    for i in range(steps):
        keep = round(1 - patch_drop_ratio_at(i, name, start, end, iters, epochs, cooldown), 1)
        if keep != prev:
            points.append((i, keep))
            prev = keep
    return points


def test_cyclic_change_points_within_every_epoch():
    expected = [(0, 0.2), (140, 0.4), (418, 0.6), (696, 0.8), (973, 1.0),
                (1530, 0.8), (1807, 0.6), (2085, 0.4), (2363, 0.2)]
    assert change_points('cyclic', 0.8, -0.1, ITERS) == expected
    # the same triangle in a later epoch
    epoch_0 = [patch_drop_ratio_at(i, 'cyclic', 0.8, -0.1, ITERS, 100) for i in range(ITERS)]
    epoch_7 = [patch_drop_ratio_at(7 * ITERS + i, 'cyclic', 0.8, -0.1, ITERS, 100) for i in range(ITERS)]
    assert epoch_7 == epoch_0


def test_cyclic_tie_rounds_to_even():
    # at i = 695, d * 5 is exactly 1.5 and must round to 2 (drop 0.4, rho 0.6), not up to 0.8 rho
    d = (1 - 695 / 1251) * 0.8 + (695 / 1251) * -0.1
    assert d * 5 == 1.5
    assert patch_drop_ratio_at(695, 'cyclic', 0.8, -0.1, ITERS, 100) == 0.4
    assert patch_drop_ratio_at(696, 'cyclic', 0.8, -0.1, ITERS, 100) == 0.2


def test_linear_change_points_over_training():
    points = change_points('linear', 0.8, -0.1, 100 * ITERS)
    assert points == [(0, 0.2), (27801, 0.4), (83401, 0.6), (139001, 0.8), (194600, 1.0)]


@pytest.mark.parametrize('name', ['linear', 'cyclic'])
def test_time_spent_per_keep_rate(name):
    epochs = 100 if name == 'linear' else 3
    steps = epochs * ITERS
    counts = Counter(round(1 - patch_drop_ratio_at(i, name, 0.8, -0.1, ITERS, epochs), 1) for i in range(steps))
    assert set(counts) == {0.2, 0.4, 0.6, 0.8, 1.0}
    assert counts[0.2] / steps == pytest.approx(1 / 9, abs=1e-3)
    for keep in (0.4, 0.6, 0.8, 1.0):
        assert counts[keep] / steps == pytest.approx(2 / 9, abs=1e-3)
    mean_keep = sum(k * c for k, c in counts.items()) / steps
    assert mean_keep == pytest.approx(0.644, abs=1e-3)


def test_cosine_endpoints_and_midpoint():
    total = 10 * 100
    assert patch_drop_ratio_at(0, 'cosine', 0.8, -0.1, 100, 10, round_to=0) == 0.8
    assert patch_drop_ratio_at(total - 1, 'cosine', 0.8, -0.1, 100, 10, round_to=0) == 0.0  # -0.1 clamped
    mid = patch_drop_ratio_at(total // 2, 'cosine', 0.8, -0.1, 100, 10, round_to=0)
    assert mid == pytest.approx(-0.1 + 0.9 * (1 + math.cos(math.pi / 2)) / 2)


def test_fixed_is_constant_and_cooldown_keeps_all():
    values = {patch_drop_ratio_at(i, 'linear', 0.4, 0.4, 50, 10, cooldown_epochs=2) for i in range(400)}
    assert values == {0.4}
    assert {patch_drop_ratio_at(i, 'linear', 0.4, 0.4, 50, 10, cooldown_epochs=2) for i in range(400, 500)} == {0.0}
    assert patch_drop_ratio_at(10, 'none', 0.8, 0.8, 50, 10) == 0.0


def test_rounding_grid():
    assert round_drop_ratio(0.5, 0.2) == 0.4  # 2.5 ties to even
    assert round_drop_ratio(0.7, 0.2) == 0.8  # 3.5 ties to even
    assert round_drop_ratio(-0.3, 0.2) == 0.0
    assert round_drop_ratio(0.37, 0) == 0.37
    assert round_drop_ratio(0.37, 0.1) == 0.4


@pytest.mark.parametrize('name', ['linear', 'cosine', 'cyclic'])
def test_set_epoch_and_state_dict_round_trip(name):
    iters = 37
    a = PatchScheduler(name, 0.8, -0.1, iters, epochs=5)
    values = []
    for _ in range(3 * iters + 11):
        values.append(a.get_patch_drop_ratio())
        a.step()
    assert values == [patch_drop_ratio_at(i, name, 0.8, -0.1, iters, 5) for i in range(len(values))]

    b = PatchScheduler(name, 0.8, -0.1, iters, epochs=5)
    b.load_state_dict(a.state_dict())
    assert [b.drop_ratio_at(b.step_count + k) for k in range(20)] == \
        [a.drop_ratio_at(a.step_count + k) for k in range(20)]
    assert b.get_patch_drop_ratio() == a.get_patch_drop_ratio()

    b.set_epoch(2)
    assert b.step_count == 2 * iters
    assert b.get_patch_drop_ratio() == patch_drop_ratio_at(2 * iters, name, 0.8, -0.1, iters, 5)


def test_unknown_schedule_lists_valid_names():
    with pytest.raises(ValueError, match='cyclic'):
        PatchScheduler('triangle', 0.8, 0.0, 10, 10)


def test_max_drop_ratio_is_the_largest_over_every_step():
    """Checked against all steps of many random schedules (rounding grids that round up included)."""
    import random

    from patch_scheduler import PatchScheduler
    rng = random.Random(0)
    for _ in range(2000):
        scheduler = PatchScheduler(rng.choice(['none', 'linear', 'cosine', 'cyclic']), rng.uniform(-1, 1),
                                   rng.uniform(-1, 1), rng.randint(1, 9), rng.randint(0, 5), rng.randint(0, 2),
                                   rng.choice([0, 0.2, 0.1, 0.7, 0.25]))
        steps = max(scheduler.epochs * scheduler.iterations_per_epoch, 1)
        assert scheduler.max_drop_ratio() == max(scheduler.drop_ratio_at(i) for i in range(steps))
    # the hostile test's cases: start 1.0, and ROUND_TO 0.7 rounding a drop of 0.8 up to 1.0
    assert PatchScheduler('cyclic', 1.0, -0.1, 10, 30).max_drop_ratio() == 1.0
    assert PatchScheduler('cyclic', 0.8, -0.1, 10, 30, round_to=0.7).max_drop_ratio() == 1.0
    assert PatchScheduler('cyclic', 0.8, -0.1, 10, 30).max_drop_ratio() == 0.8
