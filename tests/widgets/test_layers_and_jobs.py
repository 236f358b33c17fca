"""Output layers and job checks with napari's models only (no window)."""

from __future__ import annotations

import numpy as np
import pytest
from napari.components import ViewerModel
from napari.layers import Image, Labels

from napari_persam._widgets._job import (
    ALL_SLICES,
    IMAGE_LAYERS,
    SLICE_RANGE,
    THIS_SLICE,
    Request,
    build_job,
)
from napari_persam._widgets._layers import ensure_outputs, write_result
from napari_persam._widgets._runner import ModelChoice, SliceResult
from napari_persam.core.config import PerSAMConfig


def _result(mask: np.ndarray, fill: float, value: int, classes=None) -> SliceResult:
    return SliceResult(
        labels=np.where(mask, value, 0).astype(np.int32),
        similarity=np.full(mask.shape, fill, dtype=np.float32),
        classes=classes,
        objects=int(mask.any()),
    )


def test_outputs_copy_placement_and_are_reused_in_place():
    viewer = ViewerModel()
    image = viewer.add_image(
        np.zeros((3, 6, 8, 3), np.uint8), rgb=True, name="cells", scale=(2, 0.5, 0.5),
        translate=(1, 2, 3),
    )  # fmt: skip
    outputs = ensure_outputs(viewer, image, dtype=np.uint16)
    assert outputs.labels.name == "cells PerSAM" and outputs.similarity.name == "cells similarity"
    assert outputs.labels.data.shape == (3, 6, 8) and outputs.labels.data.dtype == np.uint16
    assert outputs.similarity.data.dtype == np.float32
    for layer in (outputs.labels, outputs.similarity):
        np.testing.assert_array_equal(layer.scale, image.scale)
        np.testing.assert_array_equal(layer.translate, image.translate)
    assert viewer.layers.index(outputs.similarity) < viewer.layers.index(outputs.labels)

    mask = np.zeros((6, 8), bool)
    mask[1:3, 2:5] = True
    write_result(outputs, _result(mask, 0.25, 300), slice_index=1)
    assert set(np.unique(outputs.labels.data[1])) == {0, 300}
    assert (outputs.labels.data[1] == 300).sum() == 6
    assert not outputs.labels.data[[0, 2]].any()
    assert np.all(outputs.similarity.data[1] == 0.25) and not outputs.similarity.data[0].any()

    data = outputs.labels.data
    again = ensure_outputs(viewer, image, dtype=np.uint8)
    assert again.labels is outputs.labels and again.labels.data is data  # in place
    assert len(viewer.layers) == 3 and again.classes is None

    # Instance ids need int32: the labels are converted, the finished slice kept.
    wider = ensure_outputs(viewer, image, dtype=np.int32, classes_dtype=np.uint16)
    assert wider.labels is outputs.labels and wider.labels.data.dtype == np.int32
    assert (wider.labels.data[1] == 300).sum() == 6
    assert wider.classes.name == "cells classes" and wider.classes.data.dtype == np.uint16
    assert not wider.classes.visible
    classes = np.where(mask, 300, 0).astype(np.int32)
    write_result(wider, _result(mask, 0.5, 70000, classes), slice_index=2)
    assert (wider.labels.data[2] == 70000).sum() == 6
    np.testing.assert_array_equal(wider.classes.data[2], classes)


def test_a_user_layer_with_the_output_name_is_never_written():
    viewer = ViewerModel()
    image = viewer.add_image(np.zeros((4, 4)), name="img")
    mine = viewer.add_labels(np.full((4, 4), 9, np.uint8), name="img PerSAM")
    outputs = ensure_outputs(viewer, image, dtype=np.uint8)
    assert outputs.labels is not mine
    write_result(outputs, _result(np.ones((4, 4), bool), 0.5, 1), slice_index=None)
    assert np.all(mine.data == 9)


def _request(image, reference, **changes) -> Request:
    values = {
        "image": image,
        "reference": reference,
        "label_value": 0,
        "reference_slice": None,
        "target_mode": ALL_SLICES,
        "current_slice": 0,
        "slice_range": (0, 0),
        "target_layers": [],
        "model": ModelChoice("tiny", None, "cpu"),
        "config": PerSAMConfig(),
        "finetune": False,
    }
    values.update(changes)
    return Request(**values)


def _stack() -> tuple[Image, Labels]:
    image = Image(np.arange(4 * 8 * 8, dtype=np.float32).reshape(4, 8, 8), name="stack")
    labels = np.zeros((4, 8, 8), np.uint8)
    labels[2, 1:4, 1:4] = 5
    return image, Labels(labels, name="ref")


def test_job_for_a_stack_copies_the_reference_slice():
    image, reference = _stack()
    job = build_job(_request(image, reference))
    assert job.values == (5,) and job.reference_index == 2
    assert [t.slice_index for t in job.targets] == [0, 1, 2, 3]
    ((shot_image, shot_labels),) = job.shots
    np.testing.assert_array_equal(shot_image, image.data[2])
    assert not np.shares_memory(shot_image, image.data)
    assert (shot_labels == 5).sum() == 9
    job = build_job(_request(image, reference, target_mode=SLICE_RANGE, slice_range=(1, 2)))
    assert [t.slice_index for t in job.targets] == [1, 2]
    job = build_job(_request(image, reference, target_mode=THIS_SLICE, current_slice=3))
    assert [t.slice_index for t in job.targets] == [3]


