"""The thin decoder (image basis plus a per-prompt part) computes SAM's decoder."""

import pytest
import torch

from napari_persam.core.engine.decoder import decode_masks
from napari_persam.core.engine.low_rank_decoder import MAX_RANK_SHARE, constant_dense, image_basis
from napari_persam.core.engine.mask_prompts import factor_mask_prompt


@pytest.fixture(scope="module")
def affine_sam():
    """A tiny SAM whose LayerNorms have random weights and biases.

    SAM's random initialisation leaves them at 1 and 0, which would hide a
    ``gamma`` or ``beta`` carried to the wrong side of a product.
    """
    from napari_persam.core.models import build_tiny_sam

    sam = build_tiny_sam(seed=2, img_size=256)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for module in sam.mask_decoder.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1 + 0.3 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.3 * torch.randn(module.bias.shape, generator=generator))
    return sam.eval()


def _inputs(sam, *, seed, count, points=2, with_box=False, with_masks=False, offset=0.0):
    generator = torch.Generator().manual_seed(seed)
    grid = sam.prompt_encoder.image_embedding_size
    size = sam.image_encoder.img_size
    embeddings = torch.randn(1, 256, *grid, generator=generator) + offset
    coords = torch.rand(count, points, 2, generator=generator) * size
    labels = (torch.rand(count, points, generator=generator) > 0.3).int()
    labels[:, 0] = 1
    corners = torch.rand(count, 2, 2, generator=generator) * size
    boxes = torch.cat([corners.min(dim=1).values, corners.max(dim=1).values], dim=1)
    masks = torch.randn(count, 1, 4 * grid[0], 4 * grid[1], generator=generator) * 3
    with torch.no_grad():
        sparse, dense = sam.prompt_encoder(
            points=(coords, labels),
            boxes=boxes if with_box else None,
            masks=masks if with_masks else None,
        )
    image_pe = sam.prompt_encoder.get_dense_pe()
    return embeddings, image_pe, sparse, dense, masks


def _guidance(embeddings, seed):
    generator = torch.Generator().manual_seed(seed)
    cells = embeddings.shape[-2] * embeddings.shape[-1]
    return dict(
        attn_bias=torch.rand(1, 1, 1, cells, generator=generator),
        target_embedding=torch.randn(256, generator=generator),
    )


def _decode_three_ways(sam, embeddings, image_pe, sparse, dense, masks, *, with_masks, **kwargs):
    """segment_anything's answer (on views), the lean path's and the thin path's."""
    decoder = sam.mask_decoder
    common = dict(image_embeddings=embeddings, image_pe=image_pe, sparse_prompt_embeddings=sparse)
    common.update(kwargs)
    basis = image_basis(decoder, embeddings, image_pe)
    with torch.no_grad():
        reference = decode_masks(decoder, **common, dense_prompt_embeddings=dense, force_view=True)
        if with_masks:
            factored = dict(
                dense_prompt_embeddings=None,
                mask_prompt=factor_mask_prompt(sam.prompt_encoder, masks),
            )
        else:  # SAM's "no mask": one embedding shared by every prompt
            factored = dict(dense_prompt_embeddings=dense[:1])
        lean = decode_masks(decoder, **common, **factored)
        thin = decode_masks(decoder, **common, **factored, image_basis=basis)
    return reference, lean, thin


def _assert_same(got, expected):
    assert got[0].shape == expected[0].shape
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=2e-6)
    torch.testing.assert_close(got[1], expected[1], rtol=0, atol=2e-6)


@pytest.mark.parametrize("with_masks", [False, True])
@pytest.mark.parametrize("with_box", [False, True])
@pytest.mark.parametrize("multimask", [True, False])
def test_thin_path_gives_segment_anythings_answer(affine_sam, with_masks, with_box, multimask):
    inputs = _inputs(affine_sam, seed=11, count=3, with_box=with_box, with_masks=with_masks)
    with torch.no_grad():
        expected = affine_sam.mask_decoder(
            image_embeddings=inputs[0],
            image_pe=inputs[1],
            sparse_prompt_embeddings=inputs[2],
            dense_prompt_embeddings=inputs[3],
            multimask_output=multimask,
        )
    reference, lean, thin = _decode_three_ways(
        affine_sam, *inputs, with_masks=with_masks, multimask_output=multimask
    )
    _assert_same(reference, expected)
    _assert_same(lean, expected)
    _assert_same(thin, expected)


