"""Shared pieces of the viz/ scripts: log readers, curve helpers, the command line, figure output.

A log is returned as a dict of 1-D numpy arrays, one per requested field, plus 'line': the 1-based
line number of each record in its file, so that later checks can still point at a line.

Field meanings are the original's: train_log.json `loss` is the running mean of the epoch's losses so
far and `step_loss` the step's own; val_log.json `time` is the mean time per batch and `total_time`
the whole pass. Logs without the new names are read too, and both names are filled in:
- this project's logs from before the rename (any folder that is not an original run; kept for the
  committed results_digits/runs): `loss` was the step's loss (the running mean is recomputed from it)
  and `time` the whole pass (`time` per batch becomes NaN: it was not recorded);
- the original code's logs (a folder with its config.json and no config.yaml): `step_loss` is
  recovered from the running mean, step by step; `total_time` is NaN (not recorded), and wall-clock
  axes then leave validation out, as the original's own figures did.

Figures are built with `matplotlib.figure.Figure` rather than pyplot: saving a PNG then goes through
the Agg canvas (PDF through the PDF canvas) without selecting a global backend, so importing these
functions from another script or a notebook changes nothing there.
"""
import argparse
import json
import os
import sys

import numpy as np

TRAIN_LOG = 'train_log.json'
VAL_LOG = 'val_log.json'
CONFIG = 'config.yaml'
SWEEP = 'sweep_drop.json'
IMAGE_PATCHES = 'image_patches.json'
PATCH_DISTRIBUTION = 'patch_distribution.json'

# Fields the scripts need by default; a reader can be asked for more (each must be a number).
TRAIN_FIELDS = ('epoch', 'iteration', 'step_loss', 'time', 'patch_drop_ratio')
VAL_FIELDS = ('epoch', 'loss', 'acc1', 'total_time')
SWEEP_FIELDS = ('drop_ratio', 'acc1', 'throughput')

FIGURE_FORMATS = ('.png', '.pdf', '.svg')
DPI = 150
MAX_POINTS = 2000  # points per drawn curve: more than a figure can show, few enough to draw at once


class VizInputError(ValueError):
    """An input that cannot be plotted (malformed, empty, inconsistent); the message names the file,
    and the line where there is one."""


# -----------------------------------------------------------------------------
# Reading
# -----------------------------------------------------------------------------
def _read_text(path):
    try:
        with open(path, encoding='utf-8') as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f'{path}: file not found') from None
    except UnicodeDecodeError as e:
        raise VizInputError(f'{path}: not UTF-8 text ({e.reason} at byte {e.start})') from None


def _first_bad_line(path, lines, line_numbers):
    """Parse line by line to name the first line that is not a JSON object (the slow path)."""
    for text, number in zip(lines, line_numbers):
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            return VizInputError(f'{path} line {number}: not valid JSON ({e.msg} at column {e.colno})')
        if not isinstance(record, dict):
            return VizInputError(f'{path} line {number}: expected a JSON object, got {type(record).__name__}')
    # Every line being a JSON object makes the joined array valid, so this means a bug here.
    return VizInputError(f'{path}: could not be read as JSON Lines')


