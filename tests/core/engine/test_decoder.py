import math

import numpy as np
import torch
from segment_anything import SamPredictor

from napari_persam.core import PerSAM, PerSAMConfig
from napari_persam.core.engine.decoder import _BiasedAttention, attention_bias, decode_masks


def _prompt_inputs(sam, seed=0):
    generator = torch.Generator().manual_seed(seed)
    grid = sam.prompt_encoder.image_embedding_size
    embeddings = torch.randn(1, 256, *grid, generator=generator)
    coords = torch.rand(2, 2, 2, generator=generator) * sam.image_encoder.img_size
    labels = torch.tensor([[1, 0], [1, 1]])
    with torch.no_grad():
        sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    return dict(
        image_embeddings=embeddings,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
    )


def test_views_reproduce_segment_anything_exactly(tiny_sam):
    inputs = _prompt_inputs(tiny_sam)
    for multimask in (True, False):
        with torch.no_grad():
            expected = tiny_sam.mask_decoder(**inputs, multimask_output=multimask)
            got = decode_masks(
                tiny_sam.mask_decoder, **inputs, multimask_output=multimask, force_view=True
            )
        assert got[0].shape == expected[0].shape  # (B, M, 4gh, 4gw)
        torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
        torch.testing.assert_close(got[1], expected[1], rtol=0, atol=0)


def test_biased_attention_is_softmax_add_softmax(tiny_sam):
    attention = tiny_sam.mask_decoder.transformer.layers[0].cross_attn_token_to_image
    generator = torch.Generator().manual_seed(1)
    q = torch.randn(1, 5, 256, generator=generator)
    k = torch.randn(1, 16, 256, generator=generator)
    v = torch.randn(1, 16, 256, generator=generator)
    bias = torch.rand(1, 1, 1, 16, generator=generator)
    with torch.no_grad():
        got = _BiasedAttention(attention, bias)(q, k, v)
        heads = attention.num_heads
        qh = attention._separate_heads(attention.q_proj(q), heads)
        kh = attention._separate_heads(attention.k_proj(k), heads)
        vh = attention._separate_heads(attention.v_proj(v), heads)
        weights = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(qh.shape[-1]), dim=-1)
        weights = torch.softmax(weights + bias, dim=-1)
        expected = attention.out_proj(attention._recombine_heads(weights @ vh))
    torch.testing.assert_close(got, expected)


def test_attention_bias_layout():
    similarity = torch.zeros(4, 4)
    similarity[:2, :3] = torch.tensor([[0.1, 0.5, 0.9], [0.2, 0.4, 0.8]])
    valid = torch.zeros(4, 4, dtype=torch.bool)
    valid[:2, :3] = True
    bias = attention_bias(similarity, valid)
    assert bias.shape == (1, 1, 1, 16)
    grid = bias.reshape(4, 4)
    assert (grid[~valid] == 0).all()
    values = grid[valid]
    assert ((values > 0) & (values < 1)).all()
    # standardised: the mean similarity maps to sigmoid(0) = 0.5
    assert abs(float(values.mean()) - 0.5) < 0.1
    assert float(grid[0, 2]) == float(values.max())


def test_guidance_changes_the_decoder_output(tiny_sam):
    inputs = _prompt_inputs(tiny_sam)
    cells = int(np.prod(tiny_sam.prompt_encoder.image_embedding_size))
    bias = torch.linspace(0, 1, cells).reshape(1, 1, 1, -1)
    target = torch.randn(256, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        plain = decode_masks(tiny_sam.mask_decoder, **inputs, multimask_output=True)[0]
        biased = decode_masks(
            tiny_sam.mask_decoder, **inputs, multimask_output=True, attn_bias=bias
        )[0]
        prompted = decode_masks(
            tiny_sam.mask_decoder, **inputs, multimask_output=True, target_embedding=target
        )[0]
    assert not torch.allclose(plain, biased)
    assert not torch.allclose(plain, prompted)


def test_sam_is_unchanged_and_still_answers_ordinary_prompts(make_tiny_sam, rng):
    sam = make_tiny_sam(seed=5)
    image = rng.integers(0, 255, size=(120, 200, 3), dtype=np.uint8)
    mask = np.zeros((120, 200), dtype=bool)
    mask[30:70, 50:110] = True
    point = np.array([[80.0, 50.0]])  # (x, y) for SamPredictor

    def ordinary_prediction():
        predictor = SamPredictor(sam)
        predictor.set_image(image)
        return predictor.predict(point_coords=point, point_labels=np.array([1]))

    before_state = {key: value.clone() for key, value in sam.state_dict().items()}
    before_types = {name: type(module) for name, module in sam.named_modules()}
    before_masks, before_scores, before_logits = ordinary_prediction()

    engine = PerSAM(sam, config=PerSAMConfig(finetune_steps=20), device="cpu")
    concept = engine.finetune(engine.learn(image, mask))
    engine.segment(image, concept)

    after_masks, after_scores, after_logits = ordinary_prediction()
    np.testing.assert_array_equal(after_masks, before_masks)
    np.testing.assert_array_equal(after_scores, before_scores)
    np.testing.assert_array_equal(after_logits, before_logits)
    for key, value in sam.state_dict().items():
        assert torch.equal(value, before_state[key]), key
    for name, module in sam.named_modules():
        assert type(module) is before_types[name]
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert "forward" not in vars(module)  # no instance-level patching


def test_a_shared_image_side_gives_segment_anythings_answer(tiny_sam):
    # Prompts without mask input share one dense embedding: the decoder then projects
    # the image once for all of them; the answer is SAM's, to float rounding.
    inputs = _prompt_inputs(tiny_sam, seed=4)
    shared = dict(inputs, dense_prompt_embeddings=inputs["dense_prompt_embeddings"][:1])
    for multimask in (True, False):
        with torch.no_grad():
            expected = tiny_sam.mask_decoder(**inputs, multimask_output=multimask)
            got = decode_masks(tiny_sam.mask_decoder, **shared, multimask_output=multimask)
            guided = decode_masks(
                tiny_sam.mask_decoder, **shared, multimask_output=multimask, force_view=True
            )
        for result in (got, guided):
            assert result[0].shape == expected[0].shape
            torch.testing.assert_close(result[0], expected[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(result[1], expected[1], rtol=1e-5, atol=1e-5)
