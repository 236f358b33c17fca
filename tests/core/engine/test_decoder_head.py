"""The output head as matrix products computes SAM's output_upscaling and hypernetwork product."""

import pytest
import torch

from napari_persam.core.engine.decoder_head import (
    BAND_TOKENS,
    first_layer_matrix,
    upscale_and_predict,
)


@pytest.mark.parametrize("grid", [(16, 16), (40, 64)])  # (40, 64): bands of 16 rows, one short
def test_the_head_is_output_upscaling_then_the_hypernetwork_product(tiny_sam, grid):
    decoder = tiny_sam.mask_decoder
    height, width = grid
    generator = torch.Generator().manual_seed(31)
    keys = torch.randn(height * width, 256, generator=generator)
    hyper_in = torch.randn(3, 32, generator=generator)
    with torch.no_grad():
        image = keys.t().reshape(1, 256, height, width)
        upscaled = decoder.output_upscaling(image)[0]  # (32, 4h, 4w)
        expected = torch.einsum("mc,chw->mhw", hyper_in, upscaled)
        got = upscale_and_predict(decoder, keys, grid, hyper_in)
        weight, bias = first_layer_matrix(decoder)
        asked = []

        def first_product(start, stop):
            asked.append((start, stop))
            return keys[start:stop] @ weight.t() + bias

        given = upscale_and_predict(decoder, None, grid, hyper_in, first_product=first_product)
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-5)
    torch.testing.assert_close(given, got, rtol=0, atol=2e-5)
    band = max(1, BAND_TOKENS // width) * width
    assert asked[0] == (0, min(band, height * width))
    assert asked[-1][1] == height * width