def read_jsonl(path, fields, optional=()):
    """Read a JSON Lines file into {field: array} (+ 'line'); every record must hold every field as a number.

    A field in `optional` may be absent from every record (it is then left out of the result), but
    not from some only. Blank lines are skipped. Raises FileNotFoundError or VizInputError naming the
    file and line.
    """
    lines = _read_text(path).split('\n')
    line_numbers = [i for i, text in enumerate(lines, 1) if text and not text.isspace()]
    body = [lines[i - 1] for i in line_numbers]
    if not body:
        raise VizInputError(f'{path}: no records (the file is empty)')
    # One json.loads over the joined lines runs in C, several times faster than a loads per line
    # (about 1.5 s for 250,000 training lines). If anything is off, the per-line pass names the line.
    try:
        records = json.loads('[' + ','.join(body) + ']')
    except json.JSONDecodeError:
        records = None
    if records is None or len(records) != len(body) or set(map(type, records)) != {dict}:
        raise _first_bad_line(path, body, line_numbers)

    log = {'line': np.asarray(line_numbers)}
    for field in fields:
        if field in optional and not any(field in record for record in records):
            continue
        try:
            values = [record[field] for record in records]
        except KeyError:
            k = next(i for i, record in enumerate(records) if field not in record)
            raise VizInputError(f"{path} line {line_numbers[k]}: missing field '{field}'") from None
        if not set(map(type, values)) <= {int, float}:
            k = next(i for i, v in enumerate(values) if type(v) not in (int, float))
            raise VizInputError(f"{path} line {line_numbers[k]}: field '{field}' is {values[k]!r}, not a number")
        log[field] = np.asarray(values)  # all-int fields (epoch, iteration) stay int64
    return log


def select(log, index):
    """The records of `log` at `index` (a slice, mask or index array), every field alike."""
    return {key: values[index] for key, values in log.items()}


def keep_last(log, key):
    """One record per value of `key`, the last one in the file, sorted by `key`.

    A resumed run appends the iterations (or epochs) it repeats; the later records are the ones the
    run continued from.
    """
    keys = log[key]
    if len(keys) < 2 or np.all(np.diff(keys) > 0):
        return log
    _, first_in_reversed = np.unique(keys[::-1], return_index=True)  # sorted by key
    return select(log, len(keys) - 1 - first_in_reversed)


def is_original_run(path):
    """Whether the log file `path` lies in a run folder of the original code: its config.json
    and no config.yaml (this project writes both)."""
    folder = os.path.dirname(os.path.abspath(path))
    return os.path.exists(os.path.join(folder, 'config.json')) and not os.path.exists(os.path.join(folder, CONFIG))


def _positions_in_epoch(epochs):
    """0, 1, 2, ... within each run of equal epochs (records sorted by iteration)."""
    starts = np.flatnonzero(np.concatenate([[True], np.diff(epochs) != 0]))
    return np.arange(len(epochs)) - np.repeat(starts, np.diff(np.append(starts, len(epochs))))


def epoch_running_mean(epochs, step_losses):
    """The mean of each epoch's step losses up to and including each step (the original's `loss`)."""
    k = _positions_in_epoch(epochs)
    sums = np.cumsum(step_losses, dtype=float)
    starts = sums - np.asarray(step_losses, dtype=float)  # cumulative sum before each step...
    epoch_start = starts[np.arange(len(k)) - k]  # ... taken at the first step of its epoch
    return (sums - epoch_start) / (k + 1)


def step_losses_from_running_mean(epochs, running_mean):
    """Invert epoch_running_mean: step k of an epoch had (k + 1) m_k - k m_(k-1)."""
    k = _positions_in_epoch(epochs)
    mean = np.asarray(running_mean, dtype=float)
    previous = np.where(k > 0, np.roll(mean, 1), 0.0)
    return (k + 1) * mean - k * previous


def read_train_log(path, fields=TRAIN_FIELDS):
    """train_log.json, one record per iteration, sorted by iteration (repeats after a resume: last wins).

    Iterations must be contiguous: hours are the cumulative sum of the per-iteration times, and a
    missing stretch would silently shorten them. Asking for `loss` or `step_loss` gives both, from
    logs of any format (see the module docstring).
    """
    fields = tuple(dict.fromkeys(('epoch', 'iteration') + tuple(fields)))
    losses = {'loss', 'step_loss'} & set(fields)
    if losses:
        fields = tuple(f for f in fields if f not in losses) + ('loss', 'step_loss')
    log = keep_last(read_jsonl(path, fields, optional=('step_loss',)), 'iteration')
    gaps = np.flatnonzero(np.diff(log['iteration']) != 1)
    if len(gaps):
        before, after = log['iteration'][gaps[0]], log['iteration'][gaps[0] + 1]
        missing = f'iteration {before + 1}' if after == before + 2 else f'iterations {before + 1}-{after - 1}'
        raise VizInputError(f'{path} line {log["line"][gaps[0] + 1]}: iteration {after} follows iteration '
                            f'{before}; {missing} missing')
    if np.any(np.diff(log['epoch']) < 0):
        k = np.flatnonzero(np.diff(log['epoch']) < 0)[0] + 1
        raise VizInputError(f'{path} line {log["line"][k]}: epoch {log["epoch"][k]} after epoch '
                            f'{log["epoch"][k - 1]} at a later iteration')
    if losses and 'step_loss' not in log:  # a log from before the rename, or the original's
        if is_original_run(path):
            log['step_loss'] = step_losses_from_running_mean(log['epoch'], log['loss'])
        else:
            log['step_loss'], log['loss'] = log['loss'], epoch_running_mean(log['epoch'], log['loss'])
    return log


