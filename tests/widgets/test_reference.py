"""Finding the painted label value and slice (pure numpy, no Qt)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_persam._widgets._reference import (
    most_painted_label,
    painted_slices,
    painted_values,
    reference_shots,
)


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


def test_reference_shot_2d_is_a_new_array_of_the_chosen_values():
    image = np.arange(25, dtype=np.float32).reshape(5, 5)
    labels = np.zeros((5, 5), dtype=np.uint8)
    labels[1:3, 1:3] = 4
    labels[4, 4] = 2
    shots, main = reference_shots(image, labels, values=[4])
    assert main is None and len(shots) == 1
    shot_image, shot_labels = shots[0]
    assert shot_labels.dtype == np.int32 and set(np.unique(shot_labels)) == {0, 4}
    shot_labels[:] = 1
    shot_image[:] = 0
    assert labels.sum() == 18 and image.sum() == 300  # the user's arrays are untouched


def test_every_painted_slice_is_a_shot_and_the_largest_is_the_main_one():
    image = np.random.default_rng(0).random((5, 8, 8))
    labels = np.zeros((5, 8, 8), dtype=np.uint8)
    labels[1, :2, :2] = 1
    labels[3, :3, :3] = 1
    labels[3, 6:, 6:] = 2
    assert painted_slices(labels, 1) == [1, 3]
    assert painted_values(labels) == [1, 2]
    shots, main = reference_shots(image, labels, values=[1])
    assert main == 3 and len(shots) == 2
    np.testing.assert_array_equal(shots[0][0], image[1])
    assert set(np.unique(shots[1][1])) == {0, 1}  # value 2 is left out
    shots, main = reference_shots(image, labels, values=[1, 2])
    assert set(np.unique(shots[1][1])) == {0, 1, 2}
    shots, main = reference_shots(image, labels, values=[1], slice_index=1)
    assert main == 1 and len(shots) == 1 and shots[0][1].sum() == 4


@pytest.mark.parametrize(
    ("value", "slice_index", "message"),
    [
        (0, None, "background"),
        (2, None, "not painted on any slice"),
        (1, 0, "not painted on slice 0"),
        (1, 9, "outside the stack"),
    ],
)
def test_reference_errors_say_what_to_do(value, slice_index, message):
    labels = np.zeros((3, 8, 8), dtype=np.uint8)
    labels[2, :2, :2] = 1
    with pytest.raises(ValueError, match=message):
        reference_shots(np.zeros((3, 8, 8)), labels, values=[value], slice_index=slice_index)
