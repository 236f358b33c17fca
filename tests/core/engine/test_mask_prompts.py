"""Mask inputs in low-rank form give the decoder's answer for SAM's dense embeddings."""

import pytest
import torch

from napari_persam.core.engine.decoder import decode_masks
from napari_persam.core.engine.mask_prompts import factor_mask_prompt


def _prompts(sam, seed=0, count=3):
    generator = torch.Generator().manual_seed(seed)
    grid = sam.prompt_encoder.image_embedding_size
    size = sam.image_encoder.img_size
    coords = torch.rand(count, 2, 2, generator=generator) * size
    labels = torch.tensor([[1, 0], [1, 1]] * 3)[:count]
    masks = torch.randn(count, 1, 4 * grid[0], 4 * grid[1], generator=generator) * 3
    embeddings = torch.randn(1, 256, *grid, generator=generator)
    return embeddings, (coords, labels), masks


def test_the_factored_form_projects_to_the_prompt_encoders_dense_embedding(tiny_sam):
    _, points, masks = _prompts(tiny_sam)
    with torch.no_grad():
        _, dense = tiny_sam.prompt_encoder(points=points, boxes=None, masks=masks)
        factored = factor_mask_prompt(tiny_sam.prompt_encoder, masks)
        assert factored.features.shape == (3, 16, *dense.shape[-2:])
        torch.testing.assert_close(factored.dense(), dense, rtol=0, atol=0)


def test_another_prompt_encoder_is_not_factored(make_tiny_sam):
    sam = make_tiny_sam()
    sam.prompt_encoder.mask_downscaling[-1] = torch.nn.Conv2d(16, 256, 3, padding=1)
    _, _, masks = _prompts(sam)
    assert factor_mask_prompt(sam.prompt_encoder, masks) is None
    assert factor_mask_prompt(torch.nn.Identity(), masks) is None


@pytest.mark.parametrize("guided", [False, True])
@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("count", [1, 5])
def test_decoding_from_the_factored_form_matches_segment_anything(
    tiny_sam, guided, multimask, count
):
    """Lean decoder with rank-16 products against SAM's own code on the dense embedding."""
    embeddings, points, masks = _prompts(tiny_sam, seed=5, count=count)
    generator = torch.Generator().manual_seed(6)
    cells = embeddings.shape[-2] * embeddings.shape[-1]
    guidance = {}
    if guided:
        guidance = dict(
            attn_bias=torch.rand(1, 1, 1, cells, generator=generator),
            target_embedding=torch.randn(256, generator=generator),
        )
    with torch.no_grad():
        sparse, dense = tiny_sam.prompt_encoder(points=points, boxes=None, masks=masks)
        common = dict(
            image_embeddings=embeddings,
            image_pe=tiny_sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            multimask_output=multimask,
            **guidance,
        )
        reference = decode_masks(
            tiny_sam.mask_decoder, **common, dense_prompt_embeddings=dense, force_view=True
        )
        factored = factor_mask_prompt(tiny_sam.prompt_encoder, masks)
        got = decode_masks(
            tiny_sam.mask_decoder, **common, dense_prompt_embeddings=None, mask_prompt=factored
        )
        # The stand-in path (segment_anything's code on views) projects the factors first.
        viewed = decode_masks(
            tiny_sam.mask_decoder,
            **common,
            dense_prompt_embeddings=None,
            mask_prompt=factored,
            force_view=True,
        )
    assert got[0].shape == reference[0].shape
    torch.testing.assert_close(got[0], reference[0], rtol=0, atol=2e-6)
    torch.testing.assert_close(got[1], reference[1], rtol=0, atol=2e-6)
    torch.testing.assert_close(viewed[0], reference[0], rtol=0, atol=0)
