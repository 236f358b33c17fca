"""A mask prompt's dense embedding kept in its low-rank form.

SAM embeds a mask input (the logits fed back in PerSAM's refinement) with
``mask_downscaling``: two strided convolutions to 16 channels, then a 1 x 1
convolution to the 256 of the image tokens. Everything the decoder does with that
dense embedding before its first attention is linear in it: the image tokens are
``image + dense`` and the first block projects ``image + dense (+ PE)`` with its key,
value and query projections. With the 1 x 1 convolution kept apart, each of those
products is a shared image-side product plus a rank-16 one: 16 instead of 256 inner
dimensions for the per-prompt part (:mod:`.lean_decoder`). The 1 x 1 convolution
itself becomes one small matrix product per prompt: as a batched convolution on
(16, 16, 64, 64) oneDNN ran it at about a fifteenth of the matrix product's rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.prompt_encoder import PromptEncoder


@dataclass(frozen=True)
class MaskPrompt:
    """Dense mask embeddings as ``projection(features)``, not yet projected."""

    features: torch.Tensor  # (B, r, h, w): mask_downscaling before its last convolution
    projection: torch.nn.Conv2d  # the 1 x 1 convolution r -> C that ends it

    def dense(self) -> torch.Tensor:
        """(B, C, h, w): the dense prompt embeddings SAM's prompt encoder returns."""
        return self.projection(self.features)

    def matrix(self) -> torch.Tensor:
        """(C, r): the projection as a matrix (its bias is ``projection.bias``)."""
        return self.projection.weight[:, :, 0, 0]


def factor_mask_prompt(prompt_encoder: torch.nn.Module, masks: torch.Tensor) -> MaskPrompt | None:
    """``masks`` (B, 1, 4h, 4w) as a :class:`MaskPrompt`, or None for another encoder.

    Only segment_anything's ``PromptEncoder`` with SAM's ``mask_downscaling``
    (conv, LayerNorm2d, activation, conv, LayerNorm2d, activation, 1 x 1 conv) is
    factored; the features are computed by its own modules.
    """
    if type(prompt_encoder) is not PromptEncoder:
        return None
    downscaling = prompt_encoder.mask_downscaling
    if not _standard_downscaling(downscaling):
        return None
    return MaskPrompt(features=downscaling[:-1](masks), projection=downscaling[-1])


def _standard_downscaling(layers: torch.nn.Module) -> bool:
    if not isinstance(layers, torch.nn.Sequential) or len(layers) != 7:
        return False
    last = layers[-1]
    return (
        type(layers[1]) is LayerNorm2d
        and type(layers[4]) is LayerNorm2d
        and type(last) is torch.nn.Conv2d
        and last.kernel_size == (1, 1)
        and last.stride == (1, 1)
        and last.padding == (0, 0)
        and last.dilation == (1, 1)
        and last.groups == 1
        and last.bias is not None
    )