def test_job_learns_every_value_from_every_painted_slice_and_pair():
    image, reference = _stack()
    reference.data[0, 5:7, 5:7] = 5
    reference.data[3, 5:8, 5:8] = 2
    job = build_job(_request(image, reference))
    assert job.values == (5,) and len(job.shots) == 2  # the slices holding 5
    job = build_job(_request(image, reference, learn_all_values=True))
    assert job.values == (2, 5) and len(job.shots) == 3
    job = build_job(_request(image, reference, reference_slice=2))
    assert len(job.shots) == 1

    other = Image(np.ones((6, 6), np.float32), name="other")
    painted = np.zeros((6, 6), np.uint8)
    painted[1:3, 1:3] = 5
    other_labels = Labels(painted, name="other ref")
    extra = (np.zeros((8, 8), np.float32), np.full((8, 8), 7, np.int32))  # holds no 5
    job = build_job(
        _request(image, reference, more_references=[(other, other_labels)], extra_shots=[extra])
    )
    assert len(job.shots) == 3 and job.shots[-1][0].shape == (6, 6)
    with pytest.raises(ValueError, match="holds none of the label value"):
        build_job(_request(image, reference, label_value=2, reference_slice=3,
                           more_references=[(other, other_labels)]))  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"image": None}, "Choose an image layer"),
        ({"reference": None}, "Choose a reference Labels layer"),
        ({"reference": Labels(np.zeros((4, 8, 9), np.uint8))}, r"has shape \(4, 8, 9\)"),
        ({"reference": Labels(np.zeros((4, 8, 8), np.uint8))}, "empty: paint"),
        ({"label_value": 2}, "Label 2 is not painted"),
        ({"target_mode": SLICE_RANGE, "slice_range": (2, 9)}, "not inside the stack"),
        ({"target_mode": IMAGE_LAYERS}, "No image layers chosen"),
        (
            {"target_mode": IMAGE_LAYERS, "target_layers": [Image(np.zeros((8, 8)))]},
            "not the same kind of image",
        ),
        ({"image": Image(np.zeros((2, 3, 8, 8)))}, "4 spatial dimensions"),
    ],
)
def test_bad_choices_are_refused_with_a_message(changes, message):
    image, reference = _stack()
    changes = {"image": image, "reference": reference, **changes}
    image, reference = changes.pop("image"), changes.pop("reference")
    with pytest.raises(ValueError, match=message):
        build_job(_request(image, reference, **changes))


def test_the_plugins_own_result_layer_cannot_be_the_reference():
    viewer = ViewerModel()
    image, _ = _stack()
    viewer.add_layer(image)
    labels = ensure_outputs(viewer, image, dtype=np.dtype(np.uint8)).labels
    labels.data[2, 1:4, 1:4] = 5  # a corrected result: rewritten by the next Run
    with pytest.raises(ValueError, match=r"'add result slice' \(advanced options\)"):
        build_job(_request(image, labels))


def test_negatives_layer_goes_with_each_reference_slice():
    image, reference = _stack()
    marked = np.zeros((4, 8, 8), np.uint8)
    marked[2, 5:7, 5:7] = 1  # on the painted slice
    marked[0, 0:2, 0:2] = 1  # on a slice without reference: no shot to go with
    job = build_job(_request(image, reference, negatives=Labels(marked, name="not this")))
    (negatives,) = job.negatives
    assert negatives.dtype == bool and negatives.shape == (8, 8)
    np.testing.assert_array_equal(negatives, marked[2] != 0)
    # An empty negatives layer is ignored.
    empty = build_job(_request(image, reference, negatives=Labels(np.zeros_like(marked))))
    assert empty.negatives == ()


def test_bad_negatives_layers_are_refused_with_what_to_do():
    image, reference = _stack()
    overlapping = np.zeros((4, 8, 8), np.uint8)
    overlapping[2, 2:4, 2:6] = 1  # 4 pixels on the painted object
    with pytest.raises(ValueError, match=r"overlap the painted object in 4 pixel\(s\) on slice 2"):
        build_job(_request(image, reference, negatives=Labels(overlapping)))
    with pytest.raises(ValueError, match="is the reference layer"):
        build_job(_request(image, reference, negatives=reference))
    with pytest.raises(ValueError, match="has shape"):
        build_job(_request(image, reference, negatives=Labels(np.zeros((8, 8), np.uint8))))
    np.testing.assert_array_equal(reference.data[2, 1:4, 1:4], 5)  # nothing changed


def test_deleted_objects_are_what_the_run_found_and_the_user_erased():
    from napari_persam._widgets._more_references import PredictedSlice, deleted_objects

    found = np.zeros((10, 12), np.int32)
    found[1:3, 1:3] = 1
    found[6:9, 6:10] = 2
    found[1:3, 8:11] = 3
    predicted = PredictedSlice.of(found)
    np.testing.assert_array_equal(predicted.mask(), found != 0)
    corrected = found.copy()
    corrected[6:9, 6:10] = 0  # deleted
    corrected[1, 8:11] = 0  # trimmed: a correction, not a negative
    deleted = deleted_objects(predicted, corrected)
    np.testing.assert_array_equal(deleted, (found == 2))
    assert deleted_objects(predicted, found) is None
    assert deleted_objects(None, corrected) is None
    assert deleted_objects(predicted, corrected[:5]) is None  # another slice shape
