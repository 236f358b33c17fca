"""Per-slice comparison of label stacks (what the Evaluate widget shows)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_persam.core.evaluation.compare import iter_compare_stacks
from napari_persam.core.progress import run


def _stack():
    truth = np.zeros((3, 10, 10), dtype=np.int32)
    truth[0, 0:4, 0:4] = 1  # 16 px
    truth[1, 0:4, 0:4] = 1
    result = np.zeros_like(truth)
    result[0, 0:4, 0:4] = 1  # perfect
    result[1, 0:4, 0:2] = 1  # 8 of 16
    result[2, 5:7, 5:7] = 1  # 4 px where the truth is empty
    return result, truth


def test_per_slice_and_overall_scores_by_hand():
    result, truth = _stack()
    steps = []
    comparison = run(iter_compare_stacks(result, truth), on_progress=steps.append)
    assert [step.index for step in steps] == [0, 1, 2]
    assert [item.iou for item in comparison.slices] == pytest.approx([1.0, 0.5, 0.0])
    # Summed over the stack: intersection 24, union 16 + 16 + 4.
    assert comparison.counts.iou == pytest.approx(24 / 36)
    summary = comparison.summary()
    assert summary["mean slice IoU"] == pytest.approx(0.5)
    assert not comparison.instances
    assert math.isnan(comparison.slices[0].instance_f1)
    assert [item.index for item in comparison.worst()] == [2, 1, 0]
    assert [item.index for item in comparison.worst(1)] == [2]


def test_a_2d_image_is_one_slice():
    result, truth = _stack()
    comparison = run(iter_compare_stacks(result[1], truth[1]))
    assert len(comparison.slices) == 1
    assert comparison.counts.iou == pytest.approx(0.5)


def test_instances_add_f1():
    truth = np.zeros((1, 8, 8), dtype=np.int32)
    truth[0, 0:2, 0:2] = 1
    truth[0, 4:8, 4:8] = 2
    result = (truth == 2).astype(np.int32) * 5
    comparison = run(iter_compare_stacks(result, truth))
    assert comparison.instances
    assert comparison.slices[0].instance_f1 == pytest.approx(2 / 3)
    assert "mean slice instance F1@0.5" in comparison.summary()


def test_shape_and_dimension_errors_are_explained():
    with pytest.raises(ValueError, match="same image"):
        run(iter_compare_stacks(np.zeros((2, 4, 4)), np.zeros((2, 4, 5))))
    with pytest.raises(ValueError, match="one time point"):
        run(iter_compare_stacks(np.zeros((2, 2, 4, 4)), np.zeros((2, 2, 4, 4))))
