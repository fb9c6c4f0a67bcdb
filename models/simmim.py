"""SimMIM pre-training (Xie et al. 2022) of the fine-tuning ViT: masked patches, a linear decoder,
an L1 loss on the masked pixels.

    model = SimMIM(VisionTransformerForSimMIM(img_size=224, patch_size=16, ...))   # models.build_simmim
    loss = model(images, mask)   # images [B, 3, H, W] normalised; mask [B, H/p, W/p], 1 = masked

The encoder is models/vision_transformer.py's VisionTransformer (num_classes 0) plus a learned
`mask_token`, so the pre-trained weights have the fine-tuning model's names: a checkpoint's
`model` holds `encoder.*` (what `--pretrained` loads) and `decoder.*` (ignored there).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
import quiet_timm  # noqa: F401  (before timm, which warns at import)
from timm.layers import trunc_normal_

from .vision_transformer import VisionTransformer


class VisionTransformerForSimMIM(VisionTransformer):
    """The ViT encoder of SimMIM: every token, no classifier, patch tokens returned as a grid."""

    def __init__(self, **kwargs):
        super().__init__(**dict(kwargs, num_classes=0))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)  # SimMIM truncates at one std
        # SimMIM's ViT initialises convolutions as its linear layers; fine-tuning loads this one
        trunc_normal_(self.patch_embed.proj.weight, std=0.02)
        nn.init.zeros_(self.patch_embed.proj.bias)

    def embed_masked(self, x, mask):
        """Images [B, C, H, W] and mask [B, h, w] -> tokens [B, 1 + h*w, D].

        The embedding of every masked patch is replaced by `mask_token`, before the CLS token and
        the absolute position embedding are added (so a masked token still knows where it is).
        """
        x = self.patch_embed(x)  # [B, L, D], L = h * w
        w = mask.flatten(1).unsqueeze(-1).type_as(self.mask_token)  # [B, L, 1]
        x = x * (1 - w) + self.mask_token * w
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        return self.pos_drop(x)

    def forward(self, x, mask):
        """Images [B, C, H, W], mask [B, h, w] -> patch features [B, D, h, w] after the final norm."""
        if self.patch_drop_ratio > 0:
            raise ValueError('SimMIM pre-training runs the encoder on every token: patch drop ratio must be 0')
        tokens = self.forward_tokens(self.embed_masked(x, mask))[:, 1:]  # [B, L, D], CLS dropped
        h, w = self.patch_embed.grid_size
        return tokens.transpose(1, 2).reshape(tokens.shape[0], self.embed_dim, h, w)


def simmim_loss(images, reconstruction, pixel_mask):
    """SimMIM's loss: the mean absolute error over the masked pixels, channels averaged.

    images, reconstruction: [B, C, H, W]; pixel_mask: [B, 1, H, W], 1 = masked. The L1 sum over
    masked pixels and channels, divided by (number of masked pixels + 1e-5) and by C.
    """
    per_pixel = F.l1_loss(reconstruction, images, reduction='none')  # [B, C, H, W]
    pixel_mask = pixel_mask.to(per_pixel.dtype)
    return (per_pixel * pixel_mask).sum() / (pixel_mask.sum() + 1e-5) / images.shape[1]


class SimMIM(nn.Module):
    """Encoder, then a 1x1 convolution to patch_size^2 * C values per patch and a pixel shuffle by
    patch_size: one linear prediction of each patch's pixels. forward(images, mask) -> loss."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder
        self.patch_size = encoder.patch_embed.proj.kernel_size[0]
        self.in_chans = encoder.patch_embed.proj.in_channels
        self.decoder = nn.Sequential(
            nn.Conv2d(encoder.embed_dim, self.patch_size ** 2 * self.in_chans, kernel_size=1),
            nn.PixelShuffle(self.patch_size))  # [B, p*p*C, h, w] -> [B, C, h*p, w*p]

    def reconstruct(self, images, mask):
        """images [B, C, H, W], mask [B, h, w] -> the predicted images [B, C, H, W] (every pixel)."""
        return self.decoder(self.encoder(images, mask))

    def forward(self, images, mask):
        reconstruction = self.reconstruct(images, mask)
        p = self.patch_size
        pixel_mask = mask.repeat_interleave(p, 1).repeat_interleave(p, 2).unsqueeze(1)  # [B, 1, H, W]
        return simmim_loss(images, reconstruction, pixel_mask)

    # --- what the shared optimizer and training loop ask of a model ------------------------------
    def no_weight_decay(self):
        # the encoder's names (as SimMIM: mask_token, a 3-D tensor, is decayed like any weight)
        return {f'encoder.{name}' for name in self.encoder.no_weight_decay()}

    def get_num_layers(self):
        return self.encoder.get_num_layers()

    def set_patch_drop_ratio(self, drop_ratio):
        """Pre-training keeps every token; the loop's patch scheduler is 'none' (always 0)."""
        self.encoder.set_patch_drop_ratio(drop_ratio)

    @property
    def patch_drop_ratio(self):
        return self.encoder.patch_drop_ratio
