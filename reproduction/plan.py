"""What reproduce.py runs: the five schedules, the seeds, epochs and scales of the full and --quick plans,
and the runs (schedule x seed) they make."""
import os
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root
MODEL_NAME = 'demo'  # MODEL.NAME of configs/demo: the first level of main_finetune.py's output folder
CONFIG_FILE = 'config.yaml'


class ReproduceError(RuntimeError):
    """A stage failed or an output folder holds a different experiment; the message says which and what to do."""


@dataclass(frozen=True)
class Setting:
    key: str     # short name used in tables and by the claims
    config: str  # file in configs/demo/
    label: str   # legend and table label


SETTINGS = (
    Setting('baseline', 'baseline.yaml', 'baseline'),
    Setting('fixed', 'magnitude_fixed_40.yaml', 'Fixed(0.6)'),
    Setting('linear', 'magnitude_linear.yaml', 'Linear(0.2, 1.0)'),
    Setting('cyclic', 'magnitude_cyclic.yaml', 'Cyclic(0.2, 1.0)'),
    Setting('random_cyclic', 'random_cyclic.yaml', 'Cyclic(0.2, 1.0), random'),
)
SETTING_BY_KEY = {s.key: s for s in SETTINGS}
PAPER_SCHEDULES = ('fixed', 'linear', 'cyclic')  # the PSS schedules the paper reports numbers for
PSS_SETTINGS = ('fixed', 'linear', 'cyclic', 'random_cyclic')

FULL_SWEEP_DROP_RATIOS = tuple(round(0.1 * i, 1) for i in range(9))  # rho 1.0, 0.9, ..., 0.2
GRID_DROP_RATIOS = (0.0, 0.2, 0.4, 0.6, 0.8)  # the training grid: rho 1.0, 0.8, ..., 0.2
# patch_distribution.py's default adds 0.0 first (the original's list); every image keeps every position
# there, so it tells nothing, and the committed results/ were made without it
DISTRIBUTION_DROP_RATIOS = (0.2, 0.4, 0.6, 0.8)


@dataclass(frozen=True)
class Plan:
    seeds: tuple
    epochs: int
    opts: tuple = ()  # extra KEY VALUE overrides for every script (model and image size in --quick)
    sweep_drop_ratios: tuple = FULL_SWEEP_DROP_RATIOS
    image_drop_ratios: tuple = GRID_DROP_RATIOS
    distribution_drop_ratios: tuple = DISTRIBUTION_DROP_RATIOS

    def overrides(self, seed):
        """{config key: value} that every script of the run with `seed` gets through --opts."""
        pairs = dict(zip(self.opts[::2], self.opts[1::2]))
        pairs.update({'SEED': str(seed), 'TRAIN.EPOCHS': str(self.epochs)})
        return pairs


FULL_SEEDS, FULL_EPOCHS = (0, 1, 2), 30
# --quick: 16 px digits in 4 px patches (17 tokens), a 48-wide 2-block ViT, 2 epochs, 1 seed, the
# sweep on the 0.2 grid only. Enough to run every stage and every figure; not to judge the claims.
QUICK_SEEDS, QUICK_EPOCHS = (0,), 2
QUICK_OPTS = ('DATA.IMG_SIZE', '16', 'MODEL.VIT.PATCH_SIZE', '4', 'MODEL.VIT.EMBED_DIM', '48',
              'MODEL.VIT.DEPTH', '2', 'MODEL.VIT.NUM_HEADS', '3')


def make_plan(quick=False, seeds=None, epochs=None):
    """The full or --quick plan, with --seeds / --epochs applied. The warm-up (3 epochs in
    configs/demo) is shortened to a tenth of the epochs for runs under 30 epochs, at least 1 epoch."""
    epochs = epochs if epochs is not None else (QUICK_EPOCHS if quick else FULL_EPOCHS)
    if epochs < 1:
        raise ReproduceError(f'--epochs must be at least 1, got {epochs}')
    seeds = tuple(seeds) if seeds else (QUICK_SEEDS if quick else FULL_SEEDS)
    if len(set(seeds)) != len(seeds):
        raise ReproduceError(f'--seeds: {list(seeds)} repeats a seed')
    opts = QUICK_OPTS if quick else ()
    if epochs < FULL_EPOCHS:
        opts += ('TRAIN.WARMUP_EPOCHS', str(max(1, epochs // 10)))
    if quick:
        return Plan(seeds, epochs, opts, sweep_drop_ratios=GRID_DROP_RATIOS)
    return Plan(seeds, epochs, opts)


def run_name(setting, seed):
    return f'{os.path.splitext(setting.config)[0]}_seed{seed}'


@dataclass
class Run:
    setting: Setting
    seed: int
    extras: bool  # image_patches.py and patch_distribution.py too (the first seed of each schedule)

    @property
    def name(self):
        return run_name(self.setting, self.seed)


def plan_runs(plan):
    """Seed-major order, so that a stopped reproduce.py has every schedule at the first seeds."""
    return [Run(setting, seed, extras=seed == plan.seeds[0]) for seed in plan.seeds for setting in SETTINGS]
