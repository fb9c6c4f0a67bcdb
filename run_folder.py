"""The run folder <output>/<MODEL.NAME>/<TAG>: one run at a time, no stale files, resume = same run.

    with RunLock(config.OUTPUT) as lock:          # rank 0; a second run into the folder exits 2
        remove_stale_tmp_files(config.OUTPUT)    # what a kill -9 during a checkpoint write left
        check_same_classes(state, path, classes, config)                   # before resuming: the dataset,
        check_same_run(state, path, config, world_size, steps_per_epoch)   # the config

The lock is a file created exclusively (O_CREAT | O_EXCL) that records the holder's host and pid.
A lock whose pid no longer runs on this host is stale (the holder was killed) and is taken over
with a warning; a lock from another host cannot be checked, so it stands until removed by hand.
"""
import json
import logging
import os
import re
import socket

import yaml

from config import ConfigError, get_default_config
from utils import first_n

LOCK_NAME = 'run.lock'
# save_checkpoint's temporary files (.<name>.<pid>.<hex id>.tmp) and truncate_logs' (<log>.tmp)
_TMP_RE = re.compile(r'\.(checkpoint\.pth|ckpt_epoch_\d+\.pth)\.\d+\.[0-9a-f]+\.tmp|(train|val)_log\.json\.tmp')

# Config keys that do not change what a run computes, so a resume may change them: where the output
# goes, what is logged, how often checkpoints are written, how data is loaded (not which data), how
# the same computation is carried out, and the run's mode and inputs for starting (a resume replaces
# the weights anyway). MODEL.NUM_CLASSES is set from the dataset, whose class names the checkpoint
# stores and check_same_classes compares. Every other key (data, model, optimisation, schedules,
# augmentation, seed) changes the run, as does the world size and the number of optimizer steps per
# epoch.
RUN_INDEPENDENT_KEYS = frozenset({
    'OUTPUT', 'TAG', 'PRINT_FREQ', 'SAVE_FREQ', 'EVAL_MODE', 'THROUGHPUT_MODE', 'PRETRAINED',
    'TRUST_CHECKPOINT', 'LOCAL_RANK', 'MODEL.RESUME', 'MODEL.NUM_CLASSES', 'DATA.DATA_PATH',
    'DATA.NUM_WORKERS', 'DATA.PIN_MEMORY', 'TRAIN.AUTO_RESUME', 'TRAIN.KEEP_CHECKPOINTS',
    'TRAIN.CHECKPOINT_EVERY_STEPS', 'TRAIN.START_EPOCH', 'TRAIN.COMPILE', 'TRAIN.USE_CHECKPOINT',
    'TRAIN.ALLOW_CONFIG_CHANGE', 'TRAIN.CUDA_GRAPHS', 'LOG_DIR', 'WANDB.PROJECT', 'WANDB.ENTITY',
})
_MAX_LISTED = 8

logger = logging.getLogger(__name__)


class RunFolderError(ConfigError):
    """The run folder is in use, or a checkpoint belongs to another run; the message says what to do."""


# --- lock ------------------------------------------------------------------------------------------
def _pid_running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _read_lock(path):
    """The lock's {'host', 'pid'}, or None when it vanished; {} when it cannot be parsed."""
    try:
        with open(path) as f:
            holder = json.loads(f.read() or '{}')
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


