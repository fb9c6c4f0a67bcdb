"""Export a fine-tuned checkpoint for timm and the Hugging Face Hub, or as a plain safetensors state dict.

    python export.py --resume <run>/checkpoint.pth --cfg <run>/config.yaml --out <dir>
    python export.py --resume ... --cfg ... --out <dir> --data-path <imagenet>   # label_names from val/
    python export.py --resume ... --cfg ... --out <dir> --arch beit_large_patch16_224   # name another factory
    python export.py --resume ... --cfg ... --out <dir> --state-dict      # our names, for --pretrained

Writes <dir>/model.safetensors with timm's key names and <dir>/config.json in the Hub's timm layout
(timm's own save_for_hf): `architecture` (a timm model name), `num_classes`, `model_args` (the sizes
and parts the name's defaults do not give), `label_names` (the class folders of --data-path, or of
the config's dataset, when at hand) and `pretrained_cfg` with this code's validation preprocessing
(`input_size`, `interpolation`, `mean`, `std`, `crop_pct`, `crop_mode`). Then

    timm.create_model('local-dir:<dir>', pretrained=True)

is the fine-tuned network. The model becomes timm's Beit (`beit_base_patch16_224`) when it has a
relative position bias, q and v biases without a key bias (SimMIM / BEiT) or no absolute position
embedding, else timm's VisionTransformer (`vit_base_patch16_224`, `deit_small_patch16_224` at
width 384). Before
anything is written, the logits of timm's model and of ours at rho = 1 are compared on random
images; a model timm cannot express is refused with one line, and nothing is written.

--state-dict writes <dir>/state_dict.safetensors instead: this code's state dict, with the resolved
config as metadata, which main_finetune.py --pretrained (and sweep_drop.py) read back.
"""
import argparse
import os
import shutil
import sys

import torch

from checkpoint import CheckpointError, has_suffix, load_model_weights, read_model_weights
from config import ConfigError, get_config
from data import DataError
from launch import EXIT_BAD_INPUT
from models import build_model

TIMM_WEIGHTS = 'model.safetensors'
STATE_DICT_WEIGHTS = 'state_dict.safetensors'
WEIGHT_SUFFIXES = ('.safetensors', '.pth', '.pth.tar', '.bin')  # what timm's local-dir: reads from a folder
VERIFY_IMAGES = 2  # random images the exported model must classify as ours does
TOLERANCE = dict(rtol=1e-4, atol=1e-5)  # fp32 logits: the same network, sums in another order


class ExportError(ValueError):
    """A model or an output folder this export cannot serve; the message says what and why."""


def get_parser():
    parser = argparse.ArgumentParser('export.py', description=__doc__.split('\n')[0])
    parser.add_argument('--resume', required=True, metavar='FILE',
                        help='checkpoint to export: a checkpoint.pth of main_finetune.py or its weights')
    parser.add_argument('--cfg', required=True, metavar='FILE',
                        help="the run's config (its config.yaml, or the YAML it was started with)")
    parser.add_argument('--opts', default=None, nargs='+', help='override config options: KEY VALUE pairs')
    parser.add_argument('--out', required=True, metavar='DIR', help='folder to write the export to')
    parser.add_argument('--data-path', type=str,
                        help='dataset root whose val/ class folders give label_names (default: the config\'s)')
    parser.add_argument('--arch', type=str, help='the timm model name to record and build (default: '
                        'beit_base_patch16_224, vit_base_patch16_224 or deit_small_patch16_224, by the model\'s parts)')
    parser.add_argument('--state-dict', action='store_true',
                        help=f'write {STATE_DICT_WEIGHTS} with this code\'s names (for --pretrained), not timm\'s')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='allow checkpoints that pickle Python objects (old releases): only for files you trust')
    return parser


