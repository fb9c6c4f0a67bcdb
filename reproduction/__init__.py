"""reproduce.py's pieces: what is run, running it, what the runs measured, the claims and the report.

    plan.py      the schedules, seeds, epochs and scales of the full and --quick plans, and the runs they make
    stages.py    each run's stages (training, sweep, image patches, patch distribution) as resumable
                 subprocesses, their timings and progress; the figures
    results.py   the finished runs read back from <out>/runs, and the numbers measured from them
    claims.py    the paper's five claims: its numbers, the criteria, the tables and verdicts
    report.py    <out>/README.md
"""
