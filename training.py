"""The training loop main_finetune.py and main_simmim.py share (launch.py: the frame around it).

    def main(config, args, on_exit):                     # run through run_script(parser, main)
        stop = on_exit.enter_context(StopRequest())       # SIGTERM / SIGINT: checkpoint, exit 3
        lock_run_folder(config, rank, logger, on_exit)    # one run per folder
        ...                                               # the script's own data, model, optimizer
        run_state = TrainingRun(config, model, optimizer, lr_scheduler, scaler, steps_per_epoch, world_size)
        run_state.resume(logger)                          # --resume, or the folder's newest checkpoint
        logger = run_state.open_folder(logger)            # from here on the folder is written
        on_exit.push(run_state.tracker)                   # TensorBoard / W&B (tracking.py) closed at the end
        return run_state.train(TrainStep(...), data_loader, stop, set_rho=..., validate=...)

A checkpoint holds `model`, `optimizer`, `lr_scheduler`, `scaler`, `patch_scheduler` (`step_count`:
optimizer steps so far, which the patch schedule is a function of), `epoch`, `step_in_epoch`,
`max_accuracy`, `config` (YAML text), `epoch_loss` (sum and count behind the running mean),
`world_size`, `steps_per_epoch`, `rng` (every process's RNG states) and, in fine-tuning, `classes`
(the dataset's class names in index order, which a resume must match).
"""
import datetime
import json
import logging
import math
import os
import time


from checkpoint import (CheckpointError, NonFiniteWeightsError, check_finite, check_state_dict, find_checkpoints,
                        load_checkpoint_file, non_finite_message, non_finite_weights, prune_checkpoints,
                        save_checkpoint)
from data import DataError, set_train_epoch
from launch import EXIT_PREEMPTED, check_output_writable
from logger import create_logger
from optimizer import resume_optimizer
from run_folder import (RunFolderError, RunLock, check_same_classes, check_same_run, remove_stale_tmp_files,
                        unused_pretrained)
from tracking import Tracker
from utils import (all_gather_object, barrier, get_rank, get_rng_state, memory_mb, set_rng_state, synchronize)



class NonFiniteLossError(FloatingPointError):
    """The run diverged: a step's loss or gradient norm, or the weights about to be checkpointed, are
    NaN or infinite. The message says where, and which checkpoint is left."""


def is_divergence(loss, grad_norm, scaler_enabled):
    """Whether a step whose loss and gradient norm (floats) are these diverged. A non-finite loss
    always is (a GradScaler cannot undo a forward that overflowed); a non-finite gradient norm is
    unless a GradScaler is on (fp16), which then skipped the step and lowered its scale."""
    return not math.isfinite(loss) or (not math.isfinite(grad_norm) and not scaler_enabled)


class AverageMeter:
    def __init__(self):
        self.val = self.sum = self.count = 0.0

    @property
    def avg(self):
        return self.sum / max(self.count, 1)

    def update(self, val, n=1):
        self.val = val
        self.sum += val * n
        self.count += n


# --- the run folder --------------------------------------------------------------------------------
def lock_run_folder(config, rank, logger, on_exit):
    """Hold config.OUTPUT (rank 0 takes its lock) until `on_exit` closes; every rank raises OSError
    or RunFolderError when it cannot be written or another run holds it. Only the lock is written."""
    check_output_writable(config.OUTPUT)
    lock, error = (RunLock(config.OUTPUT, logger), None) if rank == 0 else (None, None)
    if lock is not None:
        try:
            lock.acquire()
            on_exit.callback(lock.release)
        except RunFolderError as e:
            error = str(e)
    error = all_gather_object(error)[0]
    if error:
        raise RunFolderError(error)


def truncate_logs(output_dir, global_step, epoch):
    """Drop log lines written after the checkpoint being resumed, so each appears exactly once."""
    for name, keep in (('train_log.json', lambda r: r['iteration'] < global_step),
                       ('val_log.json', lambda r: r['epoch'] < epoch)):
        path = os.path.join(output_dir, name)
        if not os.path.exists(path):
            continue
        with open(path) as f:
            lines = [line for line in f if line.strip()]
        kept = []
        for line in lines:
            try:
                if keep(json.loads(line)):
                    kept.append(line)
            except json.JSONDecodeError:
                pass  # a line cut short by the crash
        tmp = path + '.tmp'
        with open(tmp, 'w') as f:
            f.writelines(kept)
        os.replace(tmp, path)