# --- which timm model --------------------------------------------------------------------------
def timm_spec(config, num_classes, arch=None):
    """(timm model name, timm class name, model_args) of the network `config` builds; model_args
    are timm's keyword arguments for its sizes and parts."""
    vit, size = config.MODEL.VIT, config.DATA.IMG_SIZE
    relative = vit.USE_RPB or vit.USE_SHARED_RPB
    q_and_v = vit.QKV_BIAS and not vit.FULL_QKV_BIAS
    common = dict(img_size=size, patch_size=vit.PATCH_SIZE, in_chans=vit.IN_CHANS, embed_dim=vit.EMBED_DIM,
                  depth=vit.DEPTH, num_heads=vit.NUM_HEADS, mlp_ratio=vit.MLP_RATIO, qkv_bias=vit.QKV_BIAS,
                  # 0 for no layer scale: timm.create_model drops None arguments, then beit_base's 0.1 would win
                  init_values=vit.INIT_VALUES,
                  global_pool='avg' if vit.USE_MEAN_POOLING else 'token')
    if arch is None:
        arch = ('beit_base_patch16_224' if relative or q_and_v or not vit.USE_APE else
                'deit_small_patch16_224' if vit.EMBED_DIM == 384 else 'vit_base_patch16_224')
    kind = timm_class(arch)
    if kind == 'Beit':  # a shared table becomes every block's own (to_timm)
        return arch, kind, dict(common, use_abs_pos_emb=vit.USE_APE, use_rel_pos_bias=relative,
                                use_shared_rel_pos_bias=False)
    if relative:
        keys = ' and '.join(k for k in ('USE_RPB', 'USE_SHARED_RPB') if vit[k])
        raise ExportError(f"timm's VisionTransformer ({arch}) has no relative position bias, which this model "
                          f'has (MODEL.VIT.{keys}): use a timm beit model, the default here')
    if not vit.USE_APE:  # timm 1.0's _pos_embed returns the patches alone when there is no pos_embed
        raise ExportError(f"timm's VisionTransformer ({arch}) without an absolute position embedding leaves the "
                          'CLS token out, and this model (MODEL.VIT.USE_APE False) keeps it: use a timm beit '
                          'model, the default here')
    return arch, kind, common


def timm_class(arch):
    """'Beit' or 'VisionTransformer': the class timm's model `arch` is built from."""
    import timm
    from timm.models.beit import Beit
    from timm.models.vision_transformer import VisionTransformer

    if not timm.is_model(arch):
        raise ExportError(f"timm has no model '{arch}' (timm {timm.__version__}); see timm.list_models('*vit*')")
    with torch.device('meta'):  # the class only: no weights allocated
        model = timm.create_model(arch, pretrained=False)
    for cls in (Beit, VisionTransformer):
        if type(model) is cls:  # not a subclass: a distilled DeiT has parts this model lacks
            return cls.__name__
    raise ExportError(f"timm's '{arch}' is a {type(model).__name__}; this export writes timm's Beit or "
                      'VisionTransformer models')


def to_timm(state_dict, kind, timm_state):
    """Our state dict in timm's names, for timm's `kind` ('Beit' or 'VisionTransformer') model whose
    own state dict is `timm_state` (its relative_position_index buffers are kept, rebuilt by timm).
    Returns (state dict, notes)."""
    out, notes = {}, []
    state_dict = dict(state_dict)
    shared = state_dict.pop('rel_pos_bias.relative_position_bias_table', None)
    if shared is not None:
        # timm 1.0.22 cannot load a Beit with a shared table (pretrained=True drops its index buffer, then
        # the strict load misses it): each block gets its own, plus the shared one. The same sums of the
        # same two numbers as ours, looked up after instead of before adding.
        blocks = sorted({int(k.split('.')[1]) for k in state_dict if k.startswith('blocks.')})
        for i in blocks:
            own = state_dict.get(f'blocks.{i}.attn.relative_position_bias_table')
            state_dict[f'blocks.{i}.attn.relative_position_bias_table'] = shared if own is None else own + shared
        state_dict.pop('rel_pos_bias.relative_position_index', None)
        notes.append('the shared relative position bias table (MODEL.VIT.USE_SHARED_RPB) is added into every '
                     "block's table: timm 1.0.22 loads no Beit with a shared table")
    for key, value in state_dict.items():
        if key.endswith('relative_position_index'):
            continue
        block, _, name = key.partition('.attn.') if '.attn.' in key else (None, None, None)
        if kind == 'VisionTransformer':
            key = key.replace('.gamma_1', '.ls1.gamma').replace('.gamma_2', '.ls2.gamma')
            if name == 'q_bias':  # q and v biases: timm's one qkv bias, with the key's zero between them
                out[f'{block}.attn.qkv.bias'] = torch.cat([value, torch.zeros_like(value), state_dict[
                    f'{block}.attn.v_bias']])
                continue
            if name == 'v_bias':
                continue
        elif name == 'qkv.bias':  # Beit has no key bias: it adds q . b_k, the same for every key of a
            q, _, v = value.chunk(3)  # query, which the softmax cancels; the logits check confirms it
            out[f'{block}.attn.q_bias'], out[f'{block}.attn.v_bias'] = q, v
            if not any('key bias' in note for note in notes):
                notes.append("the key bias (MODEL.VIT.FULL_QKV_BIAS) is left out: timm's Beit has none, and it "
                             'cannot change the output (q . b_k is the same for every key; softmax cancels it)')
            continue
        out[key] = value
    out.update({k: v for k, v in timm_state.items() if k.endswith('relative_position_index')})
    return {k: v.contiguous() for k, v in out.items()}, notes


