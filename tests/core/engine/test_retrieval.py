"""Part-aware prompting and distribution-guided retrieval (P²SAM).

With a tiny random SAM, what the engine computes is recomputed from scikit-learn,
POT and segment_anything's own modules, as P²SAM's ``p2sam_perseg`` does it. With
the semantic stand-ins, two-part objects and look-alikes show what it is for.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import ot
import pytest
import torch
from segment_anything import SamPredictor
from sklearn.cluster import KMeans

from napari_persam.core import PerSAM, PerSAMConfig
from napari_persam.core.engine.images import prepare_image
from napari_persam.core.engine.retrieval import prompt_pairs
from napari_persam.core.errors import InputError
from tests.synthetic import (
    LOOK_ALIKE,
    TARGET,
    paint_object,
    paint_two_part_object,
    parts_sam,
    plain_background,
)

PLAIN = dict(
    target_guided_attention=False, semantic_prompt=False, refinement_steps=2, min_area_fraction=0
)
PART_AWARE = PerSAMConfig(prompt_mode="part-aware", max_parts=3, max_negative_parts=2, **PLAIN)


@pytest.fixture
def scene(rng):
    image = rng.integers(0, 255, size=(120, 160, 3), dtype=np.uint8)
    image[30:80, 40:110] = (200, 60, 60)
    image[45:65, 60:90] = (40, 200, 60)  # a second part inside the object
    mask = np.zeros((120, 160), dtype=bool)
    mask[30:80, 40:110] = True
    return image, mask


# ------------------------------------------------------------- recomputations
def _unit(rows):
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def _prototypes(cells, count):
    """P²SAM's prototypes: KMeans(n, random_state=0) cluster means, normalised."""
    if count == 1:
        return _unit(cells.mean(axis=0, keepdims=True))
    labels = KMeans(n_clusters=count, random_state=0, n_init=10).fit_predict(cells)
    return _unit(np.stack([cells[labels == c].mean(axis=0) for c in range(count)]))


def _similarity_maps(sam, embedding, directions):
    """Cosine maps of ``directions`` in image pixels, through ``Sam.postprocess_masks``."""
    features = embedding.features[0].numpy()
    unit = features / np.linalg.norm(features, axis=0, keepdims=True)
    grids = np.einsum("kc,chw->khw", directions, unit)
    geometry = embedding.geometry
    maps = sam.postprocess_masks(
        torch.from_numpy(grids).float()[None],
        input_size=geometry.resized_hw,
        original_size=geometry.original_hw,
    )[0]
    return maps.numpy()


def _argmax(image):
    return np.array(np.unravel_index(np.argmax(image), image.shape), dtype=float)


def _argmin(image):
    return np.array(np.unravel_index(np.argmin(image), image.shape), dtype=float)


def _cells(embedding, mask):
    coverage = embedding.geometry.mask_coverage(mask)
    cells = coverage >= 0.5
    if not cells.any():
        cells = coverage >= coverage.max()
    return embedding.features[0].numpy()[:, cells].T


def _official_cascade(sam, rgb, points_yx, labels):
    """PerSAM's (and P²SAM's) cascade with segment_anything's SamPredictor."""
    predictor = SamPredictor(sam)
    predictor.set_image(rgb)
    xy = points_yx[:, ::-1].copy()
    masks, scores, logits = predictor.predict(
        point_coords=xy, point_labels=labels, multimask_output=False
    )
    best = 0
    for step in (1, 2):
        box = None
        if step == 2:
            ys, xs = np.nonzero(masks[best])
            box = np.array([xs.min(), ys.min(), xs.max(), ys.max()])[None]
        masks, scores, logits = predictor.predict(
            point_coords=xy,
            point_labels=labels,
            box=box,
            mask_input=logits[best : best + 1],
            multimask_output=True,
        )
        best = int(np.argmax(scores))
    return masks[best]


@pytest.mark.parametrize("parts", [2, 3])
def test_positive_points_are_the_maxima_of_the_kmeans_prototypes(tiny_sam, scene, parts):
    image, mask = scene
    config = dataclasses.replace(PART_AWARE, min_parts=parts, max_parts=parts, max_negative_parts=0)
    engine = PerSAM(tiny_sam, config=config, device="cpu")
    seg = engine.segment(image, engine.learn(image, mask))
    assert seg.parts == (parts, 0)

    embedding = engine.embed(image)
    prototypes = _prototypes(_cells(embedding, mask), parts)
    maps = _similarity_maps(tiny_sam, embedding, prototypes)
    expected = np.stack([_argmax(m) for m in maps] + [_argmin(maps.mean(axis=0))])
    np.testing.assert_array_equal(seg.points, expected)
    assert seg.point_labels.tolist() == [1] * parts + [0]


