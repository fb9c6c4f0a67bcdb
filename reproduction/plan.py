"""What reproduce.py runs: the datasets, the five schedules, the seeds, epochs and scales of the full and
--quick plans, the SimMIM pre-training the fine-tunings start from, the runs (schedule x seed) they make, and
the runs of the length study (--study length)."""
import os
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root
CONFIG_FILE = 'config.yaml'


class ReproduceError(RuntimeError):
    """A stage failed or an output folder holds a different experiment; the message says which and what to do."""


@dataclass(frozen=True)
class Dataset:
    """One variant of the reproduction: its fine-tuning configs and, if it has one, its pre-training."""
    key: str          # --dataset, and DATA.DATASET of its configs
    config_dir: str   # the fine-tuning configs, one file per setting (the same names in each folder)
    model_name: str   # MODEL.NAME of those configs: the first level of main_finetune.py's output folder
    epochs: int       # TRAIN.EPOCHS of those configs: the full plan's epochs
    object_noun: str  # what the bright pixels are ('digit'), for the claims' sentences
    pretrain_config: str = ''      # SimMIM pre-training config; '' trains from scratch, as the digits do
    pretrain_model_name: str = ''  # its MODEL.NAME


DATASETS = {
    'fashion_mnist': Dataset('fashion_mnist', 'configs/fashion_mnist', 'fashion_mnist', 4, 'garment',
                             'configs/simmim/fashion_mnist.yaml', 'simmim_fashion_mnist'),
    'digits': Dataset('digits', 'configs/demo', 'demo', 30, 'digit'),
}
DEFAULT_DATASET = 'fashion_mnist'
PRETRAIN_TAG = 'pretrain'  # the pre-training's folder: <work>/<pretrain_model_name>/pretrain
PRETRAIN_RUN = 'simmim_pretrain'  # its name in <out>/runs and in timings.json
PRETRAIN_SEED = 0  # one pre-training for all seeds of the fine-tuning, as one pre-trained model in the paper


@dataclass(frozen=True)
class Setting:
    key: str     # short name used in tables and by the claims
    config: str  # file in the dataset's config folder
    label: str   # legend and table label
    pretrained: bool = True  # fine-tuned from the pre-training (when the dataset has one)
    tag: str = ''  # the run's name before _seed<k>; default: the config's name

    @property
    def name(self):
        return self.tag or os.path.splitext(self.config)[0]


SETTINGS = (
    Setting('baseline', 'baseline.yaml', 'baseline'),
    Setting('fixed', 'magnitude_fixed_40.yaml', 'Fixed(0.6)'),
    Setting('linear', 'magnitude_linear.yaml', 'Linear(0.2, 1.0)'),
    Setting('cyclic', 'magnitude_cyclic.yaml', 'Cyclic(0.2, 1.0)'),
    Setting('random_cyclic', 'random_cyclic.yaml', 'Cyclic(0.2, 1.0), random'),
)
# The pre-training's effect: the baseline fine-tuned the same way without it (first seed only).
SCRATCH = Setting('scratch', 'baseline.yaml', 'baseline from scratch', pretrained=False, tag='baseline_scratch')
SETTING_BY_KEY = {s.key: s for s in SETTINGS + (SCRATCH,)}
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
    opts: tuple = ()  # extra KEY VALUE overrides for every fine-tuning script (model and image size in --quick)
    sweep_drop_ratios: tuple = FULL_SWEEP_DROP_RATIOS
    image_drop_ratios: tuple = GRID_DROP_RATIOS
    distribution_drop_ratios: tuple = DISTRIBUTION_DROP_RATIOS
    dataset: Dataset = DATASETS['digits']  # make_plan's default is DEFAULT_DATASET; this one keeps older callers
    pretrain_opts: tuple = ()  # extra KEY VALUE overrides for main_simmim.py

    @property
    def pretrained(self):
        return bool(self.dataset.pretrain_config)

    def overrides(self, seed, epochs=0):
        """{config key: value} that every fine-tuning script of the run with `seed` gets through --opts;
        `epochs`: the run's TRAIN.EPOCHS where it is not the plan's (the length study)."""
        pairs = dict(zip(self.opts[::2], self.opts[1::2]))
        pairs.update({'SEED': str(seed), 'TRAIN.EPOCHS': str(epochs or self.epochs), 'DATA.DATASET': self.dataset.key})
        return pairs

    def pretrain_overrides(self):
        """{config key: value} that main_simmim.py gets through --opts."""
        pairs = dict(zip(self.pretrain_opts[::2], self.pretrain_opts[1::2]))
        pairs.update({'SEED': str(PRETRAIN_SEED), 'DATA.DATASET': self.dataset.key})
        return pairs


FULL_SEEDS = (0, 1, 2)
# --quick: 16 px images in 4 px patches (17 tokens), a 48-wide 2-block ViT, 2 epochs, 1 seed, the
# sweep on the 0.2 grid only; on Fashion-MNIST 1,280 training images and a 1-epoch pre-training on 2,560.
# Enough to run every stage and every figure; not to judge the claims.
QUICK_SEEDS, QUICK_EPOCHS = (0,), 2
QUICK_OPTS = ('DATA.IMG_SIZE', '16', 'MODEL.VIT.PATCH_SIZE', '4', 'MODEL.VIT.EMBED_DIM', '48',
              'MODEL.VIT.DEPTH', '2', 'MODEL.VIT.NUM_HEADS', '3')