@pytest.mark.parametrize("with_masks", [False, True])
@pytest.mark.parametrize("count", [3, 5])
@pytest.mark.parametrize("offset", [0.0, 5.0])  # an embedding far from zero mean
def test_thin_path_gives_the_guided_views_answer(affine_sam, with_masks, count, offset):
    """PerSAM's attention bias and semantic prompt, with both multimask settings."""
    inputs = _inputs(affine_sam, seed=13, count=count, with_masks=with_masks, offset=offset)
    guidance = _guidance(inputs[0], seed=14)
    for multimask in (True, False):
        reference, lean, thin = _decode_three_ways(
            affine_sam, *inputs, with_masks=with_masks, multimask_output=multimask, **guidance
        )
        _assert_same(lean, reference)
        _assert_same(thin, reference)


def test_prompts_whose_rank_outgrows_the_basis_are_formed_explicitly(affine_sam, monkeypatch):
    """Twenty points make a rank of more than MAX_RANK_SHARE C after one block."""
    from napari_persam.core.engine import low_rank_decoder

    points = 20
    assert 8 * (5 + points) > MAX_RANK_SHARE * 256
    explicit = []
    original = low_rank_decoder._Product.explicit

    def counting(self, keys, rows=slice(None)):
        explicit.append(1)
        return original(self, keys, rows)

    monkeypatch.setattr(low_rank_decoder._Product, "explicit", counting)
    inputs = _inputs(affine_sam, seed=17, count=2, points=points, with_masks=True)
    reference, lean, thin = _decode_three_ways(
        affine_sam, *inputs, with_masks=True, multimask_output=True
    )
    assert explicit  # the later levels' products
    _assert_same(lean, reference)
    _assert_same(thin, reference)


def test_a_basis_of_another_image_is_refused(tiny_sam):
    embeddings, image_pe, sparse, dense, _ = _inputs(tiny_sam, seed=19, count=2)
    other = embeddings.clone()
    basis = image_basis(tiny_sam.mask_decoder, other, image_pe)
    with pytest.raises(ValueError, match="another decoder, image or encoding"):
        decode_masks(
            tiny_sam.mask_decoder,
            image_embeddings=embeddings,
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense[:1],
            multimask_output=True,
            image_basis=basis,
        )


def test_a_dense_embedding_that_varies_takes_the_lean_path(tiny_sam, monkeypatch):
    from napari_persam.core.engine import decoder as decoder_module

    embeddings, image_pe, sparse, dense, masks = _inputs(tiny_sam, seed=23, count=2)
    with torch.no_grad():
        _, varying = tiny_sam.prompt_encoder(points=None, boxes=None, masks=masks[:1])
    assert constant_dense(varying) is None
    assert constant_dense(dense[:1]) is not None
    assert constant_dense(dense) is None  # one per prompt: not shared

    def refuse(*args, **kwargs):
        raise AssertionError("the thin path was taken")

    monkeypatch.setattr(decoder_module, "thin_predict_masks", refuse)
    common = dict(
        image_embeddings=embeddings,
        image_pe=image_pe,
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=varying,
        multimask_output=True,
    )
    basis = image_basis(tiny_sam.mask_decoder, embeddings, image_pe)
    with torch.no_grad():
        got = decode_masks(tiny_sam.mask_decoder, **common, image_basis=basis)
        expected = decode_masks(tiny_sam.mask_decoder, **common)
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)


def test_another_decoder_has_no_basis(make_tiny_sam):
    sam = make_tiny_sam()
    sam.mask_decoder.output_upscaling[0] = torch.nn.ConvTranspose2d(256, 64, 3, 2, 1, 1)
    embeddings, image_pe, *_ = _inputs(sam, seed=29, count=1)
    assert image_basis(sam.mask_decoder, embeddings, image_pe) is None
