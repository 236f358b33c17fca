"""Metrics against small cases computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from napari_persam.core.evaluation import metrics
from napari_persam.core.evaluation.metrics import InstanceImage


def _square(shape, y0, x0, y1, x1):
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_iou_dice_precision_recall_of_overlapping_squares():
    # 4x4 ground truth (16 px), prediction shifted by 2 columns: overlap 8, union 24.
    truth = _square((10, 10), 0, 0, 4, 4)
    pred = _square((10, 10), 0, 2, 4, 6)
    assert metrics.iou(pred, truth) == pytest.approx(8 / 24)
    assert metrics.dice(pred, truth) == pytest.approx(16 / 32)
    assert metrics.precision_recall(pred, truth) == pytest.approx((8 / 16, 8 / 16))


def test_precision_and_recall_differ_when_the_prediction_is_larger():
    truth = _square((10, 10), 0, 0, 2, 2)  # 4 px
    pred = _square((10, 10), 0, 0, 2, 4)  # 8 px covering the truth
    precision, recall = metrics.precision_recall(pred, truth)
    assert (precision, recall) == pytest.approx((0.5, 1.0))


def test_any_nonzero_value_is_foreground():
    truth = np.array([[0, 255], [0, 0]], dtype=np.uint8)
    pred = np.array([[0, 1], [0, 0]], dtype=np.uint16)
    assert metrics.iou(pred, truth) == 1.0


def test_both_empty_score_one():
    empty = np.zeros((5, 5), dtype=bool)
    assert metrics.iou(empty, empty) == 1.0
    assert metrics.dice(empty, empty) == 1.0
    assert metrics.boundary_iou(empty, empty) == 1.0
    assert metrics.precision_recall(empty, empty) == (1.0, 1.0)


def test_empty_prediction_scores_zero():
    empty = np.zeros((5, 5), dtype=bool)
    truth = _square((5, 5), 1, 1, 3, 3)
    assert metrics.iou(empty, truth) == 0.0
    assert metrics.dice(empty, truth) == 0.0
    assert metrics.boundary_iou(empty, truth) == 0.0
    assert metrics.precision_recall(empty, truth) == (0.0, 0.0)


def test_empty_ground_truth_with_a_prediction_scores_zero():
    empty = np.zeros((5, 5), dtype=bool)
    pred = _square((5, 5), 1, 1, 3, 3)
    assert metrics.iou(pred, empty) == 0.0
    assert metrics.precision_recall(pred, empty) == (0.0, 0.0)


def test_shape_mismatch_is_explained():
    with pytest.raises(ValueError, match="same image"):
        metrics.iou(np.zeros((3, 3)), np.zeros((3, 4)))


def test_pixel_counts_sum_over_images():
    a = metrics.pixel_counts(_square((4, 4), 0, 0, 2, 2), _square((4, 4), 0, 0, 2, 4))
    b = metrics.pixel_counts(np.zeros((4, 4)), _square((4, 4), 0, 0, 1, 1))
    total = a + b
    assert (total.tp, total.fp, total.fn) == (4, 0, 5)
    assert total.iou == pytest.approx(4 / 9)


def test_boundary_width_is_a_fraction_of_the_diagonal():
    assert metrics.boundary_width((300, 400), dilation_ratio=0.02) == 10
    assert metrics.boundary_width((10, 10), dilation_ratio=0.02) == 1


def test_mask_boundary_is_the_inner_band():
    mask = _square((7, 7), 1, 1, 6, 6)  # 5x5 square
    band = metrics.mask_boundary(mask, width=1)
    expected = mask.copy()
    expected[2:5, 2:5] = False  # the 3x3 interior survives one erosion
    np.testing.assert_array_equal(band, expected)
    # A mask touching the image border erodes from there too (zero padding).
    full = np.ones((3, 3), dtype=bool)
    expected_full = np.ones((3, 3), dtype=bool)
    expected_full[1, 1] = False
    np.testing.assert_array_equal(metrics.mask_boundary(full, width=1), expected_full)


def test_mask_boundary_equals_repeated_square_erosion(rng):
    from scipy import ndimage

    mask = ndimage.binary_opening(rng.random((60, 70)) > 0.3, iterations=2)
    for width in (1, 3, 7):
        eroded = ndimage.binary_erosion(
            mask, structure=np.ones((3, 3), dtype=bool), iterations=width, border_value=0
        )
        np.testing.assert_array_equal(metrics.mask_boundary(mask, width=width), mask & ~eroded)


def test_boundary_iou_by_hand():
    # 20x20 image: width = round(0.02 * 28.28) = 1 -> 1 px inner contours.
    truth = _square((20, 20), 2, 2, 8, 8)  # 6x6: contour 20 px
    pred = _square((20, 20), 2, 2, 8, 9)  # 6x7: contour 22 px
    # Shared contour pixels: top row x 2..7 (6), bottom row x 2..7 (6), left column
    # y 3..6 (4) = 16. Union = 20 + 22 - 16 = 26.
    assert metrics.boundary_iou(pred, truth) == pytest.approx(16 / 26)
    # Plain IoU is much higher for the same error: boundary IoU is stricter.
    assert metrics.iou(pred, truth) == pytest.approx(36 / 42)


def test_instance_iou_matrix_by_hand():
    truth = np.zeros((4, 8), dtype=np.int32)
    truth[:, 0:4] = 5  # 16 px
    truth[:, 4:8] = 9  # 16 px
    pred = np.zeros((4, 8), dtype=np.int32)
    pred[:, 0:3] = 1  # 12 px inside instance 5
    pred[:, 3:6] = 2  # 4 px of 5 and 8 px of 9
    matrix, pred_ids, true_ids = metrics.instance_iou_matrix(pred, truth)
    assert list(pred_ids) == [1, 2] and list(true_ids) == [5, 9]
    np.testing.assert_allclose(matrix, [[12 / 16, 0.0], [4 / 24, 8 / 20]])


def test_matched_f1_counts_one_to_one_matches():
    iou = np.array([[0.9, 0.0], [0.6, 0.2], [0.0, 0.4]])  # 3 predictions, 2 truths
    # At 0.5 only prediction 0 matches (prediction 1 wants the same truth): TP 1.
    assert metrics.matched_f1(iou, threshold=0.5) == pytest.approx(2 * 1 / 5)
    # At 0.3, prediction 2 also matches truth 1: TP 2.
    assert metrics.matched_f1(iou, threshold=0.3) == pytest.approx(2 * 2 / 5)


def test_matched_f1_empty_cases():
    assert metrics.matched_f1(np.zeros((0, 0))) == 1.0
    assert metrics.matched_f1(np.zeros((0, 3))) == 0.0
    assert metrics.matched_f1(np.zeros((2, 0))) == 0.0


def test_match_by_score_prefers_high_scores():
    iou = np.array([[0.7], [0.9]])
    # The lower-IoU prediction has the higher score, so it takes the only truth.
    flags = metrics.match_by_score(iou, np.array([0.8, 0.1]), threshold=0.5)
    assert list(flags) == [True, False]


def test_average_precision_by_hand():
    # Ranked predictions: TP, FP, TP with 2 ground-truth instances.
    # Recall 0.5, 0.5, 1.0; precision 1, 0.5, 2/3; envelope 1, 2/3, 2/3.
    # Recall points 0..0.5 (51 of them) get 1, points 0.51..1 (50) get 2/3.
    iou = np.array([[0.8, 0.0], [0.1, 0.2], [0.0, 0.6]])
    image = InstanceImage(iou=iou, scores=np.array([0.9, 0.8, 0.7]))
    expected = (51 * 1.0 + 50 * (2 / 3)) / 101
    assert metrics.average_precision([image], threshold=0.5) == pytest.approx(expected)
    # At 0.7 only the first is a TP: recall 0.5 with precision 1 at best.
    assert metrics.average_precision([image], threshold=0.7) == pytest.approx(51 / 101)


def test_average_precision_perfect_and_missing():
    perfect = InstanceImage(iou=np.eye(3), scores=np.array([0.3, 0.2, 0.1]))
    assert metrics.average_precision([perfect], threshold=0.5) == pytest.approx(1.0)
    assert metrics.average_precision_range([perfect]) == pytest.approx(1.0)
    nothing = InstanceImage(iou=np.zeros((0, 2)), scores=np.zeros(0))
    assert metrics.average_precision([nothing], threshold=0.5) == 0.0
    blank = InstanceImage(iou=np.zeros((0, 0)), scores=np.zeros(0))
    assert metrics.average_precision([blank], threshold=0.5) == 1.0
    spurious = InstanceImage(iou=np.zeros((2, 0)), scores=np.ones(2))
    assert metrics.average_precision([spurious], threshold=0.5) == 0.0


def test_average_precision_ranks_across_images():
    # Image A: a confident false positive; image B: a less confident true positive.
    a = InstanceImage(iou=np.zeros((1, 0)), scores=np.array([0.9]))
    b = InstanceImage(iou=np.ones((1, 1)), scores=np.array([0.5]))
    # Ranked: FP then TP -> recall 1 reached at precision 0.5.
    assert metrics.average_precision([a, b], threshold=0.5) == pytest.approx(0.5)


def test_ap_range_averages_thresholds():
    image = InstanceImage(iou=np.array([[0.72]]), scores=np.array([1.0]))
    # Thresholds 0.5..0.7 (5 of 10) match.
    assert metrics.average_precision_range([image]) == pytest.approx(0.5)


def test_compare_instances_scores_by_area_by_default():
    truth = np.zeros((6, 6), dtype=np.int32)
    truth[0:2, 0:2] = 1
    pred = np.zeros((6, 6), dtype=np.int32)
    pred[0:2, 0:2] = 3
    pred[4:6, 0:6] = 4
    comparison = metrics.compare_instances(pred, truth)
    np.testing.assert_allclose(comparison.scores, [4.0, 12.0])
    np.testing.assert_allclose(comparison.iou, [[1.0], [0.0]])
    with pytest.raises(ValueError, match="one score per"):
        metrics.compare_instances(pred, truth, scores=[1.0])


def test_connected_instances_uses_8_connectivity():
    mask = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0], [1, 1, 0]], dtype=bool)
    labels = metrics.connected_instances(mask)
    assert labels.dtype == np.int32
    assert len(np.unique(labels[labels > 0])) == 2
