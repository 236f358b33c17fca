"""Finding the painted label value and slice (pure numpy, no Qt)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_persam._widgets._reference import most_painted_label, painted_slices, reference_mask


def test_most_painted_label_counts_pixels_over_all_slices():
    labels = np.zeros((3, 10, 10), dtype=np.uint16)
    labels[0, :2, :2] = 7  # 4 pixels
    labels[1, :3, :3] = 2  # 9 pixels
    labels[2, :2, :1] = 7  # 2 more: 6 in all
    assert most_painted_label(labels) == 2
    labels[2, 5:, 5:] = 7  # 25 more
    assert most_painted_label(labels) == 7


def test_most_painted_label_breaks_ties_by_the_smaller_value():
    labels = np.zeros((6, 6), dtype=np.int32)
    labels[0, :2] = 5
    labels[1, :2] = 3
    assert most_painted_label(labels) == 3


def test_most_painted_label_of_an_empty_layer_says_to_paint():
    with pytest.raises(ValueError, match="empty: paint"):
        most_painted_label(np.zeros((4, 4), dtype=np.uint8))


def test_reference_mask_2d_is_a_new_array():
    labels = np.zeros((5, 5), dtype=np.uint8)
    labels[1:3, 1:3] = 4
    mask, used = reference_mask(labels, value=4)
    assert used is None
    assert mask.dtype == bool and mask.sum() == 4
    mask[:] = True
    assert labels.sum() == 16  # the user's layer is untouched


def test_reference_slice_is_found_when_one_slice_is_painted():
    labels = np.zeros((5, 8, 8), dtype=np.uint8)
    labels[3, 2:4, 2:4] = 1
    assert painted_slices(labels, 1) == [3]
    mask, used = reference_mask(labels, value=1)
    assert used == 3 and mask.sum() == 4


def test_painting_on_several_slices_asks_for_one():
    labels = np.zeros((5, 8, 8), dtype=np.uint8)
    labels[1, :2, :2] = 1
    labels[3, :2, :2] = 1
    with pytest.raises(ValueError, match=r"painted on 2 slices \(1, 3\).*choose the one slice"):
        reference_mask(labels, value=1)
    mask, used = reference_mask(labels, value=1, slice_index=3)
    assert used == 3 and mask.sum() == 4


@pytest.mark.parametrize(
    ("value", "slice_index", "message"),
    [
        (0, None, "background"),
        (2, None, "not painted on any slice"),
        (1, 0, "not painted on slice 0"),
        (1, 9, "outside the stack"),
    ],
)
def test_reference_mask_errors_say_what_to_do(value, slice_index, message):
    labels = np.zeros((3, 8, 8), dtype=np.uint8)
    labels[2, :2, :2] = 1
    with pytest.raises(ValueError, match=message):
        reference_mask(labels, value=value, slice_index=slice_index)
