import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from segment_anything import SamPredictor

from napari_persam.core import Concept, PerSAM, PerSAMConfig, Segmentation
from napari_persam.core.engine.images import prepare_image

PLAIN = PerSAMConfig(
    target_guided_attention=False, semantic_prompt=False, refinement_steps=0, min_area_fraction=0
)


@pytest.fixture
def scene(rng):
    image = rng.integers(0, 255, size=(120, 160, 3), dtype=np.uint8)
    image[30:80, 40:110] = (200, 60, 60)
    mask = np.zeros((120, 160), dtype=np.uint8)
    mask[30:80, 40:110] = 1
    return image, mask


def test_public_api_shapes_and_types(tiny_sam, scene):
    image, mask = scene
    engine = PerSAM(tiny_sam, config=PerSAMConfig(), device=None)
    concept = engine.learn(image, mask)
    assert isinstance(concept, Concept)
    assert concept.target_embedding.shape == (256,)
    assert concept.target_embedding.dtype == np.float32
    seg = engine.segment(image, concept)
    assert isinstance(seg, Segmentation)
    assert seg.mask.shape == (120, 160) and seg.mask.dtype == bool
    assert seg.similarity.shape == (120, 160) and seg.similarity.dtype == np.float32
    assert -1.0 <= seg.similarity.min() <= seg.similarity.max() <= 1.0
    assert isinstance(seg.score, float)
    assert seg.points.shape == (2, 2) and seg.point_labels.tolist() == [1, 0]
    assert seg.box is None or seg.box.shape == (4,)


