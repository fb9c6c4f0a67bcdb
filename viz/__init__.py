"""Figures from run folders: each module is a script (`python viz/<name>.py --runs DIR ... --out FILE`)
that also exposes its plotting function for other code.

    patch_schedules.py    rho over training for the configured schedules
    training_curves.py    training loss, validation accuracy and loss vs iterations, epochs and wall-clock time
    train_times.py        time per iteration across one epoch, by rho
    sweep_drop_ratio.py   accuracy vs rho at inference, throughput at the points
    image_patches.py      which patches the model keeps, per image and rho
    patch_distribution.py how often each patch position is kept, per rho
    overview.py           accuracy vs training time, and accuracy vs rho

`viz.common` holds the log readers (line-numbered errors) and the command-line plumbing.
"""
