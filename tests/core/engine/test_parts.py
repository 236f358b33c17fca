"""Cells of a mask, earth mover's distances and prototypes, against POT and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import ot
import pytest
from sklearn.cluster import KMeans

from napari_persam.core.engine.cells import (
    MAX_DISTANCE_CELLS,
    covered_cells,
    earth_movers_distance,
    thinned,
)
from napari_persam.core.engine.concepts import Concept
from napari_persam.core.engine.geometry import SamGeometry
from napari_persam.core.engine.parts import (
    kmeans_prototypes,
    part_prototypes,
    prototype_table,
    region_prototypes,
    table_rows,
)


def test_covered_cells_follow_the_coverage_rule():
    geometry = SamGeometry((64, 64), img_size=64, grid_hw=(4, 4))  # 16 px cells
    mask = np.zeros((64, 64), dtype=bool)
    assert not covered_cells(geometry, mask, 0.5).any()  # empty: no cell at all
    mask[0:16, 0:10] = True  # 62 % of cell (0, 0)
    mask[16:20, 16:20] = True  # 6 % of cell (1, 1)
    cells = covered_cells(geometry, mask, 0.5)
    assert cells[0, 0] and cells.sum() == 1
    small = np.zeros_like(mask)
    small[40:42, 40:42] = True  # covers no cell by half: its best-covered cell
    assert covered_cells(geometry, small, 0.5).sum() == 1


def test_earth_movers_distance_is_pots_with_uniform_weights(rng):
    first, second = rng.normal(size=(30, 8)), rng.normal(size=(45, 8)) + 0.5
    expected = ot.emd2(ot.unif(30), ot.unif(45), ot.dist(first, second))
    assert earth_movers_distance(first, second) == pytest.approx(expected, rel=1e-9)
    assert earth_movers_distance(first, first) == pytest.approx(0.0, abs=1e-9)
    assert earth_movers_distance(first, second[:0]) == math.inf


def test_large_cell_sets_are_thinned_evenly(rng):
    rows = rng.normal(size=(3 * MAX_DISTANCE_CELLS + 5, 4))
    kept = thinned(rows)
    assert len(kept) <= MAX_DISTANCE_CELLS
    np.testing.assert_array_equal(kept, rows[:: math.ceil(len(rows) / MAX_DISTANCE_CELLS)])
    assert len(thinned(rows[:10])) == 10


@pytest.mark.parametrize("count", [1, 2, 4])
def test_prototypes_are_normalised_kmeans_means(rng, count):
    cells = np.concatenate([rng.normal(loc, 0.1, size=(20, 16)) for loc in (-2, 0, 3, 5)])
    cells = cells.astype(np.float32)
    prototypes = kmeans_prototypes(cells, count)
    assert prototypes.shape == (count, 16) and prototypes.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(prototypes, axis=1), 1.0, rtol=1e-6)
    if count == 1:
        means = cells.mean(axis=0, keepdims=True)
    else:
        labels = KMeans(n_clusters=count, random_state=0, n_init=10).fit_predict(cells)
        means = np.stack([cells[labels == c].mean(axis=0) for c in range(count)])
    expected = means / np.linalg.norm(means, axis=1, keepdims=True)
    np.testing.assert_allclose(prototypes, expected, rtol=1e-5, atol=1e-6)


def test_counts_beyond_the_distinct_cells_are_skipped(rng):
    cells = np.repeat(rng.normal(size=(2, 8)), 5, axis=0)  # 10 cells, 2 distinct
    assert kmeans_prototypes(cells, 3) is None
    assert kmeans_prototypes(cells[:2], 3) is None
    table, groups = prototype_table(cells, range(1, 5))
    assert groups.tolist() == [1, 2, 2]
    assert table_rows(table, groups, 2).shape == (2, 8)
    assert table_rows(table, groups, 3) is None


def test_part_counts_not_learned_are_clustered_from_the_reference_cells(rng):
    cells = rng.normal(size=(40, 8)).astype(np.float32)
    table, groups = prototype_table(cells, [2])
    concept = Concept(
        target_embedding=cells.mean(axis=0),
        model_fingerprint="f",
        part_cells=cells,
        part_prototypes=table,
        part_groups=groups,
    )
    np.testing.assert_array_equal(part_prototypes(concept, 2), table)
    third = part_prototypes(concept, 3)
    np.testing.assert_allclose(third, kmeans_prototypes(cells, 3))
    assert part_prototypes(concept, 3) is third  # clustered once per concept
    unit = concept.target_embedding / np.linalg.norm(concept.target_embedding)
    np.testing.assert_allclose(part_prototypes(concept, 1)[0], unit, rtol=1e-6)
    old = Concept(target_embedding=cells.mean(axis=0), model_fingerprint="f")
    assert part_prototypes(old, 2) is None


def test_each_negative_region_is_one_prototype_without_the_objects_cells():
    geometry = SamGeometry((64, 64), img_size=64, grid_hw=(4, 4))
    features = np.zeros((3, 4, 4), dtype=np.float32)
    features[0] = 1.0
    features[1, 0, 3] = 5.0  # what the first region shows
    features[2, 3, 0] = 5.0  # what the second region shows
    negatives = np.zeros((64, 64), dtype=bool)
    negatives[0:16, 48:64] = True
    negatives[48:64, 0:16] = True
    exclude = np.zeros((4, 4), dtype=bool)
    rows = region_prototypes(features, geometry, negatives, coverage=0.5, exclude=exclude)
    assert rows.shape == (2, 3)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, rtol=1e-6)
    assert rows[0, 1] > 0.9 and rows[1, 2] > 0.9
    exclude[0, 3] = True  # that cell is the object's
    rows = region_prototypes(features, geometry, negatives, coverage=0.5, exclude=exclude)
    assert rows.shape == (1, 3) and rows[0, 2] > 0.9


def test_concept_checks_its_part_arrays():
    with pytest.raises(ValueError, match="part_cells must be finite"):
        Concept(target_embedding=np.ones(4), model_fingerprint="f", part_cells=np.ones((3, 5)))
    with pytest.raises(ValueError, match="go together"):
        Concept(target_embedding=np.ones(4), model_fingerprint="f", part_prototypes=np.ones((2, 4)))
    with pytest.raises(ValueError, match="one count per row"):
        Concept(
            target_embedding=np.ones(4),
            model_fingerprint="f",
            background_prototypes=np.ones((2, 4)),
            background_groups=np.array([1]),
        )
    concept = Concept(target_embedding=np.ones(4), model_fingerprint="f")
    assert concept.distance_threshold is None
    scaled = Concept(target_embedding=np.ones(4), model_fingerprint="f", background_distance=8.0)
    assert scaled.distance_threshold == 4.0


@pytest.mark.parametrize("shape", [(1277, 1277), (800, 600), (120, 160), (37, 900), (2000, 1500)])
def test_cells_of_a_small_mask_are_the_coverage_rules(rng, shape):
    from napari_persam.core.engine.cells import covered_cells_of_part

    geometry = SamGeometry(shape)
    for _ in range(8):
        mask = np.zeros(shape, dtype=bool)
        y, x = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        h, w = rng.integers(1, max(2, shape[0] // 3)), rng.integers(1, max(2, shape[1] // 3))
        mask[y : y + h, x : x + w] = True
        mask &= rng.random(shape) > 0.3  # ragged, as SAM's masks are
        np.testing.assert_array_equal(
            covered_cells_of_part(geometry, mask, 0.5), covered_cells(geometry, mask, 0.5)
        )
    assert not covered_cells_of_part(geometry, np.zeros(shape, dtype=bool), 0.5).any()


def test_no_count_asked_for_gives_no_table(rng):
    cells = rng.normal(size=(40, 8)).astype(np.float32)
    assert prototype_table(cells, range(1, 1)) == (None, None)  # max_negative_parts=0
    assert prototype_table(cells[:1], [2, 3]) == (None, None)  # fewer cells than parts
    assert table_rows(None, None, 2) is None
