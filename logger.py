"""Logging to the console (rank 0 only, coloured) and to <output>/log_rank<rank>.txt."""
import logging
import os
import sys

from termcolor import colored


def create_logger(output_dir, dist_rank=0, name=''):
    """A logger that writes every rank's messages to its own file and rank 0's to stdout too.

    With output_dir None it only prints (used before the inputs are checked, and by --eval).
    """
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    for handler in list(logger.handlers):  # a fresh set each call (one process may run several jobs)
        logger.removeHandler(handler)
        handler.close()

    fmt = '[%(asctime)s %(name)s] (%(filename)s %(lineno)d): %(levelname)s %(message)s'
    color_fmt = (colored('[%(asctime)s %(name)s]', 'green')
                 + colored('(%(filename)s %(lineno)d)', 'yellow') + ': %(levelname)s %(message)s')
    datefmt = '%Y-%m-%d %H:%M:%S'

    if dist_rank == 0:
        console = logging.StreamHandler(sys.stdout)
        console.setLevel(logging.DEBUG)
        console.setFormatter(logging.Formatter(color_fmt, datefmt=datefmt))
        logger.addHandler(console)

    if output_dir is None:
        return logger
    os.makedirs(output_dir, exist_ok=True)
    file_handler = logging.FileHandler(os.path.join(output_dir, f'log_rank{dist_rank}.txt'), mode='a')
    file_handler.setLevel(logging.DEBUG)
    file_handler.setFormatter(logging.Formatter(fmt, datefmt=datefmt))
    logger.addHandler(file_handler)
    return logger
