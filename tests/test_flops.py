import argparse

import pytest

from config import get_config
from models import build_model
from models.flops import flop_ratio, forward_flops, train_step_flops
from tests.helpers import tiny_model


@pytest.fixture(scope='module')
def vit_b():
    return build_model(get_config(argparse.Namespace(cfg='configs/vit-b/magnitude_cyclic_80_0.yaml', opts=None)))


def hand_count(k):
    """ViT-B forward FLOPs per image with k kept tokens, written out: D = 768, 12 heads of 64,
    MLP 3072, 196 patches of 16 x 16 x 3 = 768 inputs, 12 blocks, 1000 classes; 2 FLOPs a MAC."""
    patch_embed = 2 * 196 * 768 * 768
    qkv = 2 * k * 768 * 2304
    scores = 12 * 2 * k * k * 64  # per head: [k, 64] x [64, k]
    weighted_sum = 12 * 2 * k * k * 64  # per head: [k, k] x [k, 64]
    proj = 2 * k * 768 * 768
    mlp = 2 * k * 768 * 3072 + 2 * k * 3072 * 768
    head = 2 * 768 * 1000
    return patch_embed + 12 * (qkv + scores + weighted_sum + proj + mlp) + head


@pytest.mark.parametrize('drop, kept', [(0.0, 197), (0.2, 158), (0.4, 118), (0.6, 79), (0.8, 39)])
def test_vit_b_matches_hand_count(vit_b, drop, kept):
    assert vit_b.num_kept_tokens(drop) == kept
    flops = forward_flops(vit_b, drop)
    assert flops['total'] == pytest.approx(hand_count(kept), rel=0.01)
    assert flops['total'] == sum(v for name, v in flops.items() if name != 'total')
    assert train_step_flops(vit_b, drop, batch_size=8) == 3 * 8 * flops['total']


def test_vit_b_full_step_is_about_845_gflop(vit_b):
    # The estimate for a ViT-B training step at batch 8; the count gives 843 GFLOP.
    assert train_step_flops(vit_b, 0.0, batch_size=8) / 1e9 == pytest.approx(845, rel=0.01)
    assert forward_flops(vit_b)['total'] / 1e9 == pytest.approx(35.13, abs=0.01)


def test_flop_ratio_tracks_kept_tokens(vit_b):
    # Linear layers dominate, so the ratio is close to K / N; the fixed patch embedding and the
    # K^2 attention terms pull it slightly above and below.
    ratios = [flop_ratio(vit_b, d) for d in (0.0, 0.2, 0.4, 0.6, 0.8)]
    assert ratios[0] == 1.0
    assert ratios == sorted(ratios, reverse=True)
    assert ratios[-1] == pytest.approx(0.197, abs=0.001)
    for r, kept in zip(ratios, (197, 158, 118, 79, 39)):
        assert r == pytest.approx(kept / 197, abs=0.01)


def test_counts_follow_the_model_shape():
    model = tiny_model()  # 32 px, patch 8: 16 patches, D 32, MLP 128, 2 blocks, 5 classes
    k = 17
    expected = 2 * 16 * 3 * 64 * 32 + 2 * (2 * k * 32 * 96 + 2 * 2 * k * k * 32 + 2 * k * 32 * 32
                                          + 2 * 2 * k * 32 * 128) + 2 * 32 * 5
    assert forward_flops(model)['total'] == expected
    model.set_patch_drop_ratio(0.5)  # the argument, not the model's current ratio, decides
    assert forward_flops(model, 0.0)['total'] == expected
    assert forward_flops(model, 0.5)['qkv'] == 2 * 2 * 8 * 32 * 96  # round(0.5 * 17) = 8 tokens