def test_target_embedding_is_mean_of_covered_cells(tiny_sam, scene):
    image, mask = scene
    engine = PerSAM(tiny_sam, device="cpu")
    concept = engine.learn(image, mask)
    embedding = engine.embed(image)
    coverage = embedding.geometry.mask_coverage(mask > 0)
    cells = coverage >= 0.5
    assert cells.sum() > 1
    expected = embedding.features[0].numpy()[:, cells].mean(axis=1)
    np.testing.assert_allclose(concept.target_embedding, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(concept.shots[0].foreground_cells, cells)


def test_small_object_uses_best_covered_cell(tiny_sam, scene):
    image, _ = scene
    mask = np.zeros((120, 160), dtype=bool)
    mask[50, 70] = True  # far less than half a cell
    # The whole-image scale on purpose (a 1-px painting has no scale to tile at).
    engine = PerSAM(tiny_sam, device="cpu", config=PerSAMConfig(tiling="off"))
    concept = engine.learn(image, mask)
    cells = concept.shots[0].foreground_cells
    assert cells.sum() >= 1
    coverage = engine.embed(image).geometry.mask_coverage(mask)
    assert (coverage[cells] == coverage.max()).all()
    assert np.isfinite(concept.target_embedding).all()


def test_similarity_and_location_prior(tiny_sam, scene):
    image, mask = scene
    engine = PerSAM(tiny_sam, config=PLAIN, device="cpu")
    concept = engine.learn(image, mask)
    seg = engine.segment(image, concept)
    embedding = engine.embed(image)
    features = F.normalize(embedding.features[0].flatten(1), dim=0)
    direction = F.normalize(torch.from_numpy(concept.target_embedding), dim=0)
    grid = (direction @ features).reshape(embedding.geometry.grid_hw)
    expected = embedding.geometry.grid_to_image(grid).numpy()
    np.testing.assert_allclose(seg.similarity, expected, atol=1e-5)
    top = np.unravel_index(np.argmax(seg.similarity), seg.similarity.shape)
    bottom = np.unravel_index(np.argmin(seg.similarity), seg.similarity.shape)
    np.testing.assert_array_equal(seg.points, [top, bottom])
    no_negative = PerSAM(
        tiny_sam, config=dataclasses.replace(PLAIN, negative_prior=False), device="cpu"
    )
    assert no_negative.segment(image, concept).points.shape == (1, 2)


def _official_cascade(sam, rgb, points_yx, labels, steps):
    """The official PerSAM cascade written with segment_anything's SamPredictor."""
    predictor = SamPredictor(sam)
    predictor.set_image(rgb)
    xy = points_yx[:, ::-1].copy()
    masks, scores, logits = predictor.predict(
        point_coords=xy, point_labels=labels, multimask_output=False
    )
    best, box = 0, None
    for step in range(1, steps + 1):
        if step >= 2:
            ys, xs = np.nonzero(masks[best])
            box = np.array([xs.min(), ys.min(), xs.max(), ys.max()])
        masks, scores, logits = predictor.predict(
            point_coords=xy,
            point_labels=labels,
            box=None if box is None else box[None, :],
            mask_input=logits[best : best + 1],
            multimask_output=True,
        )
        best = int(np.argmax(scores))
    return masks[best], float(scores[best]), box, predictor.features


@pytest.mark.parametrize("steps", [0, 1, 2, 3])
def test_unguided_cascade_equals_segment_anythings_predictor(tiny_sam, scene, steps):
    image, mask = scene
    config = dataclasses.replace(PLAIN, refinement_steps=steps)
    engine = PerSAM(tiny_sam, config=config, device="cpu")
    concept = engine.learn(image, mask)
    seg = engine.segment(image, concept)
    expected_mask, expected_score, expected_box, features = _official_cascade(
        tiny_sam, prepare_image(image), seg.points, seg.point_labels, steps
    )
    torch.testing.assert_close(engine.embed(image).features, features)
    assert expected_mask.any(), "the random model should give a non-empty mask here"
    np.testing.assert_array_equal(seg.mask, expected_mask)
    assert seg.score == pytest.approx(expected_score, abs=1e-6)
    if steps >= 2:
        y0, x0, y1, x1 = seg.box
        np.testing.assert_array_equal([x0, y0, x1, y1], expected_box)
    else:
        assert seg.box is None


@pytest.mark.parametrize(
    "switch", ["target_guided_attention", "semantic_prompt", "negative_prior", "refinement_steps"]
)
def test_each_switch_changes_the_result(tiny_sam, scene, switch):
    image, mask = scene
    base = PerSAMConfig(min_area_fraction=0)
    off = dataclasses.replace(base, **{switch: 0 if switch == "refinement_steps" else False})
    on_engine = PerSAM(tiny_sam, config=base, device="cpu")
    off_engine = PerSAM(tiny_sam, config=off, device="cpu", cache=on_engine.cache)
    concept = on_engine.learn(image, mask)
    on, out = on_engine.segment(image, concept), off_engine.segment(image, concept)
    differs = (
        on.score != out.score
        or not np.array_equal(on.mask, out.mask)
        or on.points.shape != out.points.shape
    )
    assert differs


def test_min_area_fraction_removes_small_components(tiny_sam, scene):
    image, mask = scene
    keep_all = PerSAM(tiny_sam, config=dataclasses.replace(PLAIN, refinement_steps=0), device="cpu")
    concept = keep_all.learn(image, mask)
    raw = keep_all.segment(image, concept).mask
    strict_config = dataclasses.replace(PLAIN, min_area_fraction=0.3)
    strict = PerSAM(tiny_sam, config=strict_config, device="cpu").segment(image, concept)
    from napari_persam.core.engine.postprocess import remove_small_components

    np.testing.assert_array_equal(strict.mask, remove_small_components(raw, min_area_fraction=0.3))
    if not strict.mask.any():
        assert strict.score == 0.0


def test_empty_intermediate_mask_gives_an_empty_result(make_tiny_sam, scene):
    image, mask = scene
    sam = make_tiny_sam()
    sam.mask_threshold = 1e9  # every mask comes out empty
    engine = PerSAM(sam, device="cpu")
    concept = engine.learn(image, mask)
    for steps in (0, 1, 2):
        seg = PerSAM(
            sam, config=PerSAMConfig(refinement_steps=steps), device="cpu", cache=engine.cache
        ).segment(image, concept)
        assert not seg.mask.any() and seg.score == 0.0 and seg.box is None
        assert seg.similarity.shape == image.shape[:2]


def test_each_image_is_encoded_once(make_tiny_sam, scene, rng):
    image, mask = scene
    sam = make_tiny_sam()
    calls = []
    sam.image_encoder.register_forward_hook(lambda *args: calls.append(1))
    engine = PerSAM(sam, device="cpu")
    concept = engine.learn(image, mask)
    engine.segment(image, concept)
    engine.segment(image.copy(), engine.finetune(concept))
    assert len(calls) == 1
    other = rng.integers(0, 255, size=image.shape, dtype=np.uint8)
    engine.segment(other, concept)
    assert len(calls) == 2
    assert engine.cache.hits >= 2


def test_cache_is_keyed_by_model(make_tiny_sam, scene):
    image, mask = scene
    first = PerSAM(make_tiny_sam(seed=1), device="cpu")
    second = PerSAM(make_tiny_sam(seed=2), device="cpu", cache=first.cache)
    assert first.fingerprint != second.fingerprint
    first.embed(image)
    second.embed(image)
    assert len(first.cache) == 2
    concept = first.learn(image, mask)
    with pytest.raises(ValueError, match="different model"):
        second.segment(image, concept)


def test_determinism(make_tiny_sam, scene):
    image, mask = scene
    results = []
    for _ in range(2):
        engine = PerSAM(make_tiny_sam(seed=3), device="cpu")
        seg = engine.segment(image, engine.learn(image, mask))
        results.append(seg)
    np.testing.assert_array_equal(results[0].mask, results[1].mask)
    np.testing.assert_array_equal(results[0].similarity, results[1].similarity)
    assert results[0].score == results[1].score


def test_input_dtypes_are_accepted(tiny_sam, scene):
    image, mask = scene
    engine = PerSAM(tiny_sam, device="cpu")
    grey16 = (image[..., 0].astype(np.uint16) * 200).astype(np.uint16)
    concept = engine.learn(grey16, mask.astype(bool))
    for variant in (grey16, grey16.astype(np.float32), grey16.astype(np.int32), grey16 > 30000):
        assert engine.segment(variant, concept).mask.shape == mask.shape
    rgba = np.concatenate([image, np.full((*image.shape[:2], 1), 255, np.uint8)], axis=-1)
    assert engine.segment(rgba, engine.learn(image, mask)).mask.shape == mask.shape


@pytest.mark.parametrize(
    ("image", "mask", "message"),
    [
        (np.zeros((40, 40), np.uint8), np.zeros((40, 40)), "empty"),
        (np.zeros((40, 40), np.uint8), np.ones((40, 41)), "shape"),
        (np.full((40, 40), np.nan), np.ones((40, 40)), "NaN"),
        (np.zeros((40, 40, 6), np.uint8), np.ones((40, 40)), "channels"),
        (np.zeros((600, 4), np.uint8), np.ones((600, 4)), "too thin"),
    ],
)
def test_bad_inputs_give_clear_errors(tiny_sam, image, mask, message):
    engine = PerSAM(tiny_sam, device="cpu")
    with pytest.raises(ValueError, match=message):
        engine.learn(image, mask)


def test_channel_choice_through_the_config(tiny_sam, scene):
    image, mask = scene
    five = np.concatenate([image, image[..., :2]], axis=-1)
    engine = PerSAM(tiny_sam, config=PerSAMConfig(channels=(0, 1, 2)), device="cpu")
    seg = engine.segment(five, engine.learn(five, mask))
    reference = PerSAM(tiny_sam, device="cpu")
    expected = reference.segment(image, reference.learn(image, mask))
    np.testing.assert_array_equal(seg.mask, expected.mask)


def test_segment_many_yields_each_result(tiny_sam, scene):
    from napari_persam.core import run

    image, mask = scene
    engine = PerSAM(tiny_sam, device="cpu")
    concept = engine.learn(image, mask)
    seen = []
    results = run(engine.segment_many([image, image[::-1]], concept), on_progress=seen.append)
    assert [step.index for step in seen] == [0, 1]
    assert [step.done for step in seen] == [1, 2] and seen[-1].total == 2
    assert seen[1].result is results[1]


def test_bfloat16_encoder_on_cpu(tiny_sam, scene):
    from napari_persam.core.devices import supports_bfloat16
    from napari_persam.core.engine.embeddings import encode_image

    image, mask = scene
    cpu = torch.device("cpu")
    rgb = prepare_image(image)
    fp32 = encode_image(tiny_sam, rgb, device=cpu).features
    features = encode_image(tiny_sam, rgb, device=cpu, encoder_dtype="bfloat16").features
    assert features.dtype == torch.float32
    cosine = F.cosine_similarity(fp32.flatten(), features.flatten(), dim=0)
    assert float(cosine) > 0.98
    config = PerSAMConfig(encoder_dtype="bfloat16")
    if supports_bfloat16(cpu):
        bf16 = PerSAM(tiny_sam, config=config, device="cpu")
        bf16.segment(image, bf16.learn(image, mask))
    else:  # emulated bfloat16 is many times slower than float32: refused with advice
        with pytest.raises(ValueError, match="float32"):
            PerSAM(tiny_sam, config=config, device="cpu")


def test_config_validation(tiny_sam):
    with pytest.raises(ValueError, match="encoder_dtype"):
        PerSAMConfig(encoder_dtype="float8")
    # float16 autocast is for CUDA only (CPUs emulate it)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        PerSAM(tiny_sam, config=PerSAMConfig(encoder_dtype="float16"), device="cpu")
    with pytest.raises(ValueError, match="refinement_steps"):
        PerSAMConfig(refinement_steps=-1)
    with pytest.raises(ValueError, match="channels"):
        PerSAMConfig(channels=(0, 1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        PerSAMConfig().refinement_steps = 3
