"""MobileSAM's image encoder: timm's TinyViT arranged the way MobileSAM uses it.

MobileSAM (Zhang et al. 2023) replaces SAM's ViT image encoder by a TinyViT-5M
distilled from it; the prompt encoder and mask decoder are SAM's own. The encoder
here is built from ``timm``'s maintained TinyViT blocks with MobileSAM's two
changes: the last downsampling keeps the resolution (stride 1), so a 1024 input
gives SAM's 64x64 grid, and SAM's neck maps the 320 channels to 256.

The official ``mobile_sam.pt`` names its modules after MobileSAM's copy of the
TinyViT code, which timm reorganised; :func:`official_to_timm_state_dict`
translates the names (see :func:`official_to_timm_key` for the rules).
"""

from __future__ import annotations

import torch
from torch import nn

MOBILE_SAM_EMBED_DIMS: tuple[int, ...] = (64, 128, 160, 320)
MOBILE_SAM_DEPTHS: tuple[int, ...] = (2, 2, 6, 2)
MOBILE_SAM_NUM_HEADS: tuple[int, ...] = (2, 4, 5, 10)
MOBILE_SAM_WINDOW_SIZES: tuple[int, ...] = (7, 7, 14, 7)

# Prefix of the image encoder's keys in a whole-SAM state dict.
ENCODER_PREFIX = "image_encoder."
# MobileSAM keeps TinyViT's ImageNet classifier in its checkpoint; SAM never uses it.
_UNUSED_OFFICIAL_PREFIXES = ("norm_head.", "head.")