def read_val_log(path, fields=VAL_FIELDS):
    """val_log.json, one record per epoch, sorted by epoch (repeats after a resume: last wins).
    Asking for `time` or `total_time` gives both, from logs of any format (see the module docstring)."""
    fields = tuple(dict.fromkeys(('epoch',) + tuple(fields)))
    times = {'time', 'total_time'} & set(fields)
    if times:
        fields = tuple(f for f in fields if f not in times) + ('time', 'total_time')
    log = keep_last(read_jsonl(path, fields, optional=('total_time',)), 'epoch')
    if times and 'total_time' not in log:  # not recorded under that name: see the module docstring
        unknown = np.full(len(log['epoch']), np.nan)
        if is_original_run(path):
            log['total_time'] = unknown
        else:
            log['total_time'], log['time'] = log['time'], unknown
    return log


def read_sweep(path, fields=SWEEP_FIELDS):
    """sweep_drop.json, one record per drop ratio, sorted by drop ratio (a repeated ratio: last wins)."""
    log = read_jsonl(path, tuple(dict.fromkeys(('drop_ratio',) + tuple(fields))))
    log['drop_ratio'] = np.round(log['drop_ratio'].astype(float), 6)
    return keep_last(log, 'drop_ratio')


def read_json(path, required_keys=()):
    """A file holding one JSON object that has `required_keys`."""
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise VizInputError(f'{path} line {e.lineno}: not valid JSON ({e.msg} at column {e.colno})') from None
    if not isinstance(data, dict):
        raise VizInputError(f'{path}: expected a JSON object, got {type(data).__name__}')
    for key in required_keys:
        if key not in data:
            raise VizInputError(f"{path}: missing field '{key}'")
    return data


def read_config(run_dir):
    """<run_dir>/config.yaml as nested dicts, or None when the run has none."""
    import yaml  # only the scripts that read configs pay for it

    path = os.path.join(run_dir, CONFIG)
    if not os.path.exists(path):
        return None
    try:
        data = yaml.safe_load(_read_text(path))
    except yaml.YAMLError as e:
        raise VizInputError(f'{path}: not valid YAML ({e})') from None
    if not isinstance(data, dict):
        raise VizInputError(f'{path}: expected a mapping of config keys, got {type(data).__name__}')
    return data


def config_value(config, key, source, default=None):
    """config['A']['B'] for key 'A.B'; `default` when absent, or an error naming `source` if None."""
    node = config
    for part in key.split('.'):
        if not isinstance(node, dict) or part not in node:
            if default is None:
                raise VizInputError(f'{source}: missing config key {key}')
            return default
        node = node[part]
    return node


# -----------------------------------------------------------------------------
# Curves
# -----------------------------------------------------------------------------
def keep_ratio(drop_ratio):
    """rho = 1 - drop ratio, rounded so grid values compare equal (1 - 0.8 is 0.19999999999999996)."""
    return np.round(1.0 - np.asarray(drop_ratio, dtype=float), 6)


