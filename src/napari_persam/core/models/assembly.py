"""Putting SAM's prompt encoder and mask decoder around an image encoder.

Every model in the registry (SAM's ViTs through segment_anything's builders,
MobileSAM's TinyViT, the tiny test model) shares SAM's prompt encoder and mask
decoder and its pixel normalisation; only the image encoder differs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from segment_anything.modeling import Sam

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def sam_around_encoder(
    encoder: torch.nn.Module,
    *,
    img_size: int,
    grid: int,
    prompt_dim: int = 256,
    decoder_mlp_dim: int = 2048,
    iou_head_hidden_dim: int = 256,
) -> Sam:
    """A ``Sam`` (eval mode) with ``encoder`` and newly initialised prompt encoder and decoder.

    Parameters
    ----------
    encoder : torch.nn.Module
        Maps (B, 3, img_size, img_size) to (B, prompt_dim, grid, grid); must expose
        ``img_size``.
    img_size, grid : int
        SAM's input side and feature-grid side.
    prompt_dim, decoder_mlp_dim, iou_head_hidden_dim : int
        SAM's published values by default; smaller ones make small test models.
    """
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    sam = Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(img_size, img_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=prompt_dim, mlp_dim=decoder_mlp_dim, num_heads=8
            ),
            transformer_dim=prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=iou_head_hidden_dim,
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )
    return sam.eval()