class TinyViTImageEncoder(nn.Module):
    """TinyViT image encoder with SAM's neck, as in MobileSAM.

    Parameters
    ----------
    img_size : int
        Side of the square input SAM feeds the encoder (1024 for MobileSAM);
        exposed as ``img_size`` because SAM's preprocessing reads it.
    embed_dims, depths, num_heads, window_sizes : tuple of int
        Per stage; the defaults are MobileSAM's (TinyViT-5M).
    out_chans : int
        Channels of the output embedding (SAM's prompt dimension, 256).

    Notes
    -----
    Input: (B, 3, img_size, img_size) float, normalised by SAM. Output:
    (B, out_chans, img_size / 16, img_size / 16) float: the patch embedding
    divides by 4 and every downsampling but the last by 2.
    """

    def __init__(
        self,
        *,
        img_size: int = 1024,
        embed_dims: tuple[int, ...] = MOBILE_SAM_EMBED_DIMS,
        depths: tuple[int, ...] = MOBILE_SAM_DEPTHS,
        num_heads: tuple[int, ...] = MOBILE_SAM_NUM_HEADS,
        window_sizes: tuple[int, ...] = MOBILE_SAM_WINDOW_SIZES,
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        from segment_anything.modeling.common import LayerNorm2d
        from timm.models.tiny_vit import TinyVit

        if not len(embed_dims) == len(depths) == len(num_heads) == len(window_sizes) >= 2:
            raise ValueError(
                "embed_dims, depths, num_heads and window_sizes need one entry per stage "
                f"and at least two stages; got {embed_dims}, {depths}, {num_heads}, "
                f"{window_sizes}."
            )
        trunk = TinyVit(
            num_classes=0,
            embed_dims=tuple(embed_dims),
            depths=tuple(depths),
            num_heads=tuple(num_heads),
            window_sizes=tuple(window_sizes),
            drop_path_rate=0.0,
        )
        # Only the feature trunk is kept: timm's classifier head is not part of SAM.
        self.patch_embed = trunk.patch_embed
        self.stages = trunk.stages
        # MobileSAM's one change to TinyViT: the last downsampling has stride 1 so
        # the output stays at 1/16 of the input, SAM's 64x64 grid for 1024 pixels.
        self.stages[-1].downsample.conv2.conv.stride = (1, 1)
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )
        self.img_size = int(img_size)
        self.feature_stride = 4 * 2 ** (len(depths) - 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, out_chans, H / 16, W / 16) for four stages."""
        x = self.patch_embed(x)
        x = self.stages(x)
        return self.neck(x)


def official_to_timm_key(key: str) -> str | None:
    """The timm-layout name of one official MobileSAM encoder key.

    ``key`` is relative to the image encoder (no ``image_encoder.`` prefix).
    Returns ``None`` for entries SAM does not use (TinyViT's classifier head and
    the derived attention index tables). Keys that follow neither layout are
    returned unchanged so strict loading names them.

    Rules (official -> timm):

    - ``patch_embed.seq.0`` / ``seq.2`` -> ``patch_embed.conv1`` / ``conv2``;
    - ``layers.0.blocks.j`` -> ``stages.0.blocks.j`` (the convolutional stage);
    - ``layers.i.blocks.j`` -> ``stages.i.blocks.j``;
    - ``layers.i.downsample`` -> ``stages.{i+1}.downsample``: the official code
      downsamples at the *end* of a stage, timm at the *start* of the next;
    - the convolution inside a conv+batchnorm pair is ``c`` officially and
      ``conv`` in timm (``bn`` is the same);
    - ``neck`` is the same.
    """
    if key.startswith(_UNUSED_OFFICIAL_PREFIXES) or key.endswith("attention_bias_idxs"):
        return None
    parts = key.split(".")
    if parts[0] == "patch_embed" and len(parts) > 3 and parts[1] == "seq":
        conv_name = {"0": "conv1", "2": "conv2"}.get(parts[2])
        if conv_name is None:
            return key
        return ".".join(["patch_embed", conv_name, *_rename_conv(parts[3:])])
    if parts[0] == "layers" and len(parts) > 3 and parts[1].isdigit():
        stage = int(parts[1])
        if parts[2] == "downsample":
            return ".".join(["stages", str(stage + 1), "downsample", *_rename_conv(parts[3:])])
        if parts[2] == "blocks":
            return ".".join(["stages", str(stage), "blocks", *_rename_conv(parts[3:])])
    return key


def _rename_conv(parts: list[str]) -> list[str]:
    return ["conv" if part == "c" else part for part in parts]


def is_official_layout(state: dict[str, object], *, prefix: str = ENCODER_PREFIX) -> bool:
    """Whether ``state`` names the encoder the official MobileSAM way (``layers.i``)."""
    return any(key.startswith(prefix + "layers.") for key in state)


def official_to_timm_state_dict(
    state: dict[str, torch.Tensor], *, prefix: str = ENCODER_PREFIX
) -> dict[str, torch.Tensor]:
    """Rename the encoder keys of an official MobileSAM state dict to timm's layout.

    Parameters
    ----------
    state : dict of str to tensor
        A whole-SAM state dict as in ``mobile_sam.pt`` (keys ``image_encoder.*``,
        ``prompt_encoder.*``, ``mask_decoder.*``). A dict already in timm layout
        is returned as a copy, unchanged.
    prefix : str
        Prefix of the encoder keys; ``""`` for an encoder-only state dict.

    Returns
    -------
    dict of str to tensor
        Same tensors (not copied), encoder keys renamed, unused entries dropped.
    """
    if not is_official_layout(state, prefix=prefix):
        return dict(state)
    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            converted[key] = value
            continue
        new_key = official_to_timm_key(key[len(prefix) :])
        if new_key is not None:
            converted[prefix + new_key] = value
    return converted


def build_mobile_sam(
    *,
    img_size: int = 1024,
    embed_dims: tuple[int, ...] = MOBILE_SAM_EMBED_DIMS,
    depths: tuple[int, ...] = MOBILE_SAM_DEPTHS,
    num_heads: tuple[int, ...] = MOBILE_SAM_NUM_HEADS,
    window_sizes: tuple[int, ...] = MOBILE_SAM_WINDOW_SIZES,
    prompt_dim: int = 256,
    decoder_mlp_dim: int = 2048,
    iou_head_hidden_dim: int = 256,
):
    """MobileSAM (vit_t): the TinyViT encoder with SAM's prompt encoder and mask decoder.

    Randomly initialised, eval mode. The keyword options exist so tests can build
    a smaller model with the same key names; the defaults are MobileSAM's.
    """
    from napari_persam.core.models.assembly import sam_around_encoder

    encoder = TinyViTImageEncoder(
        img_size=img_size,
        embed_dims=embed_dims,
        depths=depths,
        num_heads=num_heads,
        window_sizes=window_sizes,
        out_chans=prompt_dim,
    )
    return sam_around_encoder(
        encoder,
        img_size=img_size,
        grid=img_size // encoder.feature_stride,
        prompt_dim=prompt_dim,
        decoder_mlp_dim=decoder_mlp_dim,
        iou_head_hidden_dim=iou_head_hidden_dim,
    )
