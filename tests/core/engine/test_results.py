"""Results and their one conversion to label images."""

from __future__ import annotations

import numpy as np
import pytest

from napari_persam.core.engine.results import (
    Instances,
    LabelSegmentation,
    Segmentation,
    best_similarity,
    label_image,
    merge_class_segmentations,
    object_count,
    result_score,
)


def test_higher_score_wins_contested_pixels():
    def seg(mask, score):
        return Segmentation(
            mask=mask,
            similarity=np.zeros(mask.shape, np.float32),
            score=score,
            points=np.zeros((1, 2)),
            point_labels=np.ones(1),
        )

    a = np.zeros((4, 4), dtype=bool)
    a[:, :3] = True
    b = np.zeros((4, 4), dtype=bool)
    b[:, 1:] = True
    merged = merge_class_segmentations({1: seg(a, 0.6), 2: seg(b, 0.9)}, (4, 4))
    np.testing.assert_array_equal(merged.labels[0], [1, 2, 2, 2])
    assert merged.scores == {1: 0.6, 2: 0.9}


def test_every_result_becomes_a_label_image_one_way():
    mask = np.zeros((3, 4), bool)
    mask[1, 1:3] = True
    one = Segmentation(mask, np.full((3, 4), 0.2, np.float32), 0.8, np.zeros((1, 2)), np.ones(1))
    np.testing.assert_array_equal(label_image(one, value=7), np.where(mask, 7, 0))
    assert label_image(one).dtype == np.int32
    assert (object_count(one), result_score(one)) == (1, pytest.approx(0.8))

    labels = np.array([[0, 2, 2, 0], [5, 5, 0, 0], [0, 0, 0, 0]], np.int32)
    classes = LabelSegmentation(
        labels, {2: 0.5, 5: 0.9}, np.stack([np.zeros((3, 4)), np.ones((3, 4))]), [2, 5]
    )
    np.testing.assert_array_equal(label_image(classes, value=99), labels)
    np.testing.assert_array_equal(best_similarity(classes), np.ones((3, 4)))
    assert (object_count(classes), result_score(classes)) == (2, pytest.approx(0.9))

    found = Instances(
        labels=labels,
        scores=np.array([0.4, 0.6], np.float32),
        similarity=np.zeros((3, 4), np.float32),
        classes=np.ones(2, np.int32),
        points=np.zeros((2, 2)),
        ids=np.array([2, 5], np.int32),
    )
    np.testing.assert_array_equal(label_image(found), labels)
    assert (object_count(found), result_score(found)) == (2, pytest.approx(0.5))
    with pytest.raises(TypeError, match="Not a PerSAM result"):
        label_image(mask)
