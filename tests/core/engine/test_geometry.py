import numpy as np
import pytest
import torch

from napari_persam.core.engine.geometry import SamGeometry, resized_shape
from napari_persam.core.engine.postprocess import tight_box


def test_resized_shape_follows_sams_rounding():
    assert resized_shape(1024, 1024, 1024) == (1024, 1024)
    assert resized_shape(300, 400, 1024) == (768, 1024)
    assert resized_shape(101, 101, 1024) == (1024, 1024)
    assert resized_shape(500, 333, 1024) == (1024, 682)  # 333 * 2.048 = 681.98 -> 682


def test_coverage_of_cell_aligned_square_mask():
    geometry = SamGeometry((1024, 1024))
    mask = np.zeros((1024, 1024), dtype=bool)
    mask[64:128, 32:96] = True  # rows of cells 4..7, columns 2..5
    coverage = geometry.mask_coverage(mask)
    assert coverage.shape == (64, 64)
    expected = np.zeros((64, 64))
    expected[4:8, 2:6] = 1.0
    np.testing.assert_allclose(coverage, expected, atol=1e-6)


def test_coverage_of_non_square_image_respects_padding():
    # 256 x 512 image -> 512 x 1024 resized -> cells rows 0..31 hold image.
    geometry = SamGeometry((256, 512))
    assert geometry.valid_grid_hw == (32, 64)
    mask = np.zeros((256, 512), dtype=bool)
    mask[:, 256:] = True  # right half
    coverage = geometry.mask_coverage(mask)
    np.testing.assert_allclose(coverage[:32, 32:], 1.0, atol=1e-6)
    np.testing.assert_allclose(coverage[:32, :32], 0.0, atol=1e-6)
    np.testing.assert_allclose(coverage[32:], 0.0)  # padding is never object


def test_coverage_fraction_of_partly_covered_cells():
    # 100 px -> 1024 px: pixel 10 spans input pixels 102.4..112.6, i.e. 60% of
    # cell 6 (96..112) in each direction and a sliver of cell 7.
    geometry = SamGeometry((100, 100))
    mask = np.zeros((100, 100), dtype=bool)
    mask[10, 10] = True
    coverage = geometry.mask_coverage(mask)
    assert np.unravel_index(np.argmax(coverage), coverage.shape) == (6, 6)
    assert 0.3 < coverage.max() < 0.45
    # whole input pixels: 10 or 11 per original pixel, so the area is close, not exact
    assert coverage.sum() == pytest.approx((1024 / 100) ** 2 / 256, rel=0.2)


def test_grid_to_image_inverts_the_geometry_for_non_square_images():
    geometry = SamGeometry((300, 600))  # resized 512 x 1024: grid rows 0..31 are image
    grid = torch.zeros(64, 64)
    grid[:32, 48:] = 1.0  # right quarter of the image's cells
    image = geometry.grid_to_image(grid).numpy()
    assert image.shape == (300, 600)
    assert image[:250, 480:].min() > 0.99  # well inside the right quarter
    assert image[:, :420].max() < 0.01
    # Image rows map onto grid rows 0..31 only (stretching over the padding rows,
    # which are 0 here, would dim the whole lower half).
    assert image[:250, -1].min() > 0.99


def test_grid_to_image_keeps_leading_dimensions():
    geometry = SamGeometry((50, 80))
    out = geometry.grid_to_image(torch.zeros(3, 256, 256))
    assert out.shape == (3, 50, 80)


def test_points_and_boxes_swap_to_sam_xy():
    geometry = SamGeometry((300, 400))  # scale 2.56
    points = geometry.points_to_sam(np.array([[10.0, 20.0], [299.0, 0.0]]))
    np.testing.assert_allclose(points, [[20 * 2.56, 10 * 2.56], [0.0, 299 * 2.56]], rtol=1e-5)
    box = geometry.box_to_sam(np.array([1.0, 2.0, 3.0, 4.0]))
    np.testing.assert_allclose(box, np.array([2.0, 1.0, 4.0, 3.0]) * 2.56, rtol=1e-5)


def test_too_thin_images_are_refused():
    with pytest.raises(ValueError, match="too thin"):
        SamGeometry((1000, 10))
    SamGeometry((1000, 16))  # 16 * 1.024 = 16.4 px: one cell, accepted
    with pytest.raises(ValueError, match="no pixels"):
        SamGeometry((0, 10))