def training_state(path, state, model, classes=None, config=None, logger=None):
    """Check that `state` (read from `path`) is a training checkpoint for `model` and, given the
    dataset's `classes`, for its classes (before the classifier's shape, which their number sets)."""
    if not isinstance(state, dict) or 'model' not in state:
        raise CheckpointError(f"checkpoint '{path}' holds no 'model' state dict: not a training checkpoint")
    if 'optimizer' in state and (isinstance(state.get('epoch'), bool) or not isinstance(state.get('epoch'), int)):
        raise CheckpointError(f"checkpoint '{path}' holds an optimizer state but no integer 'epoch'")
    if classes is not None:
        check_same_classes(state, path, classes, config, logger)
    check_state_dict(model, state['model'], path)
    check_finite(path, state['model'], state.get('optimizer'))  # NaN would only spread: refused
    return state


def find_resume_checkpoint(config, model, logger, classes=None):
    """(path, state) to resume from, or (None, None): --resume when given (an explicit choice wins, and
    must be readable, fit and be finite), else the newest readable checkpoint in the output folder
    whose weights and optimizer state are finite (those that are not are skipped, with a warning).
    `classes`: the dataset's class names, which the checkpoint's must equal (fine-tuning)."""
    trusted = config.TRUST_CHECKPOINT
    if config.MODEL.RESUME:
        path = config.MODEL.RESUME
        own = [p for p in find_checkpoints(config.OUTPUT) if os.path.abspath(p) != os.path.abspath(path)]
        if config.TRAIN.AUTO_RESUME and own:
            logger.warning(f'--resume {path} is used, not the checkpoints in the output folder ({own[0]} ...): '
                           'an explicit --resume wins over auto-resume')
        return path, training_state(path, load_checkpoint_file(path, trusted), model, classes, config, logger)
    if config.TRAIN.AUTO_RESUME:
        found = find_checkpoints(config.OUTPUT)
        for path in found:
            try:
                state = load_checkpoint_file(path, trusted=trusted)
            except CheckpointError as e:
                logger.warning(f'auto-resume: {e}; trying the previous checkpoint')
                continue
            try:
                return path, training_state(path, state, model, classes, config, logger)
            except NonFiniteWeightsError as e:  # a diverged run's (older releases wrote them)
                logger.warning(f'auto-resume: {e}; trying the previous checkpoint')
        if found:
            logger.warning(f'auto-resume: no usable checkpoint in {config.OUTPUT}: starting from the beginning')
    return None, None


# --- the run ---------------------------------------------------------------------------------------
def optimizer_steps_per_epoch(data_loader, config):
    """Full optimizer steps of TRAIN.ACCUMULATION_STEPS batches per epoch; DataError if none."""
    accum = max(1, config.TRAIN.ACCUMULATION_STEPS)
    steps = len(data_loader) // accum
    if steps == 0:
        raise DataError(f'{len(data_loader)} batches per epoch cannot make one optimizer step of '
                        f'{accum} accumulated batches')
    return steps