def test_the_chosen_pair_minimises_the_recomputed_distances(tiny_sam, scene):
    image, mask = scene
    engine = PerSAM(tiny_sam, config=PART_AWARE, device="cpu")
    concept = engine.learn(image, mask)
    target = np.ascontiguousarray(np.roll(image, (7, -11), axis=(0, 1)))
    seg = engine.segment(target, concept)
    assert set(seg.retrieval_distances) == set(prompt_pairs(PART_AWARE))
    assert seg.parts == min(seg.retrieval_distances, key=seg.retrieval_distances.get)

    reference = engine.embed(image)
    embedding = engine.embed(target)
    reference_cells = _cells(reference, mask)
    coverage = reference.geometry.mask_coverage(mask)
    background = (coverage == 0) & reference.geometry.valid_cells()  # padding is not background
    background_cells = reference.features[0].numpy()[:, background].T
    rgb = prepare_image(target)
    for (parts, negatives), distance in seg.retrieval_distances.items():
        maps = _similarity_maps(tiny_sam, embedding, _prototypes(reference_cells, parts))
        points = [_argmax(m) for m in maps]
        if negatives == 0:
            negative_points = [_argmin(maps.mean(axis=0))]
        else:
            back = _prototypes(background_cells, negatives)
            negative_points = [_argmax(m) for m in _similarity_maps(tiny_sam, embedding, back)]
        prompt = np.stack(points + negative_points)
        labels = np.array([1] * len(points) + [0] * len(negative_points))
        found = _official_cascade(tiny_sam, rgb, prompt, labels)
        cells = _cells(embedding, found)
        expected = ot.emd2(
            ot.unif(len(reference_cells)), ot.unif(len(cells)), ot.dist(reference_cells, cells)
        )
        assert distance == pytest.approx(expected, rel=1e-5), (parts, negatives)
        if (parts, negatives) == seg.parts:
            np.testing.assert_array_equal(seg.mask, found)
            np.testing.assert_array_equal(seg.points, prompt)


@pytest.mark.parametrize(
    "config",
    [
        PerSAMConfig(prompt_mode="persam"),
        PerSAMConfig(prompt_mode="part-aware", max_parts=1, max_negative_parts=0),
        PerSAMConfig(prompt_mode="persam", negative_prior=False, refinement_steps=1),
    ],
    ids=["persam", "part-aware-n1", "persam-no-negative"],
)
def test_persam_mode_and_one_part_give_persams_result_bit_for_bit(tiny_sam, scene, config):
    image, mask = scene
    engine = PerSAM(tiny_sam, config=config, device="cpu")
    for concept in (
        engine.learn(image, mask),
        engine.learn([(image, mask), (image[::-1], mask[::-1])]),
    ):
        target = np.ascontiguousarray(np.roll(image, 9, axis=1))
        seg = engine.segment(target, concept)
        persam = engine.prompter.segment(engine.embed(target), concept)  # PerSAM, as before
        np.testing.assert_array_equal(seg.mask, persam.mask)
        assert seg.score == persam.score
        np.testing.assert_array_equal(seg.points, persam.points)
        np.testing.assert_array_equal(seg.point_labels, persam.point_labels)
        np.testing.assert_array_equal(seg.similarity, persam.similarity)
        assert (seg.box is None) == (persam.box is None)
        assert seg.parts == (1, 0) and set(seg.retrieval_distances) == {(1, 0)}


def test_guided_part_aware_segmentation_runs_every_pair(tiny_sam, scene):
    image, mask = scene
    config = PerSAMConfig(prompt_mode="part-aware", max_parts=3)
    engine = PerSAM(tiny_sam, config=config, device="cpu")
    seg = engine.segment(image, engine.learn(image, mask))
    assert set(seg.retrieval_distances) == set(prompt_pairs(config))
    n, negatives = seg.parts
    assert int((seg.point_labels == 1).sum()) == n
    assert int((seg.point_labels == 0).sum()) == max(negatives, 1)


def test_several_references_pool_their_cells_and_set_the_distance_scale(tiny_sam, scene):
    image, mask = scene
    other = np.ascontiguousarray(image[::-1, ::-1])
    other_mask = mask[::-1, ::-1]
    engine = PerSAM(tiny_sam, config=PART_AWARE, device="cpu")
    concept = engine.learn([(image, mask), (other, other_mask)])
    first, second = _cells(engine.embed(image), mask), _cells(engine.embed(other), other_mask)
    np.testing.assert_array_equal(concept.part_cells, np.concatenate([first, second]))
    emd = ot.emd2(ot.unif(len(first)), ot.unif(len(second)), ot.dist(first, second))
    assert concept.object_distance == pytest.approx(emd, rel=1e-5)
    backgrounds = []
    for picture, painted in ((image, mask), (other, other_mask)):
        embedding = engine.embed(picture)
        outside = (
            embedding.geometry.mask_coverage(painted) == 0
        ) & embedding.geometry.valid_cells()
        backgrounds.append(embedding.features[0].numpy()[:, outside].T)
    pooled, background = concept.part_cells, np.concatenate(backgrounds)
    expected = ot.emd2(ot.unif(len(pooled)), ot.unif(len(background)), ot.dist(pooled, background))
    assert concept.background_distance == pytest.approx(expected, rel=1e-5)
    assert concept.distance_threshold == pytest.approx((emd + expected) / 2, rel=1e-5)
    np.testing.assert_allclose(
        concept.part_prototypes[concept.part_groups == 2], _prototypes(pooled, 2), atol=1e-5
    )


