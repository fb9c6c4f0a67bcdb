"""Where and when each run was trained: provenance.json beside its logs, written when its training ends, so
that a report rewritten elsewhere names the runs' machine, commit and date, not the rewriting one's."""
import datetime
import json
import os
import platform
import subprocess

from reproduction.plan import ROOT

PROVENANCE = 'provenance.json'


def git_commit():
    try:
        commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        # results folders change while a reproduction runs; only changes to the code make the commit inexact
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no', '--', '.',
                                ':(exclude)results*'], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return 'unknown (not a git checkout)'
    return commit + (' with uncommitted changes to tracked files' if dirty else '')


def machine_description():
    model = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(['lscpu'], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith('Model name:'):
                model = line.split(':', 1)[1].strip()
                break
    except (OSError, subprocess.CalledProcessError):
        pass
    import torch  # only for the version and the device that trained

    device = f'GPU {torch.cuda.get_device_name(0)}' if torch.cuda.is_available() else 'CPU only'
    # the subprocesses use every core (reproduce.py removes OMP_NUM_THREADS), as torch does here by default
    return (f'{model}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads), {device}; '
            f'Python {platform.python_version()}, torch {torch.__version__}')


def write_provenance(run_dir):
    """Record this machine, the checkout's commit and today's date in <run_dir>/provenance.json."""
    record = {'commit': git_commit(), 'machine': machine_description(), 'date': datetime.date.today().isoformat()}
    with open(os.path.join(run_dir, PROVENANCE), 'w') as f:
        json.dump(record, f, indent=1)


def read_provenance(run_dir):
    """{'commit', 'machine', 'date'} of the run in `run_dir`, or None if it has no provenance.json."""
    path = os.path.join(run_dir, PROVENANCE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def summarise(values):
    """'a' when every run has the same value, else 'a (3 runs); b (2 runs)' in order of first appearance;
    'unknown' for runs without a record."""
    counts = {}
    for value in values:
        counts[value or 'unknown'] = counts.get(value or 'unknown', 0) + 1
    if len(counts) == 1:
        return next(iter(counts))
    return '; '.join(f"{value} ({n} run{'s' if n > 1 else ''})" for value, n in counts.items())


def date_range(dates):
    known = sorted(d for d in dates if d)
    if not known:
        return 'unknown'
    return known[0] if known[0] == known[-1] else f'{known[0]} to {known[-1]}'