class RunLock:
    """Hold `folder` (created if needed) for this process while training; see the module docstring.

    Raises RunFolderError when another live process holds it. On release the lock file is removed,
    and so are the folders this lock created if they are still empty (a run refused for bad input
    leaves nothing behind).
    """

    def __init__(self, folder, log=logger):
        self.folder = folder
        self.log = log
        self.path = os.path.join(folder, LOCK_NAME)
        self.holder = {'host': socket.gethostname(), 'pid': os.getpid()}
        self._created = []
        self._held = False

    def _make_folders(self):
        missing, folder = [], os.path.abspath(self.folder)
        while not os.path.isdir(folder):
            missing.append(folder)
            folder = os.path.dirname(folder)
        for folder in reversed(missing):
            try:
                os.mkdir(folder)
                self._created.append(folder)
            except FileExistsError:
                pass  # created meanwhile by another run

    def _try_create(self):
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, 'w') as f:
            f.write(json.dumps(self.holder))
        return True

    def _take_over(self, stale):
        """Remove the stale lock `stale` unless another run replaced it meanwhile."""
        aside = f'{self.path}.{os.getpid()}.stale'
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if _read_lock(aside) != stale:  # we moved a fresh lock: put it back if its place is free
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        os.remove(aside)

    def acquire(self):
        self._make_folders()
        for _ in range(3):  # a stale lock taken over, or a holder that exited while we looked
            if self._try_create():
                self._held = True
                return self
            holder = _read_lock(self.path)
            if holder is None:
                continue
            host, pid = holder.get('host'), holder.get('pid')
            if host == self.holder['host'] and isinstance(pid, int) and (pid == os.getpid() or not _pid_running(pid)):
                self.log.warning(f"run folder '{self.folder}': taking over the lock of pid {pid}, which no "
                                 'longer runs (killed?)')
                self._take_over(holder)
                continue
            break
        self._remove_created()
        who = f'pid {holder.get("pid")} on host {holder.get("host")}' if holder else 'an unreadable lock'
        raise RunFolderError(
            f"run folder '{self.folder}' is in use by {who} ({self.path}); wait for that run to end, or "
            f"write to another folder (--tag or --output); if no run uses it, delete '{self.path}'")

    def release(self):
        if self._held and _read_lock(self.path) == self.holder:
            os.remove(self.path)
        self._held = False
        self._remove_created()

    def _remove_created(self):
        for folder in reversed(self._created):
            try:
                os.rmdir(folder)  # only if empty
            except OSError:
                break
        self._created = []

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


# --- stale temporary files -------------------------------------------------------------------------
def remove_stale_tmp_files(folder):
    """Delete the temporary files an interrupted checkpoint or log write left in `folder`.
    Safe only while holding the folder's RunLock (no other run is writing them). Returns the paths."""
    if not os.path.isdir(folder):
        return []
    removed = [os.path.join(folder, name) for name in sorted(os.listdir(folder)) if _TMP_RE.fullmatch(name)]
    for path in removed:
        os.remove(path)
    return removed


# --- resume compatibility --------------------------------------------------------------------------
def _flatten(node, prefix=''):
    flat = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f'{prefix}{key}.'))
        else:
            flat[f'{prefix}{key}'] = value
    return flat


def _normalised(key, value):
    if key == 'TRAIN.ACCUMULATION_STEPS':
        return max(1, value)  # 0 and 1 both mean no accumulation
    if isinstance(value, tuple):
        return list(value)
    return value


def run_config_differences(saved, config):
    """['KEY: <saved> in the checkpoint, <now> now', ...] for the keys that change the run.
    `saved`: the checkpoint's config as YAML text; a key it lacks (written by an older version)
    counts as its default value."""
    saved = _flatten(yaml.safe_load(saved) or {})
    now = _flatten(yaml.safe_load(config.dump()))
    default = _flatten(yaml.safe_load(get_default_config().dump()))
    differences = []
    for key in sorted(now):
        if key in RUN_INDEPENDENT_KEYS:
            continue
        old = _normalised(key, saved.get(key, default.get(key)))
        new = _normalised(key, now[key])
        if old != new:
            differences.append(f'{key}: {old!r} in the checkpoint, {new!r} now')
    return differences