def pretrained_cfg(config, num_classes, timm_cfg):
    """timm's pretrained_cfg for this model: the validation preprocessing of data/build.py
    (short side to 256/224 of the size, centre crop, or with TEST.CROP False a plain resize)."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    size = config.DATA.IMG_SIZE
    interpolation = config.DATA.INTERPOLATION
    cfg = {key: timm_cfg[key] for key in ('architecture', 'first_conv', 'classifier') if key in timm_cfg}
    cfg.update(num_classes=num_classes, input_size=(config.MODEL.VIT.IN_CHANS, size, size),
               interpolation='bicubic' if interpolation == 'random' else interpolation,
               mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
               crop_pct=224 / 256 if config.TEST.CROP else 1.0, crop_mode='center' if config.TEST.CROP else 'squash')
    return cfg


def label_names(config, num_classes, explicit):
    """The class folder names in class-index order (those of val/ under DATA.DATA_PATH, or of the
    digits / Fashion-MNIST export), or None when the dataset is not at hand. A data path given on
    the command line (`explicit`) must be there; the config's may be another machine's."""
    from data.build import dataset_root
    from data.folder import class_folders, split_dir

    if num_classes == 0 or (config.DATA.DATASET == 'imagenet' and not config.DATA.DATA_PATH):
        return None
    try:
        names = class_folders(split_dir(dataset_root(config, training=False), 'val'))
    except DataError:
        if explicit:
            raise
        return None
    if len(names) != num_classes:
        raise ExportError(f"'{config.DATA.DATA_PATH or config.DATA.DATASET}' has {len(names)} class folders, the "
                          f'checkpoint {num_classes} classes: pass the --data-path the model was trained on')
    return names


# --- writing -------------------------------------------------------------------------------------
def check_out_folder(out, keep):
    """ExportError when `out` holds weight files other than `keep`: timm's local-dir: would read those."""
    if not os.path.isdir(out):
        if os.path.exists(out):
            raise ExportError(f"--out '{out}' is a file, not a folder")
        return
    others = sorted(name for name in os.listdir(out) if has_suffix(name, *WEIGHT_SUFFIXES) and name != keep)
    if others:
        raise ExportError(f"--out '{out}' already holds {', '.join(others)}; timm's local-dir: reads every weight "
                          'file in the folder: export to an empty folder')


def publish(tmp_dir, out):
    """Move every file of `tmp_dir` into `out` (each an atomic rename) with the usual permissions
    (safetensors creates its files readable by their owner only)."""
    umask = os.umask(0)
    os.umask(umask)
    os.makedirs(out, exist_ok=True)
    for name in sorted(os.listdir(tmp_dir)):
        os.chmod(os.path.join(tmp_dir, name), 0o666 & ~umask)
        os.replace(os.path.join(tmp_dir, name), os.path.join(out, name))


