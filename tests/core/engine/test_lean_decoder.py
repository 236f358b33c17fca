"""The lean decoder computes what segment_anything's decoder (and PerSAM's views) compute."""

import pytest
import torch

from napari_persam.core.engine.decoder import decode_masks
from napari_persam.core.engine.lean_decoder import lean_path_supported


def _inputs(sam, *, with_masks, seed=0, count=3):
    generator = torch.Generator().manual_seed(seed)
    grid = sam.prompt_encoder.image_embedding_size
    size = sam.image_encoder.img_size
    embeddings = torch.randn(1, 256, *grid, generator=generator)
    coords = torch.rand(count, 2, 2, generator=generator) * size
    labels = torch.tensor([[1, 0], [1, 1], [1, 0], [1, 1], [1, 0]][:count])
    masks = torch.randn(count, 1, 4 * grid[0], 4 * grid[1], generator=generator) * 3
    with torch.no_grad():
        sparse, dense = sam.prompt_encoder(
            points=(coords, labels), boxes=None, masks=masks if with_masks else None
        )
    return dict(
        image_embeddings=embeddings,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
    )


@pytest.mark.parametrize("with_masks", [False, True])
@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("count", [3, 5])  # 5: the positional terms are formed once
def test_lean_path_gives_segment_anythings_answer(tiny_sam, with_masks, multimask, count):
    assert lean_path_supported(tiny_sam.mask_decoder)
    inputs = _inputs(tiny_sam, with_masks=with_masks, count=count)
    with torch.no_grad():
        expected = tiny_sam.mask_decoder(**inputs, multimask_output=multimask)
        if not with_masks:  # every prompt's dense embedding is the same: shared
            inputs["dense_prompt_embeddings"] = inputs["dense_prompt_embeddings"][:1]
        got = decode_masks(tiny_sam.mask_decoder, **inputs, multimask_output=multimask)
    assert got[0].shape == expected[0].shape
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=2e-6)
    torch.testing.assert_close(got[1], expected[1], rtol=0, atol=2e-6)


@pytest.mark.parametrize("with_masks", [False, True])
@pytest.mark.parametrize("count", [3, 5])
def test_lean_path_gives_the_guided_views_answer(tiny_sam, with_masks, count):
    """PerSAM's attention bias and semantic prompt, against segment_anything's own code."""
    inputs = _inputs(tiny_sam, with_masks=with_masks, seed=3, count=count)
    if not with_masks:
        inputs["dense_prompt_embeddings"] = inputs["dense_prompt_embeddings"][:1]
    generator = torch.Generator().manual_seed(4)
    cells = inputs["image_embeddings"].shape[-2] * inputs["image_embeddings"].shape[-1]
    guidance = dict(
        attn_bias=torch.rand(1, 1, 1, cells, generator=generator),
        target_embedding=torch.randn(256, generator=generator),
    )
    with torch.no_grad():
        for multimask in (True, False):
            reference = decode_masks(
                tiny_sam.mask_decoder,
                **inputs,
                **guidance,
                multimask_output=multimask,
                force_view=True,
            )
            got = decode_masks(
                tiny_sam.mask_decoder, **inputs, **guidance, multimask_output=multimask
            )
            torch.testing.assert_close(got[0], reference[0], rtol=0, atol=2e-6)
            torch.testing.assert_close(got[1], reference[1], rtol=0, atol=2e-6)


def test_a_decoder_built_differently_takes_segment_anythings_path(make_tiny_sam):
    sam = make_tiny_sam()
    assert lean_path_supported(sam.mask_decoder)
    sam.mask_decoder.output_upscaling[0] = torch.nn.ConvTranspose2d(256, 64, 3, 2, 1, 1)
    assert not lean_path_supported(sam.mask_decoder)
    inputs = _inputs(sam, with_masks=True)
    with torch.no_grad():
        expected = sam.mask_decoder(**inputs, multimask_output=True)
        got = decode_masks(sam.mask_decoder, **inputs, multimask_output=True)
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
