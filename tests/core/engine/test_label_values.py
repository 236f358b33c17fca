"""Label values that a 32-bit label image cannot hold are refused when learning (issue 13)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_persam.core.engine.results import MAX_LABEL_VALUE, Segmentation, label_image


def test_learn_classes_refuses_values_beyond_int32(tiny_sam):
    from napari_persam.core.engine.persam import PerSAM

    engine = PerSAM(tiny_sam, device="cpu")
    image = np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)
    labels = np.zeros((32, 32), np.int64)
    labels[4:12, 4:12] = 2**40
    labels[16:24, 16:24] = 3
    with pytest.raises(ValueError, match=r"\[1099511627776\] cannot be learned"):
        engine.learn_classes(image, labels)
    with pytest.raises(ValueError, match="cannot be learned"):
        engine.learn_classes(image, labels, values=[3, 2**40])


def test_a_label_image_is_never_painted_with_a_value_it_cannot_hold():
    mask = np.zeros((4, 4), bool)
    mask[1:3, 1:3] = True
    result = Segmentation(mask, np.zeros((4, 4), np.float32), 0.9, np.zeros((0, 2)), np.zeros(0))
    assert label_image(result, value=MAX_LABEL_VALUE).max() == MAX_LABEL_VALUE
    for value in (0, MAX_LABEL_VALUE + 1, 2**40):
        with pytest.raises(ValueError, match="does not fit a label image"):
            label_image(result, value=value)
