"""SAM's mask-decoder output head as matrix products on token-major image tokens.

``output_upscaling`` is two 2 x 2, stride-2 transposed convolutions with a
LayerNorm2d between them. Cell (y, x) of such a convolution writes only output
pixels (2y + i, 2x + j), so on the (pixels, channels) layout it is exactly a
product with the kernel laid out as a matrix; LayerNorm2d is one ``layer_norm``
on those rows, and the hypernetwork product runs before the only rearrangement
into pixels, on the chosen 1 or 3 masks instead of 32 channels. The head runs in
bands of token rows whose temporaries stay in cache (0.85x the head's time).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from segment_anything.modeling.mask_decoder import MaskDecoder

from napari_persam.core.engine.cpu_products import linear

#: Image tokens per band of the output head (1024: 16 of 64 rows; 2 MiB per temporary).
BAND_TOKENS = 1024

#: ``first_product(start, stop)``: the first convolution's output for token rows
#: ``start:stop``, (stop - start, 4 * out) with rows (y, x) and columns (i, j, out).
FirstProduct = Callable[[int, int], torch.Tensor]


def upscale_and_predict(
    decoder: MaskDecoder,
    keys: torch.Tensor | None,
    grid: tuple[int, int],
    hyper_in: torch.Tensor,
    *,
    first_product: FirstProduct | None = None,
) -> torch.Tensor:
    """``output_upscaling`` and the hypernetwork product for one prompt.

    Parameters
    ----------
    keys : (hw, C) image tokens after the transformer; None with ``first_product``.
    grid : (h, w) of the tokens.
    hyper_in : (M, C // 8) the chosen mask tokens through their hypernetwork MLPs.
    first_product : the first convolution computed another way (:mod:`.low_rank_decoder`).

    Returns
    -------
    (M, 4h, 4w) mask logits, as ``hyper_in @ upscaled`` in ``predict_masks``.
    """
    first, norm, first_act, second, second_act = decoder.output_upscaling
    height, width = grid
    if first_product is None:
        first_weight, first_bias = first_layer_matrix(decoder)

        def first_product(start: int, stop: int) -> torch.Tensor:
            return linear(keys[start:stop], first_weight, first_bias)

    second_weight, second_bias = _as_weight(second.weight), second.bias.repeat(4)
    fused_gelu = type(second_act) is torch.nn.GELU and second_act.approximate == "none"
    hyper_t = hyper_in.t()
    masks = hyper_in.new_empty(hyper_in.shape[0], 4 * height, 4 * width)
    # A band of token rows at a time: its temporaries of 1-2 MiB stay in cache between
    # the passes (product, norm, GELU, product, GELU, product) instead of the whole
    # head's 4-8 MiB ones going through memory at each pass.
    band = max(1, BAND_TOKENS // width)
    for top in range(0, height, band):
        rows = min(band, height - top)
        x = first_product(top * width, (top + rows) * width)
        x = x.view(-1, first.out_channels)  # rows (y, x, i, j)
        x = first_act(F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps))
        x = linear(x, second_weight, second_bias, gelu=fused_gelu)
        x = x if fused_gelu else second_act(x)
        x = torch.mm(x.view(-1, second.out_channels), hyper_t)  # rows (y, x, i, j, i2, j2)
        # (y, x, i, j, i2, j2, m) -> (m, 4y + 2i + i2, 4x + 2j + j2)
        x = x.view(rows, width, 2, 2, 2, 2, -1).permute(6, 0, 2, 4, 1, 3, 5)
        masks[:, 4 * top : 4 * (top + rows)].view(-1, rows, 2, 2, width, 2, 2).copy_(x)
    return masks


def first_layer_matrix(decoder: MaskDecoder) -> tuple[torch.Tensor, torch.Tensor]:
    """The first transposed convolution as a linear layer: weight (4 out, in), bias (4 out)."""
    first = decoder.output_upscaling[0]
    return _as_weight(first.weight), first.bias.repeat(4)


def _as_weight(weight: torch.Tensor) -> torch.Tensor:
    """ConvTranspose2d weight (in, out, 2, 2) -> a (4 * out, in) linear weight, rows (i, j, out)."""
    return weight.permute(2, 3, 1, 0).reshape(-1, weight.shape[0]).contiguous()
