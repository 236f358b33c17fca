import numpy as np
import pytest
import torch

from napari_persam.core.engine.geometry import SamGeometry
from napari_persam.core.engine.upscaling import (
    ROUNDING_MARGIN,
    EdgeScan,
    TooClose,
    upscale,
    upscaling_taps,
)


def _full(geometry: SamGeometry, logits: torch.Tensor) -> np.ndarray:
    return geometry.grid_to_image(logits).numpy()


def _taps(geometry: SamGeometry):
    return upscaling_taps((256, 256), geometry.img_size, geometry.resized_hw, geometry.original_hw)


@pytest.mark.parametrize("shape", [(1280, 1280), (600, 900), (77, 300)])
def test_any_window_of_the_image_is_upscaled_as_torch_upscales_the_whole(shape):
    geometry = SamGeometry(original_hw=shape)
    logits = torch.randn(256, 256, generator=torch.Generator().manual_seed(3)) * 30
    full = _full(geometry, logits)
    rows, cols = _taps(geometry)
    assert (rows.size, cols.size) == shape
    values = logits.numpy()
    for r0, r1, c0, c1 in [(0, 8, 0, shape[1]), (shape[0] - 5, shape[0], 3, 40), (10, 11, 0, 1)]:
        row_plan, col_plan = rows.window(r0, r1), cols.window(c0, c1)
        crop = values[row_plan.grid_range, col_plan.grid_range]
        stage = upscale(crop, row_plan.first, col_plan.first)
        block = upscale(stage, row_plan.second, col_plan.second)
        # Where torch's kernel fuses the source index's multiply and subtract (its AVX2
        # and AVX-512 builds), the taps agree to a few float32 roundings of the largest
        # logit (taps rounded twice were 50 times further off: 8e-4 for logits up to
        # 135 at 1280 px); any other build stays well inside the rounding margin.
        fused = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
        tolerance = (1e-6 if fused else ROUNDING_MARGIN / 4) * float(np.abs(values).max())
        np.testing.assert_allclose(block, full[r0:r1, c0:c1], atol=tolerance, rtol=0)


@pytest.mark.parametrize("lowest, highest", [(40, 60), (0, 3), (250, 255), (100, 100)])
def test_plan_covers_exactly_the_image_rows_a_grid_range_reaches(lowest, highest):
    geometry = SamGeometry(original_hw=(900, 600))
    rows, _ = _taps(geometry)
    start, stop, plan = rows.plan(lowest, highest)
    logits = torch.zeros(256, 256)
    logits[lowest : highest + 1] = 1.0
    reached = np.flatnonzero(_full(geometry, logits).any(axis=1))
    assert (start, stop) == (int(reached[0]), int(reached[-1]) + 1)
    assert plan.grid_range.start <= lowest and plan.grid_range.stop > highest


def test_edge_scan_finds_the_first_line_above_from_either_end_and_refuses_a_close_call():
    geometry = SamGeometry(original_hw=(512, 512))
    rows, cols = _taps(geometry)
    logits = np.full((256, 256), -5.0, dtype=np.float32)
    logits[100:120, 50:60] = 5.0
    full = _full(geometry, torch.from_numpy(logits)) > 0
    true_rows = np.flatnonzero(full.any(axis=1))
    scan = EdgeScan(logits, rows, cols, 0.0)
    assert scan.first(0, 512, (0, 512), rows=True, forward=True) == true_rows[0]
    assert scan.first(0, 512, (0, 512), rows=True, forward=False) == true_rows[-1]
    assert scan.first(0, 150, (0, 512), rows=True, forward=True) is None  # nothing in that band
    close = np.full((256, 256), -5.0, dtype=np.float32)
    close[100:104, 50:54] = 1e-6  # within float rounding of the threshold
    with pytest.raises(TooClose):
        EdgeScan(close, rows, cols, 0.0).first(0, 512, (0, 512), rows=True, forward=True)