def moving_average(values, window):
    """Trailing mean over `window` values (fewer at the start), ignoring NaN and inf (a diverged loss)."""
    values = np.asarray(values, dtype=float)
    finite = np.isfinite(values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    end = np.arange(1, len(values) + 1)
    start = np.maximum(end - max(int(window), 1), 0)
    n = counts[end] - counts[start]
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(n > 0, (sums[end] - sums[start]) / np.maximum(n, 1), np.nan)


def downsample_index(n, max_points=MAX_POINTS):
    """Evenly spaced indices into n points, at most about max_points of them, the last one included."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.append(np.arange(0, n, -(-n // max_points)), n - 1))


def epoch_end_hours(train, val, source='val_log'):
    """Wall-clock hours at the end of each validated epoch: training time up to the end of that epoch
    plus the validation passes so far. `train` sorted by iteration, `val` by epoch."""
    trained = np.isin(val['epoch'], train['epoch'])
    if not trained.all():
        k = np.flatnonzero(~trained)[0]
        raise VizInputError(f'{source} line {val["line"][k]}: epoch {val["epoch"][k]} has no training '
                            f'iterations in the training log')
    train_hours = np.cumsum(train['time'], dtype=float) / 3600
    ends = np.searchsorted(train['epoch'], val['epoch'], side='right')  # one past each epoch's last iteration
    # a validation time not recorded (NaN: the original's logs) counts as none, as in its own figures
    return train_hours[ends - 1] + np.cumsum(np.nan_to_num(val['total_time']), dtype=float) / 3600


def time_unit(hours):
    """(factor, short name, long name) to show wall-clock `hours` (any iterable of arrays or numbers) in:
    minutes when the longest is under an hour (a demo run), hours otherwise (ImageNet)."""
    longest = max((float(np.max(h)) for h in hours if np.size(h)), default=0.0)
    return (60.0, 'min', 'minutes') if longest < 1 else (1.0, 'h', 'hours')


def label_colors(labels):
    """One colour per distinct label, in order of first appearance."""
    colors = {}
    for label in labels:
        colors.setdefault(label, f'C{len(colors) % 10}')
    return colors


def group_by_label(labels, items):
    """[(label, [items with that label])] in order of first appearance (seeds of one setting)."""
    groups = {}
    for label, item in zip(labels, items):
        groups.setdefault(label, []).append(item)
    return list(groups.items())


# -----------------------------------------------------------------------------
# Command line and output
# -----------------------------------------------------------------------------
def make_parser(doc, runs_required=True):
    """A parser with --runs, --labels and --out; `doc` is the script's docstring."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--runs', nargs='+', required=runs_required, default=[], metavar='DIR',
                        help='run folders')
    parser.add_argument('--labels', nargs='+', metavar='LABEL',
                        help='one label per run (default: the folder names); runs that share a label '
                             'are one setting (seeds)')
    parser.add_argument('--out', required=True, metavar='FILE', help='the figure to write: .png, .pdf or .svg')
    return parser


def run_labels(runs, labels):
    """The --labels, or the run folders' names; one per run."""
    if labels is None:
        return [os.path.basename(os.path.normpath(run)) for run in runs]
    if len(labels) != len(runs):
        raise VizInputError(f'--labels: got {len(labels)} labels for {len(runs)} runs; give one label per run')
    return list(labels)


def check_out_path(out_path):
    """Fail before any reading when the figure format is unknown."""
    ext = os.path.splitext(out_path)[1].lower()
    if ext not in FIGURE_FORMATS:
        raise VizInputError(f"--out {out_path}: unknown figure format '{ext}'; use one of "
                            f"{', '.join(FIGURE_FORMATS)}")


def save_figure(fig, out_path):
    check_out_path(out_path)
    os.makedirs(os.path.dirname(out_path) or '.', exist_ok=True)
    fig.savefig(out_path, dpi=DPI)


def run_cli(main, argv=None):
    """Run a script's main; input problems print one line (no traceback) and give exit status 1."""
    try:
        main(sys.argv[1:] if argv is None else argv)
    except (VizInputError, OSError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    return 0
