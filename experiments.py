"""What sweep_drop.py, image_patches.py and patch_distribution.py share: the flags, the checkpoint
to evaluate, the drop-ratio and output-folder checks and atomic writes.

In these scripts --pretrained (config PRETRAINED), or --resume, names the exact weights to evaluate:
`build_model_from_checkpoint` loads every weight as it is (checkpoint.load_model_weights) and fails
on any missing, unexpected or misshapen one. In training, --pretrained names weights to start from,
which pretrained.load_pretrained converts and resizes.
"""
import argparse
import os

from checkpoint import CheckpointError, load_model_weights
from config import ConfigError
from launch import check_output_writable, finetune_parser
from models import build_model

EVALUATED_HELP = 'checkpoint to evaluate, every weight as it is (or --resume)'


def get_parser(doc, drop_ratios):
    """main_finetune.py's flags (so they never drift), --pretrained naming the weights to evaluate,
    plus --drop-ratios."""
    parser = finetune_parser(EVALUATED_HELP, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--drop-ratios', type=float, nargs='+', default=list(drop_ratios), metavar='D',
                        help=f'drop ratios to evaluate, each in [0, 1) (default: {" ".join(map(str, drop_ratios))})')
    return parser


def checkpoint_path(config):
    """The checkpoint to evaluate: --pretrained, or --resume; checked for existence before the
    (possibly long) image verification."""
    paths = {p for p in (config.PRETRAINED, config.MODEL.RESUME) if p}
    if not paths:
        raise ConfigError('no checkpoint to evaluate: pass --pretrained <checkpoint.pth>')
    if len(paths) > 1:
        raise ConfigError(f"--pretrained '{config.PRETRAINED}' and --resume '{config.MODEL.RESUME}' name "
                          'two checkpoints; pass one checkpoint to evaluate')
    path = paths.pop()
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint '{path}' not found" if not os.path.exists(path)
                              else f"checkpoint '{path}' is not a file")
    return path


def build_model_from_checkpoint(path, config, num_classes, device):
    """The configured network with the weights of checkpoint `path`, in eval mode on `device`."""
    model = build_model(config, num_classes=num_classes)
    load_model_weights(path, model, trusted=config.TRUST_CHECKPOINT)
    return model.to(device).eval()


def check_drop_ratios(model, drop_ratios):
    """ConfigError unless every drop ratio is in [0, 1) and keeps at least one patch besides CLS."""
    for drop_ratio in drop_ratios:
        if not 0.0 <= drop_ratio < 1.0:
            raise ConfigError(f'--drop-ratios: {drop_ratio} is outside [0, 1) (rho = 1 - drop ratio)')
        if model.num_kept_tokens(drop_ratio) < 2:  # CLS alone: the mean over kept patches is empty
            raise ConfigError(f'--drop-ratios: {drop_ratio} keeps no patch of the {model.num_tokens - 1} '
                              f'(round((1 - {drop_ratio}) * {model.num_tokens}) tokens = CLS only)')


def check_output_folder(config):
    """ConfigError unless the output folder is writable or can be created: checked before the pass,
    which would otherwise be lost to the failed write at its end."""
    try:
        check_output_writable(config.OUTPUT)
    except OSError as e:
        raise ConfigError(str(e)) from None
