"""Experiment tracking: TensorBoard events and a Weights & Biases run of the JSON logs' scalars (rank 0).

    check_tracking(config)     # before anything is written: packages and LOG_DIR, one-line errors
    tracker = Tracker()        # does nothing until opened (so on every rank but 0)
    tracker.open(config, steps_per_epoch, resumed, global_step, epoch)   # after the resume
    tracker.log_train(record)  # the train_log.json record of an optimizer step
    tracker.log_val(record)    # the val_log.json record of an epoch
    tracker.commit()           # a checkpoint now holds every step logged so far
    tracker.close(failed)

TensorBoard (LOG_DIR, MAE's --log_dir): events in <LOG_DIR>/<MODEL.NAME>/<TAG>/train (x: the global
step) and .../val (x: the epoch). Every start purges the steps and epochs it is going to (re)do, as
truncate_logs does with the JSON lines: SummaryWriter(purge_step=...).
Weights & Biases (WANDB.PROJECT): a step's row is sent once a checkpoint holds that step (`commit`),
so the W&B run never holds a step that a resume does again; a resumed run continues the W&B run
whose id <run folder>/wandb_id.txt keeps, at the checkpoint's step. Neither replaces the JSON logs:
both copy their values.
"""
import os

import yaml

from config import ConfigError
from launch import check_output_writable
from utils import write_atomically

# train_log.json / val_log.json field -> tag; `time` is the step's time, `cpu_time` its wait for data
TRAIN_SCALARS = {'loss': 'train/loss', 'step_loss': 'train/step_loss', 'lr': 'train/lr',
                 'grad_norm': 'train/grad_norm', 'patch_drop_ratio': 'train/patch_drop_ratio',
                 'time': 'train/step_time', 'cpu_time': 'train/data_time'}
VAL_SCALARS = {'loss': 'val/loss', 'acc1': 'val/acc1', 'acc5': 'val/acc5'}
WANDB_ID_FILE = 'wandb_id.txt'


class TrackingError(ConfigError):
    """A tracking package that is missing, or a W&B run that cannot start; the message says which."""


def add_tracking_args(parser):
    parser.add_argument('--log_dir', '--log-dir', metavar='PATH',
                        help='TensorBoard: write events to PATH/<MODEL.NAME>/<TAG>/train and /val (config LOG_DIR)')
    parser.add_argument('--wandb', metavar='PROJECT',
                        help='Weights & Biases: log to this project (config WANDB.PROJECT; pip install wandb; '
                        'WANDB_MODE=offline logs offline)')
    return parser


def event_dir(config):
    """The run's TensorBoard folder: <LOG_DIR>/<MODEL.NAME>/<TAG>, as --output's run folder."""
    return os.path.join(config.LOG_DIR, config.MODEL.NAME, config.TAG)


def check_tracking(config):
    """Raise TrackingError when the tracking the config asks for needs a package that cannot be
    imported, and OSError when LOG_DIR cannot be written. Imports only what is asked for."""
    import importlib
    for key, flag, module, package in (('LOG_DIR', '--log_dir', 'torch.utils.tensorboard', 'tensorboard'),
                                       ('WANDB.PROJECT', '--wandb', 'wandb', 'wandb')):
        value = config.LOG_DIR if key == 'LOG_DIR' else config.WANDB.PROJECT
        if not value:
            continue
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise TrackingError(f"{key} ({flag}) needs the package '{package}', which cannot be imported "
                                f'({e}): pip install {package}') from None
    if config.LOG_DIR:
        try:
            check_output_writable(event_dir(config))
        except OSError as e:
            raise OSError(f'LOG_DIR (--log_dir): {e}') from None


def _read_run_id(path):
    try:
        with open(path) as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None