@pytest.mark.parametrize("shape", [(1280, 1280), (600, 900), (77, 300), (200, 180), (3000, 2000)])
def test_masks_upscaled_around_the_object_equal_the_full_upscaling(shape):
    geometry = SamGeometry(original_hw=shape)
    generator = torch.Generator().manual_seed(sum(shape))
    for trial in range(6):
        logits = torch.randn(256, 256, generator=generator) * 0.5 - 6
        y, x = (int(v) for v in torch.randint(0, 230, (2,), generator=generator))
        logits[y : y + 1 + 5 * trial, x : x + 3 + 4 * trial] += 9  # objects of several sizes
        if trial == 5:
            logits += 7  # most of the image: the full kernel's turn
        expected = (geometry.grid_to_image(logits) > 0).numpy()
        np.testing.assert_array_equal(geometry.mask_from_logits(logits, 0.0), expected)
    assert not geometry.mask_from_logits(torch.full((256, 256), -1.0)).any()


@pytest.mark.parametrize("shape", [(1280, 1280), (600, 900), (77, 300), (3000, 2000)])
def test_whether_a_mask_is_empty_is_told_without_forming_it(shape, formed_masks):
    geometry = SamGeometry(original_hw=shape)
    generator = torch.Generator().manual_seed(sum(shape))
    cases = [torch.full((256, 256), -1.0)]  # nothing above: empty
    broad = torch.randn(256, 256, generator=generator) - 4
    broad[5:15, 10:40] += 12  # a clear object, inside every image's part of the grid
    cases.append(broad)
    spike = torch.full((256, 256), -50.0)
    spike[128, 7] = 0.01  # above in the grid, below everywhere once upscaled
    cases.append(spike)
    faint = torch.full((256, 256), -1.0)
    faint[20:24, 30:34] = 1.2e-5  # barely above: the formed mask decides
    cases.append(faint)
    formed = formed_masks
    for index, logits in enumerate(cases):
        formed.clear()
        expected = bool((geometry.grid_to_image(logits) > 0).any())
        assert geometry.mask_from_logits_any(logits, 0.0) == expected
        # Empty grids and clear objects are told without forming the mask.
        assert bool(formed) == (index >= 2), index
    assert not bool((geometry.grid_to_image(spike) > 0).any())


@pytest.mark.parametrize(
    "shape, frame_side",
    [
        ((1280, 1280), None),
        ((600, 900), None),
        ((77, 300), None),
        ((3000, 2000), None),
        ((300, 1024), 1024),  # tiles: a partial one at the border
        ((700, 450), 1000),
    ],
)
def test_a_masks_box_is_found_without_forming_the_mask(shape, frame_side, formed_masks):
    geometry = SamGeometry(original_hw=shape, frame_side=frame_side)
    generator = torch.Generator().manual_seed(sum(shape))
    cases = [torch.full((256, 256), -1.0)]  # empty
    for trial in range(8):
        logits = torch.randn(256, 256, generator=generator) * 0.5 - 6
        y, x = (int(v) for v in torch.randint(0, 230, (2,), generator=generator))
        logits[y : y + 1 + 5 * trial, x : x + 3 + 4 * trial] += 9
        if trial >= 6:
            logits += 7  # most of the image (the formed mask takes torch's kernel)
        cases.append(logits)
    diagonal = torch.full((256, 256), -8.0)
    diagonal[10:14, 60:64] = 8.0  # the top edge, right of ...
    diagonal[50:60, 5:9] = 8.0  # ... the left edge: every edge from another blob's rows
    cases.append(diagonal)
    spike = torch.full((256, 256), -50.0)
    spike[40, 7] = 0.01  # above in the grid, below everywhere once upscaled
    cases.append(spike)
    faint = torch.full((256, 256), -1.0)
    faint[20:24, 30:34] = 1.2e-5  # barely above: the formed mask decides
    cases.append(faint)
    formed = formed_masks
    for index, logits in enumerate(cases):
        formed.clear()
        expected = tight_box((geometry.grid_to_image(logits) > 0).numpy())
        got = geometry.box_from_logits(logits, 0.0)
        if expected is None:
            assert got is None, index
        else:
            np.testing.assert_array_equal(got, expected)
        # Only a value within float rounding of the threshold has the mask formed.
        assert bool(formed) == (logits is faint), index
