"""The state a training script carries from step to step, and how it is checkpointed and resumed.
`main_finetune.py` and `main_simmim.py` share it, so both resume the same way:

    run = TrainingRun(optimizer, lr_scheduler, patch_scheduler, scaler, steps_per_epoch)
    start_epoch, start_step = run.resume(state, path, model, config, world_size, rank, logger)
    ...                                       # train; run.epoch_loss is train_log.json's `loss`
    run.write_checkpoint(bare_model, config, world_size, epoch, step_in_epoch, epoch_file)  # every rank

A checkpoint holds `model`, `optimizer`, `lr_scheduler`, `scaler`, `patch_scheduler`, `epoch`,
`step_in_epoch` (optimizer steps done in `epoch`), `max_accuracy`, `config` (YAML text),
`epoch_loss` (sum and count behind the running mean), `world_size`, `steps_per_epoch` and `rng`
(every process's RNG states).
"""
import os

from checkpoint import prune_checkpoints, save_checkpoint
from engine import AverageMeter
from optimizer import resume_optimizer
from run_folder import check_same_run
from utils import all_gather_object, barrier, get_rank, get_rng_state, set_rng_state


class TrainingRun:
    """Optimizer, schedulers, grad scaler, the epoch's running loss and the best accuracy so far."""

    def __init__(self, optimizer, lr_scheduler, patch_scheduler, scaler, steps_per_epoch):
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        self.patch_scheduler, self.scaler = patch_scheduler, scaler
        self.steps_per_epoch = steps_per_epoch
        self.epoch_loss = AverageMeter()  # the running mean of this epoch's step losses
        self.max_accuracy = 0.0
        self.resumed_global_step = 0  # optimizer steps the resumed checkpoint had done
        self.notes = []  # (level, message) of the resume, to log once the run's log file exists

    def resume(self, state, path, model, config, world_size, rank, logger):
        """Continue from `state` (read from `path`, or None for a new run); returns (start_epoch,
        start_step). A training checkpoint must be of the same run (run_folder.check_same_run);
        one with weights only just initialises the model."""
        start_epoch, start_step = config.TRAIN.START_EPOCH, 0
        if state is None:
            return start_epoch, start_step
        if 'optimizer' in state:
            check_same_run(state, path, config, world_size, self.steps_per_epoch, logger)
        model.load_state_dict(state['model'], strict=False)  # relative_position_index is rebuilt
        logger.info(f'loaded {path}')
        if 'optimizer' not in state:  # weights only: the run starts at TRAIN.START_EPOCH
            self.resumed_global_step = start_epoch * self.steps_per_epoch
            return start_epoch, start_step
        self.max_accuracy = state.get('max_accuracy', 0.0)
        start_step = state.get('step_in_epoch', 0)  # steps_per_epoch: trained, not yet validated
        start_epoch = state['epoch'] + (0 if start_step else 1)
        # also the original's checkpoints (another optimizer layout, no scheduler states we can use)
        self.notes = resume_optimizer(self.optimizer, self.lr_scheduler, state,
                                      start_epoch * self.steps_per_epoch + start_step)
        if 'scaler' in state:
            self.scaler.load_state_dict(state['scaler'])
        if start_step and 'epoch_loss' in state:
            self.epoch_loss.sum, self.epoch_loss.count = state['epoch_loss']['sum'], state['epoch_loss']['count']
        if 'patch_scheduler' in state:
            self.patch_scheduler.load_state_dict(state['patch_scheduler'])
            self.resumed_global_step = state['patch_scheduler']['step_count']
        else:
            self.patch_scheduler.set_epoch(start_epoch)
            self.resumed_global_step = start_epoch * state.get('steps_per_epoch', self.steps_per_epoch) + start_step
        if 'rng' in state and len(state['rng']) == world_size:
            set_rng_state(state['rng'][rank])
        return start_epoch, start_step

    def new_epoch(self):
        """The running loss starts afresh with every epoch (as the original's)."""
        self.epoch_loss = AverageMeter()

    def state_dict(self, model, config, world_size, epoch, step_in_epoch):
        """The checkpoint of the bare `model` after `step_in_epoch` steps of `epoch`. Every rank
        calls it: the RNG states are gathered from all of them."""
        return {'model': model.state_dict(), 'optimizer': self.optimizer.state_dict(),
                'lr_scheduler': self.lr_scheduler.state_dict(), 'scaler': self.scaler.state_dict(),
                'patch_scheduler': self.patch_scheduler.state_dict(), 'epoch': epoch,
                'step_in_epoch': step_in_epoch, 'max_accuracy': self.max_accuracy, 'config': config.dump(),
                'epoch_loss': {'sum': self.epoch_loss.sum, 'count': self.epoch_loss.count},
                'world_size': world_size, 'steps_per_epoch': self.steps_per_epoch,
                'rng': all_gather_object(get_rng_state())}

    def write_checkpoint(self, model, config, world_size, epoch, step_in_epoch, epoch_file=False):
        """checkpoint.pth (and with `epoch_file` ckpt_epoch_<epoch>.pth, pruned to
        TRAIN.KEEP_CHECKPOINTS) in config.OUTPUT, written by rank 0; every rank calls it."""
        state = self.state_dict(model, config, world_size, epoch, step_in_epoch)
        if get_rank() == 0:
            if epoch_file:
                save_checkpoint(state, os.path.join(config.OUTPUT, f'ckpt_epoch_{epoch}.pth'))
                prune_checkpoints(config.OUTPUT, config.TRAIN.KEEP_CHECKPOINTS)
            save_checkpoint(state, os.path.join(config.OUTPUT, 'checkpoint.pth'))
        barrier()
