"""The learned scale and the tile plans: windows, cores, overlaps, blending, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from napari_persam.core.engine.tiles import (
    learned_pixels_per_cell,
    object_diameter,
    piece_diameters,
    plan_tiles,
)
from napari_persam.core.errors import InputError


def _disc(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def test_the_diameter_is_the_median_over_painted_pieces():
    mask = _disc((200, 200), (40, 40), 7) | _disc((200, 200), (120, 120), 7)
    mask |= _disc((200, 200), (40, 150), 20)
    assert len(piece_diameters(mask)) == 3
    assert object_diameter([mask]) == pytest.approx(2 * np.sqrt(mask[:80, :80].sum() / np.pi))
    assert object_diameter([np.zeros((5, 5), bool)]) == 0.0


def test_the_scale_is_the_coarsest_that_is_fine_enough():
    # A 15-px nucleus in a 4096 px field: 64 px per cell at the whole-image scale.
    assert learned_pixels_per_cell(
        15.0, whole_image_pixels_per_cell=64.0, object_cells=2.0
    ) == pytest.approx(7.5)
    # A polyp of 300 px in a 600 px frame spans 32 cells already: the whole image.
    assert learned_pixels_per_cell(300.0, whole_image_pixels_per_cell=9.4, object_cells=2.0) is None
    with pytest.raises(InputError, match="smaller than 2 x 2 pixels"):
        learned_pixels_per_cell(1.1, whole_image_pixels_per_cell=10.0, object_cells=2.0)


@pytest.mark.parametrize("shape", [(4096, 4096), (3000, 1800), (700, 2500)])
def test_windows_cover_the_image_with_the_overlap_and_cores_partition_it(shape):
    plan = plan_tiles(shape, pixels_per_cell=7.5, object_diameter=15.0)
    assert plan.tiled and plan.tile_side == 480 and plan.overlap == 45
    covered = np.zeros(shape, np.int32)
    owners = np.zeros(shape, np.int32)
    for (y0, x0, y1, x1), (cy0, cx0, cy1, cx1) in zip(plan.windows(), plan.cores()):
        assert 0 <= y0 < y1 <= shape[0] and 0 <= x0 < x1 <= shape[1]
        assert y1 - y0 <= plan.tile_side and x1 - x0 <= plan.tile_side
        assert y0 <= cy0 < cy1 <= y1 and x0 <= cx0 < cx1 <= x1  # the core lies in its tile
        covered[y0:y1, x0:x1] += 1
        owners[cy0:cy1, cx0:cx1] += 1
    assert covered.min() >= 1 and (owners == 1).all()
    for starts, length in ((plan.ys, shape[0]), (plan.xs, shape[1])):
        if len(starts) > 1:
            gaps = np.diff(starts)
            assert (plan.tile_side - gaps >= plan.overlap).all()  # at least the overlap
        assert starts[-1] + min(plan.tile_side, length) == length  # the last one is flush
    assert plan.index_at(0, 0) == 0 and plan.index_at(shape[0] - 1, shape[1] - 1) == len(plan) - 1


def test_a_core_pixel_lies_at_least_half_the_overlap_inside_its_tile():
    plan = plan_tiles((2000, 2000), pixels_per_cell=5.0, overlap=60)
    for (y0, _, y1, _), (cy0, _, cy1, _) in zip(plan.windows(), plan.cores()):
        if y0 > 0:
            assert cy0 - y0 >= 30
        if y1 < 2000:
            assert y1 - cy1 >= 30


def test_blend_weights_sum_to_a_positive_separable_normaliser():
    plan = plan_tiles((1000, 700), pixels_per_cell=5.0, overlap=40)
    rows, _ = plan.blend_weights()
    total = np.zeros(1000)
    for start, weight in zip(plan.ys, rows):
        total[start : start + len(weight)] += weight
        assert weight.max() == 1.0 and weight.min() > 0
    assert total.min() > 0.5  # every row is covered with weight
    assert rows[0][0] == 1.0  # no ramp at the image border


def test_no_tiling_when_the_whole_image_is_fine_or_tiling_is_off():
    for plan in (
        plan_tiles((900, 1200), pixels_per_cell=None),
        plan_tiles((900, 1200), pixels_per_cell=5.0, tiling="off"),
        plan_tiles((300, 200), pixels_per_cell=5.0),  # smaller than one tile (320 px)
    ):
        assert not plan.tiled and len(plan) == 1
        assert plan.windows() == [(0, 0, *plan.image_hw)]
        assert plan.describe() == "the whole image"


def test_a_tile_side_can_be_forced():
    plan = plan_tiles((2048, 2048), pixels_per_cell=None, tiling=512, overlap=32)
    assert plan.tile_side == 512 and plan.shape == (5, 5) and plan.pixels_per_cell == 8.0
    assert plan.describe() == "5 x 5 tiles of 512 px"


def test_a_plan_beyond_the_limit_says_how_to_coarsen():
    with pytest.raises(InputError) as refused:
        plan_tiles((8192, 8192), pixels_per_cell=2.0, max_tiles=256)
    text = str(refused.value)
    assert "more than the limit of 256" in text and "object_cells" in text
    assert "tiling" in text and "crop" in text