QUICK_FINETUNE_SUBSET = ('DATA.TRAIN_SUBSET', '1280')
QUICK_PRETRAIN_OPTS = ('DATA.TRAIN_SUBSET', '2560', 'TRAIN.EPOCHS', '1', 'TRAIN.WARMUP_EPOCHS', '0',
                       'TRAIN.LR_SCHEDULER.MULTISTEPS', '[]')


def make_plan(quick=False, seeds=None, epochs=None, dataset=DEFAULT_DATASET):
    """The full or --quick plan of `dataset`, with --seeds / --epochs applied. Runs shorter than the
    configs' epochs get a warm-up of a tenth of their epochs, at least 1 epoch."""
    if dataset not in DATASETS:
        raise ReproduceError(f"--dataset {dataset} is not known; valid values: {', '.join(DATASETS)}")
    data = DATASETS[dataset]
    epochs = epochs if epochs is not None else (QUICK_EPOCHS if quick else data.epochs)
    if epochs < 1:
        raise ReproduceError(f'--epochs must be at least 1, got {epochs}')
    seeds = tuple(seeds) if seeds else (QUICK_SEEDS if quick else FULL_SEEDS)
    if len(set(seeds)) != len(seeds):
        raise ReproduceError(f'--seeds: {list(seeds)} repeats a seed')
    opts = QUICK_OPTS if quick else ()
    pretrain_opts = QUICK_OPTS + QUICK_PRETRAIN_OPTS if quick and data.pretrain_config else ()
    if quick and data.pretrain_config:
        opts += QUICK_FINETUNE_SUBSET
    if epochs < data.epochs:
        opts += ('TRAIN.WARMUP_EPOCHS', str(max(1, epochs // 10)))
    # the sweep on the 0.2 grid (the paper's table) where 10,000 validation images make each ρ cost 10 s or more
    sweep = GRID_DROP_RATIOS if quick or data.pretrain_config else FULL_SWEEP_DROP_RATIOS
    return Plan(seeds, epochs, opts, sweep_drop_ratios=sweep, dataset=data, pretrain_opts=pretrain_opts)


def run_name(setting, seed, epochs=0):
    """<config>_seed<k>; a run of the length study: <config>_<epochs>ep_seed<k>."""
    return f"{setting.name}{f'_{epochs}ep' if epochs else ''}_seed{seed}"


@dataclass
class Run:
    setting: Setting
    seed: int
    extras: bool  # image_patches.py and patch_distribution.py too (the first seed of each schedule)
    pretrained: bool = False  # main_finetune.py --pretrained <the pre-training's checkpoint>
    epochs: int = 0  # TRAIN.EPOCHS where it is not the plan's (the length study); 0: the plan's

    @property
    def name(self):
        return run_name(self.setting, self.seed, self.epochs)


def plan_runs(plan):
    """Seed-major order, so that a stopped reproduce.py has every schedule at the first seeds; with a
    pre-training, the baseline from scratch (first seed) comes last."""
    runs = [Run(setting, seed, extras=seed == plan.seeds[0], pretrained=plan.pretrained)
            for seed in plan.seeds for setting in SETTINGS]
    if plan.pretrained:
        runs.append(Run(SCRATCH, plan.seeds[0], extras=False, pretrained=False))
    return runs


# -----------------------------------------------------------------------------
# The length study: is PSS's accuracy cost at rho = 1 a matter of fine-tuning length?
# -----------------------------------------------------------------------------
# The same fine-tuning from the same pre-training, 2 and 4 times as long (4 -> 8 and 16 epochs), each with its
# own cosine schedule over its length; the plan's own runs are its shortest length.
STUDIES = ('length',)
LENGTH_FACTORS = (2, 4)
LENGTH_SETTINGS = (('baseline', 2), ('cyclic', 2), ('linear', 1))  # (setting, how many of the plan's seeds)
LENGTH_PRETRAIN_RUN = 'simmim_pretrain_length'  # <out>/runs/<this>: the pre-training the study fine-tunes from


def study_lengths(plan):
    """The fine-tuning lengths (epochs) of the length study, the plan's own first."""
    return (plan.epochs,) + tuple(plan.epochs * factor for factor in LENGTH_FACTORS)


def length_runs(plan, lengths=None):
    """The runs at `lengths` (default: the study's longer ones), shortest first, then seed-major, so that a
    stopped study has every schedule at the shorter lengths; runs at the plan's epochs are the plan's own."""
    lengths = study_lengths(plan)[1:] if lengths is None else lengths
    return [Run(SETTING_BY_KEY[key], seed, extras=False, pretrained=True, epochs=0 if e == plan.epochs else e)
            for e in lengths for seed in plan.seeds[:2] for key, num_seeds in LENGTH_SETTINGS
            if seed in plan.seeds[:num_seeds]]


def check_study(plan, study):
    if study not in STUDIES:
        raise ReproduceError(f"--study {study} is not known; valid values: {', '.join(STUDIES)}")
    if not plan.pretrained:
        raise ReproduceError(f'--study {study} fine-tunes from the SimMIM pre-training, which --dataset '
                             f'{plan.dataset.key} does not have: use --dataset fashion_mnist')