# --- the benchmark's schedule prediction and a smoke run (benchmarks/train_step.py) -------------
def test_cyclic_schedule_histogram_and_predicted_saving():
    from benchmarks.train_step import PAPER_A100_MS, predict_training_time, rho_histogram
    config = get_config(argparse.Namespace(cfg='configs/vit-b/magnitude_cyclic_80_0.yaml', opts=None))
    hist = rho_histogram(config, 2502)
    steps = sum(hist.values())
    assert steps == 100 * 2502 and sorted(hist) == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert hist[0.2] / steps == pytest.approx(1 / 9, abs=0.002)  # PAPER.md: 1/9 at 0.2, 2/9 at the others
    for rho in (0.4, 0.6, 0.8, 1.0):
        assert hist[rho] / steps == pytest.approx(2 / 9, abs=0.002)
    # With the paper's own step times the prediction is the paper's measured 31% saving.
    [row] = predict_training_time(['configs/vit-b/magnitude_cyclic_80_0.yaml'], PAPER_A100_MS, 2502)
    assert row['mean_rho'] == pytest.approx(0.644, abs=0.002)
    assert row['saving'] == pytest.approx(0.31, abs=0.01)
    assert row['hours'] == pytest.approx(row['mean_step_s'] * steps / 3600)
    # Step times proportional to rho: the saving is 1 - mean rho.
    [row] = predict_training_time(['configs/vit-b/magnitude_cyclic_80_0.yaml'], {r: r for r in PAPER_A100_MS}, 2502)
    assert row['saving'] == pytest.approx(1 - row['mean_rho'])


@pytest.mark.parametrize('mode', ['train', 'inference'])
def test_benchmark_smoke_run(mode, tmp_path):
    import json

    from benchmarks.train_step import main
    from tests.helpers import TINY_OPTS
    main(['--cfg', 'configs/vit-b/magnitude_cyclic_80_0.yaml', '--opts', *TINY_OPTS, '--batch-size', '2',
          '--mode', mode, '--repeats', '1', '--warmup', '1', '--iters-per-epoch', '3',
          '--predict', 'configs/vit-b/baseline.yaml', 'configs/vit-b/magnitude_cyclic_80_0.yaml',
          '--out', str(tmp_path)])
    result = json.loads((tmp_path / f'{mode}_cpu.json').read_text())
    assert (tmp_path / f'{mode}_cpu.md').read_text().startswith(f'## {mode}:')
    rows = result['rows']
    assert [(r['model'], r['rho']) for r in rows] == [('ours', rho) for rho in (1.0, 0.8, 0.6, 0.4, 0.2)] + [
        ('timm beit_base_patch16_224', 1.0)]
    assert [r['kept_tokens'] for r in rows] == [17, 14, 10, 7, 3, 17]  # round(rho * 17)
    assert rows[0]['ratio_to_ours_rho1'] == 1.0 and all(r['ms'] > 0 for r in rows)
    assert result['models']['timm']['params'] == result['models']['ours']['params']
    assert result['models']['timm']['fused_attn'] is True
    if mode == 'train':
        baseline, cyclic = result['predictions']
        assert baseline['saving'] == pytest.approx(0.0) and baseline['mean_rho'] == 1.0
        assert 0.0 < cyclic['mean_rho'] < 1.0
    else:
        assert 'predictions' not in result


def test_op_counter_counts_each_operator_and_launches_do_not_fall_with_rho():
    """benchmarks/op_count.py: three matmuls count as three `mm`; a training step of the tiny model
    dispatches exactly the same operators at every rho of one path (the token count changes the kernels'
    sizes, not their number): rho = 1 skips the selection, and with fewer than half the patches kept
    (rho 0.4, 0.2) magnitude selection embeds the kept patches again; and more than its forward alone."""
    import torch

    from benchmarks.op_count import OpCounter, count_step

    a = torch.randn(4, 4)
    with OpCounter() as counter:
        for _ in range(3):
            a.mm(a)
    assert counter.counts['mm'] == 3

    model = tiny_model().train()
    images, targets = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    steps = []
    for drop in (0.0, 0.2, 0.6, 0.8):
        model.set_patch_drop_ratio(drop)
        steps.append(count_step(model, images, targets))
    assert steps[2] == steps[3]
    assert steps[0]['mm'] == steps[1]['mm'] > 0
    assert 'topk' in steps[1] and 'topk' in steps[3] and 'topk' not in steps[0]
    assert 'convolution_backward' in steps[1] and 'convolution_backward' not in steps[3]
    with OpCounter() as forward:
        model(images)
    assert sum(steps[3].values()) > 2 * sum(forward.counts.values())