def test_stacks_and_classes_are_prompted_part_aware(tiny_sam, scene):
    from napari_persam.core import run

    image, mask = scene
    config = dataclasses.replace(PART_AWARE, max_parts=2, max_negative_parts=0)
    engine = PerSAM(tiny_sam, config=dataclasses.replace(config, stack_mode="independent"))
    concept = engine.learn(image, mask)
    stack = np.stack([image, np.roll(image, 6, axis=1)])
    results = run(engine.segment_stack(stack, concept, reference_index=0))
    assert all(result.parts in {(1, 0), (2, 0)} for result in results.values())
    assert all(set(result.retrieval_distances) == {(1, 0), (2, 0)} for result in results.values())

    labels = mask.astype(np.int32)
    labels[0:20, 0:30] = 2
    negatives = np.zeros(mask.shape, dtype=bool)
    negatives[100:115, 130:155] = True
    classes = engine.learn_classes(image, labels, negatives=negatives)
    assert all(c.negative_prototypes.shape == (1, 256) for c in classes.concepts.values())
    with pytest.raises(InputError, match="overlap"):
        engine.learn_classes(image, labels, negatives=labels == 2)
    result = engine.segment(image, classes)
    assert set(np.unique(result.labels)) <= {0, 1, 2}


# ------------------------------------------------------------------ stand-ins
UNGUIDED = dict(target_guided_attention=False, semantic_prompt=False)


@pytest.fixture(scope="module")
def parts_engines():
    sam = parts_sam(img_size=512)  # a 32 x 32 grid: cells of 8 px on these 256 px scenes
    config = PerSAMConfig(max_parts=3, **UNGUIDED)
    return {
        mode: PerSAM(sam, config=dataclasses.replace(config, prompt_mode=mode), device="cpu")
        for mode in ("persam", "part-aware")
    }


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


@pytest.mark.parametrize("seed", range(4))
def test_two_part_objects_get_a_point_on_each_part_and_are_found_whole(parts_engines, seed):
    rng = np.random.default_rng(seed)
    reference = plain_background((256, 256), seed)
    whole, _ = paint_two_part_object(reference, (100, 110), 40, seed=seed)
    target = plain_background((256, 256), seed + 50)
    centre = (rng.uniform(60, 190), rng.uniform(60, 190))
    target_whole, target_core = paint_two_part_object(target, centre, 36, seed=seed + 7)
    rim = target_whole & ~target_core

    results = {}
    for mode, engine in parts_engines.items():
        results[mode] = engine.segment(target, engine.learn(reference, whole))
    persam, part_aware = results["persam"], results["part-aware"]

    # PerSAM: one positive point, on one part; part-aware: one on each part.
    assert int((persam.point_labels == 1).sum()) == 1
    positives = part_aware.points[part_aware.point_labels == 1].astype(int)
    assert any(target_core[y, x] for y, x in positives)
    assert any(rim[y, x] for y, x in positives)
    # The whole object is closer to the reference than PerSAM's one part.
    distances = part_aware.retrieval_distances
    assert distances[part_aware.parts] < distances[(1, 0)]
    assert _iou(part_aware.mask, target_whole) > 0.75  # boundary cells mix both parts
    assert _iou(persam.mask, target_whole) < _iou(part_aware.mask, target_whole) - 0.1