def check_same_run(state, path, config, world_size, steps_per_epoch, log=logger):
    """Raise RunFolderError unless resuming `state` (read from `path`) continues the same run:
    the same resolved config (apart from RUN_INDEPENDENT_KEYS), world size and optimizer steps per
    epoch. TRAIN.ALLOW_CONFIG_CHANGE True turns the error into a warning. A checkpoint without a
    YAML config (the original code's pickles a yacs CfgNode, or none) is not compared: a note says so."""
    saved = state.get('config')
    if not isinstance(saved, str):
        log.warning(f"checkpoint '{path}' holds no YAML config (a checkpoint of the original code?): "
                    'its config and world size are not compared with this run')
        return []
    try:
        differences = run_config_differences(saved, config)
    except yaml.YAMLError:
        log.warning(f"checkpoint '{path}': its config cannot be parsed, so it is not compared with this run")
        return []
    saved_world = state.get('world_size', len(state['rng']) if isinstance(state.get('rng'), list) else None)
    if saved_world is not None and saved_world != world_size:
        differences.append(f'world size (processes): {saved_world} in the checkpoint, {world_size} now')
    saved_steps = state.get('steps_per_epoch')
    if saved_steps is not None and saved_steps != steps_per_epoch and not differences:
        differences.append(f'optimizer steps per epoch: {saved_steps} in the checkpoint, {steps_per_epoch} '
                           'now (another dataset, or DATA.SKIP_BAD_IMAGES?)')
    if not differences:
        return []
    shown = first_n(differences, _MAX_LISTED, '; ')
    if config.TRAIN.ALLOW_CONFIG_CHANGE:
        log.warning(f"resuming '{path}' with a changed run (TRAIN.ALLOW_CONFIG_CHANGE): {shown}")
        return differences
    raise RunFolderError(
        f"checkpoint '{path}' belongs to another run: {shown}. A resume continues the same run: "
        'to start a new one, write to another folder (--tag or --output); to continue this checkpoint '
        'with the new settings on purpose, add --opts TRAIN.ALLOW_CONFIG_CHANGE True')


def class_difference(saved, classes):
    """How the dataset's class names `classes` differ from a checkpoint's `saved` ones, in one line
    ('' when they are the same, in the same order: a class is its index to the classifier)."""
    if list(saved) == list(classes):
        return ''
    gone, new = [c for c in saved if c not in classes], [c for c in classes if c not in saved]
    if len(saved) != len(classes):
        head = f'{len(saved)} classes in the checkpoint, {len(classes)} now'
    else:
        i = next(i for i, (a, b) in enumerate(zip(saved, classes)) if a != b)
        head = f'class {i} is {saved[i]!r} in the checkpoint, {classes[i]!r} now'
    names = [f'{what}: {first_n(items, _MAX_LISTED)}' for what, items in
             (('not in the checkpoint', new), ('not in the dataset', gone)) if items]
    return f"{head} ({'; '.join(names)})" if names else head


def check_same_classes(state, path, classes, config, log=None):
    """Raise RunFolderError unless the dataset's `classes` are those the checkpoint `state` (read
    from `path`) was trained on, in order: its 'classes' (a checkpoint written before they were
    stored is not compared; a note says so). As in check_same_run, TRAIN.ALLOW_CONFIG_CHANGE True
    turns other names into a warning; another number of classes cannot continue (the classifier has
    another shape)."""
    log = log or logger
    saved = state.get('classes')
    if saved is None:
        log.info(f"checkpoint '{path}' holds no class names (an older checkpoint): the classes are not compared "
                 'with the dataset')
        return ''
    difference = class_difference(saved, classes)
    if not difference:
        return ''
    message = f"checkpoint '{path}' was trained on other classes than the dataset's: {difference}"
    same_number = len(saved) == len(classes)
    if same_number and config.TRAIN.ALLOW_CONFIG_CHANGE:
        log.warning(f'resuming with a changed run (TRAIN.ALLOW_CONFIG_CHANGE): {message}')
        return difference
    raise RunFolderError(
        f'{message}. A resume continues the same run: to start a new one, write to another folder (--tag or '
        '--output)' + ('; to continue this checkpoint with these classes on purpose, add --opts '
                       'TRAIN.ALLOW_CONFIG_CHANGE True' if same_number else ''))


def unused_pretrained(state, path, config):
    """A warning when --pretrained (config PRETRAINED) names other weights than the run that the
    resume continues started from: they are not used (the resumed weights replace them); else None."""
    saved = state.get('config')
    try:
        saved = yaml.safe_load(saved) if isinstance(saved, str) else saved
    except yaml.YAMLError:
        saved = None
    started = saved.get('PRETRAINED') if isinstance(saved, dict) else None  # a yacs CfgNode is a dict
    if not config.PRETRAINED or started == config.PRETRAINED:
        return None
    origin = ('' if started is None else ', which started from random weights' if not started
              else f", which started from '{started}'")
    return (f"--pretrained '{config.PRETRAINED}' is not used: the run resumes from '{path}'{origin}; to fine-tune "
            'from it, start a new run (--tag or --output)')