class TrainingRun:
    """The state a training script carries from step to step and checkpoints: the bare `model`,
    optimizer, LR scheduler, grad scaler, the epoch's running loss, the best accuracy so far and the
    optimizer steps done (`step_count`), and the loop over epochs and steps. `classes`: the class
    names of a classifier's dataset (fine-tuning), stored in every checkpoint and checked on resume."""

    def __init__(self, config, model, optimizer, lr_scheduler, scaler, steps_per_epoch, world_size, classes=None):
        self.config, self.model, self.optimizer = config, model, optimizer
        self.lr_scheduler, self.scaler = lr_scheduler, scaler
        self.steps_per_epoch, self.world_size, self.rank = steps_per_epoch, world_size, get_rank()
        self.classes = None if classes is None else list(classes)
        self.epoch_loss = AverageMeter()  # the running mean of this epoch's step losses
        self.max_accuracy = 0.0
        self.step_count = 0  # optimizer steps done: where the patch schedule stands
        self.start_epoch, self.start_step = config.TRAIN.START_EPOCH, 0
        self.resumed_global_step = 0  # the log lines from this step on are dropped
        self.resumed = False
        self.last_checkpoint = None  # (path, epoch, step_in_epoch): the newest finite checkpoint of the run
        self.notes = []  # (level, message) of the resume, to log once the run's log file exists
        self.logger, self.train_log = None, None
        self.tracker = Tracker()  # TensorBoard / W&B: opened by open_folder on rank 0

    # --- resume ------------------------------------------------------------------------------------
    def resume(self, logger):
        """Continue from --resume or the output folder's newest readable checkpoint, if there is one:
        check that it fits the model and belongs to this run (run_folder.check_same_run), restore it,
        and drop the log lines written after it (rank 0)."""
        path, state = find_resume_checkpoint(self.config, self.model, logger, self.classes)
        if state is not None:
            self._restore(path, state, logger)
        if self.rank == 0:  # safe: the lock keeps other runs out; first, as truncate_logs writes <log>.tmp
            removed = remove_stale_tmp_files(self.config.OUTPUT)
            if removed:
                self.notes.append((logging.WARNING, f'removed {len(removed)} temporary file(s) of an interrupted '
                                                    f'write: {", ".join(os.path.basename(p) for p in removed)}'))
            truncate_logs(self.config.OUTPUT, self.resumed_global_step, self.start_epoch)

    def _restore(self, path, state, logger):
        spe = self.steps_per_epoch
        if 'optimizer' in state:
            check_same_run(state, path, self.config, self.world_size, spe, logger)
        self.model.load_state_dict(state['model'], strict=False)  # relative_position_index is rebuilt
        logger.info(f'loaded {path}')
        self.resumed = True
        unused = unused_pretrained(state, path, self.config)
        if unused:
            self.notes.append((logging.WARNING, unused))
        if 'optimizer' not in state:  # weights only: the run starts at TRAIN.START_EPOCH
            self.resumed_global_step = self.start_epoch * spe
            return
        self.max_accuracy = state.get('max_accuracy', 0.0)
        self.last_checkpoint = (path, state['epoch'], state.get('step_in_epoch', 0))
        self.start_step = state.get('step_in_epoch', 0)  # steps_per_epoch: trained, not yet validated
        self.start_epoch = state['epoch'] + (0 if self.start_step else 1)
        # also the original's checkpoints (another optimizer layout, no scheduler states we can use)
        self.notes += resume_optimizer(self.optimizer, self.lr_scheduler, state,
                                      self.start_epoch * spe + self.start_step)
        if 'scaler' in state:
            self.scaler.load_state_dict(state['scaler'])
        if self.start_step and 'epoch_loss' in state:
            self.epoch_loss.sum, self.epoch_loss.count = state['epoch_loss']['sum'], state['epoch_loss']['count']
        if 'patch_scheduler' in state:
            self.step_count = int(state['patch_scheduler']['step_count'])
            self.resumed_global_step = state['patch_scheduler']['step_count']
        else:  # the original's
            self.step_count = self.start_epoch * spe
            self.resumed_global_step = self.start_epoch * state.get('steps_per_epoch', spe) + self.start_step
        if 'rng' in state and len(state['rng']) == self.world_size:
            set_rng_state(state['rng'][self.rank])

    # --- the run folder ----------------------------------------------------------------------------
    def open_folder(self, logger, files=None):
        """From here on the run folder is written: config.yaml and `files` ({name: text}), the log file
        log_rank<r>.txt, train_log.json. Returns the logger, now writing to the folder too."""
        config = self.config
        if self.rank == 0:
            os.makedirs(config.OUTPUT, exist_ok=True)
        barrier()
        logger = create_logger(config.OUTPUT, self.rank, name=config.MODEL.NAME)
        if self.rank == 0:
            for name, text in {'config.yaml': config.dump(), **(files or {})}.items():
                with open(os.path.join(config.OUTPUT, name), 'w') as f:
                    f.write(text)
        logger.info(f'output folder {config.OUTPUT}; resuming at epoch {self.start_epoch}, step {self.start_step}'
                    if self.resumed else f'output folder {config.OUTPUT}')
        for level, note in self.notes:
            logger.log(level, note)
        self.logger, self.train_log = logger, self.open_log('train_log.json')
        if self.rank == 0:  # last: a W&B run that cannot start leaves no tracking files
            for note in self.tracker.open(config, self.steps_per_epoch, self.resumed, self.resumed_global_step,
                                          self.start_epoch):
                logger.info(note)
        return logger

    def open_log(self, name):
        """The JSON-lines log `name` of the run folder, to append to (rank 0; None elsewhere)."""
        return open(os.path.join(self.config.OUTPUT, name), 'a') if self.rank == 0 else None

    # --- checkpoints -------------------------------------------------------------------------------
    def new_epoch(self):
        """The running loss starts afresh with every epoch (as the original's)."""
        self.epoch_loss = AverageMeter()

    def state_dict(self, epoch, step_in_epoch):
        """The checkpoint after `step_in_epoch` steps of `epoch`. Every rank calls it: the RNG states
        are gathered from all of them."""
        return {'model': self.model.state_dict(), 'optimizer': self.optimizer.state_dict(),
                'lr_scheduler': self.lr_scheduler.state_dict(), 'scaler': self.scaler.state_dict(),
                'patch_scheduler': {'step_count': self.step_count}, 'epoch': epoch,
                'step_in_epoch': step_in_epoch, 'max_accuracy': self.max_accuracy, 'config': self.config.dump(),
                'epoch_loss': {'sum': self.epoch_loss.sum, 'count': self.epoch_loss.count},
                'world_size': self.world_size, 'steps_per_epoch': self.steps_per_epoch,
                'rng': all_gather_object(get_rng_state()),
                **({} if self.classes is None else {'classes': self.classes})}

    def write_checkpoint(self, epoch, step_in_epoch, epoch_file=False):
        """checkpoint.pth (and with `epoch_file` ckpt_epoch_<epoch>.pth, pruned to
        TRAIN.KEEP_CHECKPOINTS), written by rank 0; every rank calls it. Weights or optimizer state
        with NaN or inf are never written: NonFiniteLossError instead."""
        state, output = self.state_dict(epoch, step_in_epoch), self.config.OUTPUT
        # A step can leave non-finite weights with a finite loss and gradient norm. One read here,
        # not one per step; the weights are the same on every rank, so every rank stops.
        bad = non_finite_weights(state['model'], state['optimizer'])
        if bad:
            raise NonFiniteLossError(
                f'training diverged: at {self.describe_step(epoch, step_in_epoch)} the weights hold '
                f'{non_finite_message(bad)}; no checkpoint written, {self.kept_checkpoint()}')
        path = os.path.join(output, 'checkpoint.pth')
        if self.rank == 0:
            if epoch_file:
                save_checkpoint(state, os.path.join(output, f'ckpt_epoch_{epoch}.pth'))
                prune_checkpoints(output, self.config.TRAIN.KEEP_CHECKPOINTS)
            save_checkpoint(state, path)
        self.last_checkpoint = (path, epoch, step_in_epoch)
        barrier()
        self.tracker.commit()  # W&B gets the steps this checkpoint holds

    def describe_step(self, epoch, step_in_epoch):
        """Where a checkpoint stands, in words: 'the end of epoch 2', 'epoch 3, step 40 of 100'."""
        if step_in_epoch == 0:
            return f'the end of epoch {epoch}'
        return f'epoch {epoch}, step {step_in_epoch} of {self.steps_per_epoch}'

    def kept_checkpoint(self):
        """Which checkpoint a diverged run leaves, in words (there may be none)."""
        if self.last_checkpoint is None:
            return 'no checkpoint of this run was written'
        path, epoch, step_in_epoch = self.last_checkpoint
        return f"the newest checkpoint, '{path}' ({self.describe_step(epoch, step_in_epoch)}), is left as it was"

    # --- the loop ----------------------------------------------------------------------------------
    def train(self, train_step, data_loader, stop, mixup_fn=None, set_rho=None, validate=None, what='training'):
        """Every epoch from the resumed point on: its steps (train_epoch), a checkpoint, `validate(epoch)`
        if given, then the epoch's checkpoint. Returns the exit status: 0, or EXIT_PREEMPTED after a
        stop request (with a checkpoint to resume from)."""
        config, logger, spe = self.config, self.logger, self.steps_per_epoch
        logger.info(f'start {what}')
        start_time = time.time()
        start_step = self.start_step
        for epoch in range(self.start_epoch, config.TRAIN.EPOCHS):
            # the epoch's order is fixed by (SEED, epoch); a mid-epoch resume skips the batches already seen
            set_train_epoch(data_loader, epoch, start_batch=start_step * train_step.accumulation_steps)
            trained = start_step < spe  # else it was trained before the last stop, not validated
            done = self.train_epoch(train_step, data_loader, epoch, start_step, stop, mixup_fn, set_rho) \
                if trained else spe
            start_step = 0
            if done < spe:  # stopped by a signal
                self.write_checkpoint(epoch, done)
                logger.warning(f'{stop.reason()} received: checkpoint written at epoch {epoch}, '
                               f'step {done}. Run the same command again to resume.')
                return EXIT_PREEMPTED
            if validate is not None:
                if trained:  # step_in_epoch = steps_per_epoch: a validation that fails loses no training
                    self.write_checkpoint(epoch, spe)
                else:
                    logger.info(f'epoch {epoch} was trained before the last stop: validating it')
                validate(epoch)
            self.new_epoch()  # the next epoch's running loss starts afresh (also in the checkpoint below)
            last = epoch == config.TRAIN.EPOCHS - 1
            self.write_checkpoint(epoch, 0, epoch_file=epoch % config.SAVE_FREQ == 0 or last)
            if stop.any_rank():
                logger.warning(f'{stop.reason()} received: checkpoint written after epoch {epoch}. '
                               'Run the same command again to resume.')
                return EXIT_PREEMPTED
        logger.info(f'{what[0].upper()}{what[1:]} time {datetime.timedelta(seconds=int(time.time() - start_time))}')
        return 0

    def train_epoch(self, train_step, data_loader, epoch, start_step, stop, mixup_fn=None, set_rho=None):
        """The optimizer steps of `epoch` from `start_step` on; returns how many were done (fewer than
        steps_per_epoch only after a stop request). `set_rho(step_count)`, before every step, sets the
        model's drop ratio and returns it and the step's CUDA-graph key (without it: 0, None).
        train_log.json gets one line per step: `loss` the epoch's running mean, `step_loss` the step's."""
        config, logger, spe, device = self.config, self.logger, self.steps_per_epoch, train_step.device
        train_step.model.train()
        every = config.TRAIN.CHECKPOINT_EVERY_STEPS
        norm_meter, time_meter, data_meter = AverageMeter(), AverageMeter(), AverageMeter()
        step, new_step, drop_ratio, key = start_step, True, 0.0, None
        data_time, step_start, end = 0.0, time.time(), time.time()
        for samples, targets in data_loader:
            if step >= spe:
                break  # micro-batches left over when the epoch is not a multiple of the accumulation
            samples = samples.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            if mixup_fn is not None:
                samples, targets = mixup_fn(samples, targets)
            synchronize(device)
            data_time += time.time() - end
            if new_step and set_rho is not None:
                drop_ratio, key = set_rho(self.step_count)
            stats = train_step(samples, targets, key=key)  # [loss, grad norm] after a step's last micro-batch
            new_step = stats is not None
            if new_step:
                global_step = epoch * spe + step
                lr = max(group['lr'] for group in self.optimizer.param_groups)  # the LR of this step
                self.lr_scheduler.step_update(global_step + 1)
                self.step_count += 1
                synchronize(device)  # honest per-step time on GPU
                step_loss, grad_norm = stats.tolist()  # the step's one read from the device
                if is_divergence(step_loss, grad_norm, self.scaler.is_enabled()):
                    # the run stops before anything else sees this step: no checkpoint, no log line
                    raise NonFiniteLossError(
                        f'training diverged at epoch {epoch}, iteration {step} of {spe} (global {global_step}), '
                        f'rho {1 - drop_ratio:.2f}: loss {step_loss:.4g}, grad norm {grad_norm:.4g}; '
                        f'{self.kept_checkpoint()}')
                step_time = time.time() - step_start
                self.epoch_loss.update(step_loss)
                norm_meter.update(grad_norm)
                time_meter.update(step_time)
                data_meter.update(data_time)
                if self.train_log is not None:
                    record = {
                        'epoch': epoch, 'iteration': global_step, 'loss': self.epoch_loss.avg, 'step_loss': step_loss,
                        'lr': lr, 'time': step_time, 'cpu_time': data_time, 'gpu_time': step_time - data_time,
                        'memory': memory_mb(device), 'patch_drop_ratio': drop_ratio, 'grad_norm': grad_norm}
                    self.train_log.write(json.dumps(record) + '\n')
                    self.train_log.flush()
                    self.tracker.log_train(record)
                if step % config.PRINT_FREQ == 0 or step == spe - 1:
                    eta = datetime.timedelta(seconds=int(time_meter.avg * (spe - step - 1)))
                    logger.info(
                        f'Train: [{epoch}/{config.TRAIN.EPOCHS}][{step}/{spe}]\t'
                        f'eta {eta} lr {lr:.6f}\t'
                        f'time {time_meter.val:.4f} ({time_meter.avg:.4f})\t'
                        f'data {data_meter.val:.4f} ({data_meter.avg:.4f})\t'
                        f'loss {self.epoch_loss.val:.4f} ({self.epoch_loss.avg:.4f})\t'
                        f'grad_norm {norm_meter.val:.4f} ({norm_meter.avg:.4f})\t'
                        f'mem {memory_mb(device):.0f}MB\trho {1 - drop_ratio:.2f}')
                step += 1
                data_time, step_start = 0.0, time.time()
                if every and step % every == 0 and step < spe:
                    self.write_checkpoint(epoch, step)
                if stop():
                    break
            end = time.time()
        logger.info(f'EPOCH {epoch} training takes {datetime.timedelta(seconds=int(time_meter.sum))} '
                    f'(mean loss {self.epoch_loss.avg:.4f})')
        return step
