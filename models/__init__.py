from .simmim import SimMIM, VisionTransformerForSimMIM
from .vision_transformer import VisionTransformer

MODEL_TYPES = ('pss_vit', 'vit')


def build_model(config, num_classes=None, vit_class=VisionTransformer):
    """The network for config.MODEL.TYPE, its parts (SimMIM / BEiT or plain ViT) from MODEL.VIT.
    'vit' is the same network as 'pss_vit': baselines are trained with the drop ratio at 0 and can
    still be evaluated at any keep rate. `vit_class`: a VisionTransformer subclass taking the same
    arguments (build_simmim's encoder)."""
    if config.MODEL.TYPE not in MODEL_TYPES:
        raise ValueError(f"unknown model type '{config.MODEL.TYPE}'; valid: {', '.join(MODEL_TYPES)}")
    vit = config.MODEL.VIT
    return vit_class(
        img_size=config.DATA.IMG_SIZE,
        patch_size=vit.PATCH_SIZE,
        in_chans=vit.IN_CHANS,
        num_classes=config.MODEL.NUM_CLASSES if num_classes is None else num_classes,
        embed_dim=vit.EMBED_DIM,
        depth=vit.DEPTH,
        num_heads=vit.NUM_HEADS,
        mlp_ratio=vit.MLP_RATIO,
        qkv_bias=vit.QKV_BIAS,
        full_qkv_bias=vit.FULL_QKV_BIAS,
        drop_rate=config.MODEL.DROP_RATE,
        drop_path_rate=config.MODEL.DROP_PATH_RATE,
        init_values=vit.INIT_VALUES,
        use_abs_pos_emb=vit.USE_APE,
        use_rel_pos_bias=vit.USE_RPB,
        use_shared_rel_pos_bias=vit.USE_SHARED_RPB,
        use_mean_pooling=vit.USE_MEAN_POOLING,
        use_checkpoint=config.TRAIN.USE_CHECKPOINT,
        patch_drop_func=config.TRAIN.PATCH_DROP_FUNC,
    )


def build_simmim(config):
    """SimMIM pre-training of the network build_model(config) makes: its encoder is that ViT
    (same arguments, no classifier) with a mask token; see models/simmim.py."""
    return SimMIM(build_model(config, num_classes=0, vit_class=VisionTransformerForSimMIM))


__all__ = ['SimMIM', 'VisionTransformer', 'VisionTransformerForSimMIM', 'build_model', 'build_simmim']