@pytest.mark.parametrize("mode", ["persam", "part-aware"])
def test_a_painted_negative_suppresses_a_look_alike(parts_engines, mode):
    engine = parts_engines[mode]
    reference = plain_background((256, 256), 0)
    target_mask = paint_object(reference, (70, 70), 24, TARGET, 1)
    look_alike = paint_object(reference, (180, 180), 24, LOOK_ALIKE, 2)
    image = plain_background((256, 256), 5)
    objects = [
        paint_object(image, centre, 22, TARGET, 3 + i)
        for i, centre in enumerate([(60, 60), (190, 70)])
    ]
    distractor = paint_object(image, (120, 190), 22, LOOK_ALIKE, 5)

    plain = engine.segment_instances(image, engine.learn(reference, target_mask))
    assert plain.count == 3 and plain.labels[distractor].any()  # PerSAM picks it up
    assert plain.distances.shape == (3,)
    # Distances are part-aware's; PerSAM's instance search costs what it did.
    assert np.isfinite(plain.distances).all() == (mode == "part-aware")
    assert np.isnan(plain.distances).all() == (mode == "persam")

    concept = engine.learn(reference, target_mask, negatives=look_alike)
    assert concept.negative_prototypes.shape == (1, 256)
    found = engine.segment_instances(image, concept)
    assert found.count == 2 and not found.labels[distractor].any()
    assert all(found.labels[obj].any() for obj in objects)
    # The negative's point goes where the image shows the look-alike, and only there.
    seg = engine.segment(image, concept)
    negatives = seg.points[seg.point_labels == 0].astype(int)
    assert any(distractor[y, x] for y, x in negatives)
    without = plain_background((256, 256), 6)
    paint_object(without, (100, 100), 22, TARGET, 9)
    seg = engine.segment(without, concept)
    assert len(seg.points) == len(
        engine.segment(without, engine.learn(reference, target_mask)).points
    )


def test_instances_far_from_the_reference_are_dropped(parts_engines):
    engine = parts_engines["part-aware"]
    reference = plain_background((256, 256), 0)
    mask = paint_object(reference, (70, 70), 24, TARGET, 1)
    image = plain_background((256, 256), 5)
    paint_object(image, (60, 60), 22, TARGET, 3)
    paint_object(image, (120, 190), 22, LOOK_ALIKE, 5)
    concept = engine.learn(reference, mask)
    found = engine.segment_instances(image, concept)
    assert found.count == 2
    assert concept.distance_threshold > found.distances.max()
    limit = float(found.distances.min() + found.distances.max()) / 2
    strict = PerSAM(
        engine.sam,
        config=dataclasses.replace(engine.config, instance_max_distance=limit),
        device="cpu",
        cache=engine.cache,
    )
    kept = strict.segment_instances(image, concept)
    assert kept.count == 1 and kept.distances[0] == found.distances.min()


# ------------------------------------------------------------------ bad input
def test_fewer_reference_cells_than_parts_skips_those_counts(tiny_sam, scene):
    image, _ = scene
    mask = np.zeros(image.shape[:2], dtype=bool)
    mask[50:53, 70:73] = True  # inside a single feature cell
    # At the whole-image scale (tiling would learn a finer one, where it spans cells).
    whole = dataclasses.replace(PART_AWARE, tiling="off")
    engine = PerSAM(tiny_sam, config=whole, device="cpu")
    concept = engine.learn(image, mask)
    assert len(concept.part_cells) == 1 and concept.part_groups is None  # no count fits
    seg = engine.segment(image, concept)
    assert {parts for parts, _ in seg.retrieval_distances} == {1}
    # Nothing left to try at all: PerSAM's prompts still apply.
    only_many = dataclasses.replace(whole, min_parts=2)
    seg = PerSAM(tiny_sam, config=only_many, device="cpu", cache=engine.cache).segment(
        image, concept
    )
    assert seg.parts == (1, 0) and seg.point_labels.tolist() == [1, 0]


def test_an_empty_negatives_layer_is_ignored(tiny_sam, scene):
    image, mask = scene
    engine = PerSAM(tiny_sam, config=PART_AWARE, device="cpu")
    plain = engine.learn(image, mask)
    empty = engine.learn(image, mask, negatives=np.zeros(mask.shape, dtype=np.uint8))
    assert empty.negative_prototypes is None
    a, b = engine.segment(image, plain), engine.segment(image, empty)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.points, b.points)


def test_a_negative_overlapping_the_object_is_refused_before_encoding(make_tiny_sam, scene):
    image, mask = scene
    sam = make_tiny_sam()
    calls = []
    sam.image_encoder.register_forward_hook(lambda *args: calls.append(1))
    engine = PerSAM(sam, config=PART_AWARE, device="cpu")
    negatives = np.zeros(mask.shape, dtype=bool)
    negatives[75:90, 100:120] = True  # 5 x 10 pixels inside the object
    with pytest.raises(InputError, match="overlap the reference object in 50 pixel") as caught:
        engine.learn(image, mask, negatives=negatives)
    assert "negatives" in caught.value.options and "Erase the overlap" in str(caught.value)
    with pytest.raises(InputError, match="reference 2"):
        engine.learn([(image, mask), (image, mask)], negatives=[None, negatives])
    with pytest.raises(InputError, match="shape"):
        engine.learn(image, mask, negatives=negatives[:10])
    with pytest.raises(ValueError, match="one mask"):
        engine.learn([(image, mask), (image, mask)], negatives=negatives)
    assert calls == []  # nothing was encoded
