"""Small objects in large images: learning at the painted object's scale, in tiles.

The stand-in SAM of ``tests/synthetic.py`` describes each 16 x 16 input patch by its
(normalised) intensity and texture, and its decoder grows regions of alike cells, so
whether a scale can see small discs, and whether every disc is found once, can be
asserted.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import rankdata

from napari_persam.core import PerSAM, PerSAMConfig
from napari_persam.core.errors import InputError
from tests.synthetic import disc_field, semantic_sam


def _engine(**options) -> PerSAM:
    config = PerSAMConfig(
        target_guided_attention=False,  # the stand-in decoder is not a transformer
        semantic_prompt=False,
        min_area_fraction=0.0,
        **options,
    )
    # Discs span two cells at their scale: grow each from the cell under its point, and
    # take in the cells the disc covers partly (background cells point the other way).
    sam = semantic_sam(img_size=1024, typical=False, similarity=0.3)
    return PerSAM(sam, config=config, device="cpu")


def _separation(similarity: np.ndarray, labels: np.ndarray) -> float:
    """How far disc pixels stand out: (disc mean - background mean) / background spread."""
    background = similarity[labels == 0]
    return float((similarity[labels > 0].mean() - background.mean()) / background.std())


def _auc(similarity: np.ndarray, labels: np.ndarray, rng) -> float:
    """ROC-AUC of the similarity map for disc pixels against background pixels."""
    positive = similarity[labels > 0]
    far = np.argwhere(labels == 0)
    negative = similarity[tuple(far[rng.choice(len(far), 200_000, replace=False)].T)]
    ranks = rankdata(np.concatenate([positive, negative]))
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@pytest.fixture(scope="module")
def field():
    image, labels = disc_field()
    return image, labels, labels == 1  # the first disc is painted


@pytest.mark.slow
def test_only_the_learned_scale_tells_small_discs_from_background(field):
    image, labels, painted = field
    rng = np.random.default_rng(0)

    whole = _engine(tiling="off")
    concept = whole.learn(image, painted)
    assert concept.pixels_per_cell is None
    similarity = whole.segment(image, concept).similarity
    auc_whole, separation_whole = _auc(similarity, labels, rng), _separation(similarity, labels)

    tiled = _engine()
    concept = tiled.learn(image, painted)
    # About 14 px across, 2 cells: 7 px per cell instead of the whole image's 64.
    assert 6.0 <= concept.pixels_per_cell <= 8.5
    (plan,) = tiled.plan_tiles(image.shape, concept)
    assert plan.tiled and len(plan) <= 256
    segmentation = tiled.segment(image, concept)
    auc_tiled = _auc(segmentation.similarity, labels, rng)
    separation_tiled = _separation(segmentation.similarity, labels)
    assert segmentation.similarity.shape == image.shape
    # At the whole-image scale a disc is 4 % of a cell: it only nudges its cell's value
    # (this linear stand-in keeps some order, AUC ~0.96; SAM's features keep none).
    figures = (auc_whole, auc_tiled, separation_whole, separation_tiled)
    assert auc_tiled > 0.995 and auc_tiled > auc_whole, figures
    assert separation_tiled > 3 * separation_whole and separation_tiled > 5, figures
    # One object: the mask lies on a disc.
    found = labels[segmentation.mask]
    assert segmentation.found and (found > 0).mean() > 0.5


@pytest.mark.slow
def test_every_disc_is_found_once_across_tile_borders(field):
    image, labels, painted = field
    engine = _engine(max_instances=50)
    concept = engine.learn(image, painted)
    found = engine.segment_instances(image, concept)
    discs = int(labels.max())
    centres = [np.argwhere(labels == value).mean(axis=0).round().astype(int) for value in
               range(1, discs + 1)]  # fmt: skip
    hit = [found.labels[y, x] > 0 for y, x in centres]
    assert np.mean(hit) >= 0.85, np.mean(hit)
    # No disc is counted twice: each disc is covered by one instance at most.
    for value in range(1, discs + 1):
        ids, counts = np.unique(found.labels[labels == value], return_counts=True)
        assert (counts[ids > 0] >= 0.3 * (labels == value).sum()).sum() <= 1
    assert found.count <= discs * 1.05 and len(np.unique(found.ids)) == found.count


def test_masks_land_on_the_right_pixels_of_a_non_square_image_at_its_borders():
    image, labels = disc_field((1100, 700), spacing=150, seed=3)
    engine = _engine(tile_overlap=60)
    concept = engine.learn(image, labels == 1)
    (plan,) = engine.plan_tiles(image.shape, concept)
    assert plan.tiled and len(plan) > 1
    found = engine.segment_instances(image, concept)
    assert found.labels.shape == image.shape
    matched = 0
    for object_id in found.ids:
        under = labels[found.labels == object_id]
        values, counts = np.unique(under[under > 0], return_counts=True)
        if len(values):
            disc = labels == values[np.argmax(counts)]
            overlap = (disc & (found.labels == object_id)).sum() / disc.sum()
            matched += overlap > 0.5
    assert matched >= 0.8 * labels.max()


def test_an_object_big_enough_keeps_the_whole_image_exactly(make_tiny_sam, rng):
    image = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    mask = np.zeros((300, 400), bool)
    mask[60:200, 80:260] = True
    auto = PerSAM(make_tiny_sam(), device="cpu")
    off = PerSAM(make_tiny_sam(), device="cpu", config=PerSAMConfig(tiling="off"))
    concept_auto, concept_off = auto.learn(image, mask), off.learn(image, mask)
    assert concept_auto.pixels_per_cell is None
    np.testing.assert_array_equal(concept_auto.target_embedding, concept_off.target_embedding)
    a, b = auto.segment(image, concept_auto), off.segment(image, concept_off)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.similarity, b.similarity)


def test_tiles_go_through_the_cache_and_a_second_run_encodes_nothing():
    image, labels = disc_field((900, 900), spacing=150, seed=5)
    engine = _engine(cache_size=256)
    concept = engine.learn(image, labels == 1)
    (plan,) = engine.plan_tiles(image.shape, concept)
    before = engine.cache.misses
    engine.segment(image, concept)
    encoded = engine.cache.misses - before
    assert encoded == len(plan) or encoded == len(plan) - 1  # the painted tile was cached
    engine.segment_instances(image, concept)
    assert engine.cache.misses - before == encoded


def test_a_plan_beyond_max_tiles_is_refused_before_any_encoding():
    image, labels = disc_field((2000, 2000), spacing=150, seed=2)
    engine = _engine(max_tiles=4)
    with pytest.raises(InputError, match="more than the limit of 4"):
        engine.learn(image, labels == 1)
    learned = _engine().learn(image, labels == 1)  # the stand-in has no random weights
    strict = _engine(max_tiles=4)
    misses = strict.cache.misses
    with pytest.raises(InputError, match="Coarsen"):
        strict.segment(image, learned)
    assert strict.cache.misses == misses


def test_a_tiny_painting_is_refused_with_what_to_do():
    image, _ = disc_field((600, 600), spacing=150, seed=1)
    painted = np.zeros(image.shape, bool)
    painted[100, 100] = True
    with pytest.raises(InputError, match="smaller than 2 x 2 pixels"):
        _engine().learn(image, painted)


def test_a_propagated_tiled_stack_keeps_instance_ids():
    image, labels = disc_field((900, 900), spacing=150, seed=4)
    shifted = np.roll(image, 3, axis=1)
    stack = np.stack([image, shifted, np.roll(shifted, 3, axis=1)])
    engine = _engine()
    concept = engine.learn(image, labels == 1)
    assert engine.plan_tiles(image.shape, concept)[0].tiled
    from napari_persam.core import run

    results = run(
        engine.segment_stack(stack, concept, reference_index=0, instances=True, mode="propagate")
    )
    first, last = results[0], results[2]
    assert first.count >= 0.8 * labels.max()
    kept = set(first.ids.tolist()) & set(last.ids.tolist())
    assert len(kept) >= 0.8 * first.count


def test_part_aware_prompts_and_negatives_work_at_the_learned_scale():
    image, labels = disc_field((900, 900), spacing=150, seed=5)
    engine = _engine(prompt_mode="part-aware", max_parts=2, max_negative_parts=1)
    painted = labels == 1
    (plan,) = engine.plan_tiles(image.shape, engine.learn(image, painted))
    assert plan.tiled
    # "Not this": a patch of background in the core of a tile that does not hold the object.
    ys, xs = np.nonzero(painted)
    negatives = np.zeros(image.shape, bool)
    for y0, x0, y1, x1 in plan.cores():
        holds_object = y0 <= ys.mean() < y1 and x0 <= xs.mean() < x1
        cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
        box = (slice(cy - 20, cy + 20), slice(cx - 20, cx + 20))
        if not holds_object and not labels[box].any():
            negatives[box] = True
            break
    assert negatives.any()
    concept = engine.learn(image, painted, negatives=negatives)
    assert concept.pixels_per_cell is not None and concept.part_cells is not None
    assert concept.negative_prototypes is not None and len(concept.negative_prototypes) == 1
    seg = engine.segment(image, concept)
    assert seg.parts is not None and seg.retrieval_distances  # chosen as part-aware does
    assert seg.mask.shape == image.shape and seg.found
    assert (labels[seg.mask] > 0).mean() > 0.5  # on a disc
    assert not (seg.mask & negatives).any()


def test_every_instance_at_the_learned_scale_keeps_its_distance_to_the_reference():
    image, labels = disc_field((900, 900), spacing=150, seed=5)
    engine = _engine(prompt_mode="part-aware", max_parts=2)
    concept = engine.learn(image, labels == 1)
    found = engine.segment_instances(image, concept)
    assert len(found.ids) > 1 and len(found.distances) == len(found.ids)
    assert np.isfinite(found.distances).all()  # each object was judged against the reference
