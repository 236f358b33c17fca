"""The one rule for what an array is: image, stack, and where its channels are."""

from __future__ import annotations

import numpy as np
import pytest

from napari_persam.core.errors import InputError
from napari_persam.core.io.layout import layout_of


@pytest.mark.parametrize(
    ("shape", "axes", "kind", "standard"),
    [
        ((288, 384), None, "image", (288, 384)),
        ((288, 384, 3), None, "image", (288, 384, 3)),
        ((288, 384, 4), None, "image", (288, 384, 4)),
        ((288, 384, 1), "YXQ", "image", (288, 384)),
        ((288, 384, 5), "QYX", "image", (288, 384, 5)),  # tifffile's guess is wrong here
        ((1, 288, 384), "QYX", "image", (288, 384)),
        ((5, 288, 384), None, "stack", (5, 288, 384)),
        ((100, 16, 16), None, "stack", (100, 16, 16)),  # 16 channels of a 16 px image? no
        ((7, 64, 80, 3), "QYXS", "stack", (7, 64, 80, 3)),
        ((3, 64, 80), "SYX", "image", (64, 80, 3)),  # planar RGB, as the file says
        ((3, 64, 80), "CYX", "image", (64, 80, 3)),
        ((5, 2, 64, 80), "ZCYX", "stack", (5, 64, 80, 2)),
        ((1, 5, 1, 64, 80), "TZCYX", "stack", (5, 64, 80)),
    ],
)
def test_layouts(shape, axes, kind, standard):
    layout = layout_of(shape, axes)
    assert layout.kind == kind and layout.shape == standard


def test_standardise_and_one_slice_agree():
    data = np.arange(5 * 2 * 6 * 7).reshape(5, 2, 6, 7)
    layout = layout_of(data.shape, "ZCYX")
    whole = layout.standardise(data)
    assert whole.shape == (5, 6, 7, 2)
    np.testing.assert_array_equal(layout.standardise_slice(data[3]), whole[3])


@pytest.mark.parametrize(
    ("shape", "axes", "message"),
    [
        ((4, 5, 2, 64, 80), "TZCYX", "more than one axis of slices"),
        ((3, 2, 64, 80), "SCYX", "colour samples and channels"),
        ((6, 7, 64, 80), None, "neither an image"),
        ((80,), None, "two dimensions"),
    ],
)
def test_what_is_neither_is_refused_with_a_reason(shape, axes, message):
    with pytest.raises(InputError, match=message):
        layout_of(shape, axes, name="x.tif")