def write_files(out, write):
    """write(folder) into a temporary folder beside `out`, then the files into `out`: an export
    stopped half-way leaves `out` as it was."""
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp_dir = os.path.join(parent, f'.{os.path.basename(os.path.abspath(out))}.{os.getpid()}.tmp')
    try:
        os.makedirs(tmp_dir)
        write(tmp_dir)
        publish(tmp_dir, out)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def export_state_dict(model, config, out):
    from safetensors.torch import save_file

    check_out_folder(out, STATE_DICT_WEIGHTS)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith('relative_position_index')}
    write_files(out, lambda folder: save_file(state, os.path.join(folder, STATE_DICT_WEIGHTS),
                                              metadata={'format': 'pss', 'config': config.dump()}))
    print(f"wrote {os.path.join(out, STATE_DICT_WEIGHTS)}: this code's state dict ({len(state)} tensors); "
          f"read it back with --pretrained {os.path.join(out, STATE_DICT_WEIGHTS)}")


def export_timm(model, config, out, num_classes, arch=None, explicit_data_path=False):
    """Build timm's model, load the converted weights strictly, compare logits, then save_for_hf."""
    import timm
    from timm.models import save_for_hf

    check_out_folder(out, TIMM_WEIGHTS)
    arch, kind, model_args = timm_spec(config, num_classes, arch)
    names = label_names(config, num_classes, explicit_data_path)
    timm_model = timm.create_model(arch, pretrained=False, num_classes=num_classes, **model_args).eval()
    state, notes = to_timm(model.state_dict(), kind, timm_model.state_dict())
    try:
        timm_model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # names or shapes differ: a part timm's class does not have
        reason = ' '.join(str(e).split())
        raise ExportError(f"timm's {kind} ({arch}) cannot hold this model's weights: {reason[:400]}") from None
    torch.manual_seed(0)
    images = torch.randn(VERIFY_IMAGES, config.MODEL.VIT.IN_CHANS, config.DATA.IMG_SIZE, config.DATA.IMG_SIZE)
    model.set_patch_drop_ratio(0.0)
    with torch.no_grad():
        ours, theirs = model(images), timm_model(images)
    difference = (ours - theirs).abs().max().item()
    if not torch.allclose(theirs, ours, **TOLERANCE):
        raise ExportError(f"timm's {kind} ({arch}) with these weights computes other logits (largest difference "
                          f'{difference:.2e}): it lacks a part of this model')
    timm_model.pretrained_cfg = timm_model.default_cfg = pretrained_cfg(config, num_classes, timm_model.pretrained_cfg)
    write_files(out, lambda folder: save_for_hf(timm_model, folder, model_config={'label_names': names} if names
                                                else None, model_args=model_args, safe_serialization=True))
    print(f"wrote {os.path.join(out, TIMM_WEIGHTS)} and {os.path.join(out, 'config.json')}: timm {kind} '{arch}', "
          f"{num_classes} classes, label_names {'from the class folders' if names else 'not known (--data-path)'}")
    for note in notes:
        print(f'note: {note}')
    print(f'logits equal to this model\'s at rho = 1 within {difference:.1e} (fp32, {VERIFY_IMAGES} random images)')
    print(f"load it with timm.create_model('local-dir:{out}', pretrained=True)")


def main(argv=None):
    args = get_parser().parse_args(argv)
    try:
        config = get_config(args)  # --resume, --data-path and --trust-checkpoint are config shortcuts
        path = config.MODEL.RESUME
        state_dict = read_model_weights(path, trusted=config.TRUST_CHECKPOINT)
        head = state_dict.get('head.weight')
        num_classes = head.shape[0] if head is not None else 0  # as trained, whatever the YAML says
        model = build_model(config, num_classes=num_classes).eval()
        load_model_weights(path, model, state_dict=state_dict)
        if args.state_dict:
            export_state_dict(model, config, args.out)
        else:
            export_timm(model, config, args.out, num_classes, args.arch, explicit_data_path=bool(args.data_path))
    except (ConfigError, CheckpointError, DataError, OSError) as e:
        print(f'error: {e}', file=sys.stderr)
        return EXIT_BAD_INPUT
    except ExportError as e:
        print(f'error: {e}; nothing written', file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == '__main__':
    sys.exit(main())