class Tracker:
    """TensorBoard writers and a W&B run, both optional; every method is a no-op for what is not open."""

    def __init__(self):
        self.event_dir = None
        self.purge_steps = {}  # 'train' / 'val': the first step this start logs, on its axis
        self.writers = {}  # 'train' / 'val': SummaryWriter, made when first used
        self.wandb_run = None
        self.pending = []  # (W&B step, row) logged since the last checkpoint
        self.steps_per_epoch = 1

    def open(self, config, steps_per_epoch, resumed, global_step, epoch):
        """Start tracking a run that continues at `global_step` and `epoch` (what the resume kept;
        0 and TRAIN.START_EPOCH for a new run). `resumed`: the W&B run of wandb_id.txt continues,
        else a new one starts. Returns messages for the log."""
        self.steps_per_epoch = steps_per_epoch
        notes = []
        if config.WANDB.PROJECT:  # first: it may fail (login, network), and then nothing else is opened
            self.wandb_run, continued = self._init_wandb(config, resumed)
            notes.append(f"W&B: {'continues' if continued else 'starts'} run {self.wandb_run.id} of project "
                         f'{config.WANDB.PROJECT} at step {global_step} (its id: {WANDB_ID_FILE})')
        if config.LOG_DIR:
            self.event_dir, self.purge_steps = event_dir(config), {'train': global_step, 'val': epoch}
            notes.append(f'TensorBoard: events in {self.event_dir} (train from step {global_step}, '
                         f'val from epoch {epoch})')
        return notes

    def _writer(self, kind):
        if kind not in self.writers:
            from torch.utils.tensorboard import SummaryWriter
            # TensorBoard's readers drop what earlier starts wrote at and after the purge step
            self.writers[kind] = SummaryWriter(os.path.join(self.event_dir, kind), purge_step=self.purge_steps[kind])
        return self.writers[kind]

    def _init_wandb(self, config, resumed):
        import wandb
        id_path = os.path.join(config.OUTPUT, WANDB_ID_FILE)
        run_id = _read_run_id(id_path) if resumed else None
        try:
            run = wandb.init(project=config.WANDB.PROJECT, entity=config.WANDB.ENTITY or None,
                             id=run_id, resume='allow' if run_id else None,
                             name=f'{config.MODEL.NAME}/{config.TAG}', dir=config.OUTPUT,
                             config=yaml.safe_load(config.dump()))
        except wandb.errors.Error as e:
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TrackingError(f'W&B (WANDB.PROJECT {config.WANDB.PROJECT}): {message}') from None
        write_atomically(id_path, run.id + '\n')
        run.define_metric('global_step')
        run.define_metric('train/*', step_metric='global_step')
        run.define_metric('epoch')
        run.define_metric('val/*', step_metric='epoch')
        return run, run_id is not None

    # W&B's own step counts rows, one per optimizer step and one after each epoch's steps for its
    # validation, as a function of the step alone (runs without validation leave those rows empty).
    def _train_row(self, global_step):
        return global_step + global_step // self.steps_per_epoch

    def _val_row(self, epoch):
        return (epoch + 1) * (self.steps_per_epoch + 1) - 1

    def log_train(self, record):
        step = record['iteration']
        self._log('train', TRAIN_SCALARS, record, step, self._train_row(step), {'global_step': step})

    def log_val(self, record):
        epoch = record['epoch']
        self._log('val', VAL_SCALARS, record, epoch, self._val_row(epoch), {'epoch': epoch})

    def _log(self, kind, scalars, record, step, wandb_step, axis):
        if self.event_dir is not None:
            writer = self._writer(kind)
            for key, tag in scalars.items():
                writer.add_scalar(tag, record[key], step)
            writer.flush()  # on disk before the next checkpoint: a kill -9 loses no step before it
        if self.wandb_run is not None:
            self.pending.append((wandb_step, {**axis, **{tag: record[key] for key, tag in scalars.items()}}))

    def commit(self):
        """A checkpoint holds every step logged so far: send their rows to W&B."""
        for wandb_step, row in self.pending:
            self.wandb_run.log(row, step=wandb_step, commit=True)
        self.pending = []

    def close(self, failed=False):
        """Close the writers and finish the W&B run; rows no checkpoint holds are not sent (a resume
        does those steps again)."""
        for writer in self.writers.values():
            writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=1 if failed else 0)
        self.event_dir, self.writers, self.wandb_run, self.pending = None, {}, None, []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(failed=exc_type is not None)
        return False
