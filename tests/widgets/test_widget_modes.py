"""Every instance, several label values, several references, stack modes, downloads.

Counting and class values are checked with the semantic stand-in SAM of
``tests/synthetic.py`` (its masks mean something; it runs without target-guided
attention and semantic prompting). Plumbing on stacks uses the tiny random SAM,
with every candidate accepted (instance threshold -1) and few of them.
"""

from __future__ import annotations

import functools
import threading

import numpy as np
import pytest

from napari_persam.core.progress import Progress
from tests.synthetic import TARGET, Look, make_scene, paint_object, plain_background
from tests.widgets._helpers import run_and_wait, squares

BLUE = Look((60, 60, 200), 0.0)


@pytest.fixture(scope="module")
def semantic_factory():
    """A model_factory giving the semantic stand-in SAM (built once per module)."""
    from tests.synthetic import semantic_sam

    sam = semantic_sam()

    def factory(name, *, checkpoint, device):
        return sam
        yield  # a generator, as the hook requires

    return factory


def _semantic(widget, factory) -> None:
    widget.model_factory = factory
    widget.target_guided_attention.value = False
    widget.semantic_prompt.value = False


def _messages(qtbot, widget) -> list[str]:
    """Press Run, wait, and return the messages the worker yielded."""
    messages: list[str] = []
    widget.run_button.native.click()
    worker = widget.worker
    assert worker is not None, widget.status.value
    worker.yielded.connect(lambda step: messages.append(step.message))
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(lambda: not widget.running, timeout=5_000)
    return messages


def test_every_instance_gets_its_own_id(viewer, open_widget, qtbot, semantic_factory):
    image, truth = make_scene(
        3, shape=(512, 512), n_targets=5, radius=(16, 22), distractors=(), gap=10
    )
    viewer.add_image(image, name="scene", rgb=True)
    painted = np.where(truth == 1, 1, 0).astype(np.uint8)
    reference = viewer.add_labels(painted.copy(), name="ref")
    widget = open_widget()
    _semantic(widget, semantic_factory)
    widget.find_mode.value = "every instance"
    assert not widget.max_instances.native.isHidden()

    run_and_wait(qtbot, widget)

    labels = viewer.layers["scene PerSAM"].data
    assert labels.shape == (512, 512) and labels.dtype == np.int32
    assert sorted(np.unique(labels)) == list(range(6))  # 5 objects, ids 1..5
    for k in range(1, 6):
        ids = set(np.unique(labels[truth == k])) - {0}
        assert len(ids) == 1, f"object {k} got ids {ids}"
    assert "scene classes" not in viewer.layers  # one value: no class map needed
    assert widget.status.value.endswith("; 5 object(s).")
    np.testing.assert_array_equal(reference.data, painted)


def test_several_label_values_keep_the_reference_values(
    viewer, open_widget, qtbot, semantic_factory
):
    image = plain_background((256, 256), seed=1)
    red_a = paint_object(image, (60, 60), 24, TARGET, seed=2)
    blue_a = paint_object(image, (60, 190), 24, BLUE, seed=3)
    red_b = paint_object(image, (190, 190), 22, TARGET, seed=5)
    blue_b = paint_object(image, (190, 60), 26, BLUE, seed=6)
    painted = np.zeros((256, 256), dtype=np.uint16)
    painted[red_a], painted[blue_a] = 3, 700
    viewer.add_image(image, name="two", rgb=True)
    reference = viewer.add_labels(painted.copy(), name="ref")
    widget = open_widget()
    _semantic(widget, semantic_factory)
    widget.learn_all_values.value = True
    assert not widget.label_value.enabled

    messages = _messages(qtbot, widget)
    assert "learning 2 label values from 1 reference(s)" in messages
    assert widget.job.values == (3, 700)
    labels = viewer.layers["two PerSAM"].data
    assert labels.dtype == np.uint16  # holds 700
    assert set(np.unique(labels)) <= {0, 3, 700}
    # One object per value: one of the two discs of each look.
    assert max(np.mean(labels[m] == 3) for m in (red_a, red_b)) > 0.5
    assert max(np.mean(labels[m] == 700) for m in (blue_a, blue_b)) > 0.5

    widget.find_mode.value = "every instance"
    run_and_wait(qtbot, widget)
    ids = viewer.layers["two PerSAM"].data
    classes = viewer.layers["two classes"].data
    assert ids.dtype == np.int32 and classes.shape == (256, 256)
    assert len(set(np.unique(ids)) - {0}) == 4
    assert set(np.unique(classes)) == {0, 3, 700}
    for mask, value in ((red_a, 3), (red_b, 3), (blue_a, 700), (blue_b, 700)):
        assert np.mean(classes[mask] == value) > 0.5
        assert len(set(np.unique(ids[mask])) - {0}) == 1
    np.testing.assert_array_equal(reference.data, painted)


def test_every_painted_slice_is_a_reference(viewer, open_widget, qtbot):
    viewer.add_image(squares((4, 32, 32)), name="stack")
    painted = np.zeros((4, 32, 32), np.uint8)
    painted[1, 4:12, 4:12] = 1
    painted[3, 20:28, 4:12] = 1
    reference = viewer.add_labels(painted.copy(), name="ref")
    widget = open_widget()
    widget.targets.value = "this slice"
    viewer.dims.set_current_step(0, 2)
    assert widget.all_painted_slices.value and not widget.reference_slice.enabled
    assert widget.more_references.native.isHidden()  # no other painted layer to offer

    messages = _messages(qtbot, widget)
    assert "learning the object from 2 reference(s)" in messages
    shots = widget.job.shots
    np.testing.assert_array_equal(shots[0][1], painted[1].astype(np.int32))
    np.testing.assert_array_equal(shots[1][1], painted[3].astype(np.int32))

    widget.all_painted_slices.value = False
    assert widget.reference_slice.enabled
    widget.reference_slice.value = 3
    messages = _messages(qtbot, widget)
    assert "learning the object from 1 reference(s)" in messages
    assert widget.job.reference_index == 3
    np.testing.assert_array_equal(reference.data, painted)


def test_other_painted_pairs_can_be_references(viewer, open_widget, qtbot):
    viewer.add_image(squares((32, 32)), name="a")
    viewer.add_image(squares((24, 40), seed=1), name="b")
    viewer.add_labels(np.pad(np.ones((8, 8), np.uint8), ((4, 20), (4, 20))), name="ref a")
    other = np.zeros((24, 40), np.uint8)
    other[2:8, 2:8] = 1
    viewer.add_labels(other, name="ref b")
    widget = open_widget()
    widget.image.value = viewer.layers["a"]
    widget.reference.value = viewer.layers["ref a"]
    assert not widget.more_references.native.isHidden()
    # Offered: each other painted layer on the image it fits (not "ref a", in use).
    assert list(widget.more_references.choices) == [(viewer.layers["b"], viewer.layers["ref b"])]
    widget.more_references.value = [(viewer.layers["b"], viewer.layers["ref b"])]
    messages = _messages(qtbot, widget)
    assert "learning the object from 2 reference(s)" in messages


def test_a_corrected_result_slice_becomes_a_reference(viewer, open_widget, qtbot, notifications):
    viewer.add_image(squares((3, 32, 32)), name="stack")
    painted = np.zeros((3, 32, 32), np.uint8)
    painted[0, 4:12, 4:12] = 2
    reference = viewer.add_labels(painted.copy(), name="ref")
    widget = open_widget()
    widget.add_reference_button.native.click()  # no result yet: refused with a message
    assert widget.extra_references == ()
    assert any("has no PerSAM result yet" in message for message in notifications)

    widget.targets.value = "all slices"
    run_and_wait(qtbot, widget)
    result = viewer.layers["stack PerSAM"]
    # The user corrects slice 1 of the result by painting on it, then adds it.
    corrected = result.data.copy()
    corrected[1] = 0
    corrected[1, 18:26, 18:26] = 2
    result.data = corrected
    expected = corrected[1].astype(np.int32)  # a copy: the next Run writes into the layer
    viewer.dims.set_current_step(0, 1)
    widget.add_reference_button.native.click()
    assert widget.extra_references_count.value == "1 added"
    ((image, labels),) = widget.extra_references
    np.testing.assert_array_equal(image, viewer.layers["stack"].data[1])
    np.testing.assert_array_equal(labels, expected)

    messages = _messages(qtbot, widget)
    assert "learning the object from 2 reference(s)" in messages
    assert len(widget.job.shots) == 2
    np.testing.assert_array_equal(widget.job.shots[1][1], expected)
    np.testing.assert_array_equal(reference.data, painted)  # never modified

    widget.clear_references_button.native.click()
    assert widget.extra_references == () and not widget.clear_references_button.enabled
    assert "learning the object from 1 reference(s)" in _messages(qtbot, widget)


@pytest.mark.parametrize("mode", ["propagate", "independent"])
def test_stack_modes_write_slice_by_slice(viewer, open_widget, qtbot, mode):
    viewer.add_image(squares((4, 32, 32)), name="stack")
    painted = np.zeros((4, 32, 32), np.uint8)
    painted[2, 4:12, 4:12] = 1
    reference = viewer.add_labels(painted.copy(), name="ref")
    widget = open_widget()
    widget.targets.value = "all slices"
    widget.stack_mode.value = mode

    written: list[list[int]] = []
    widget.run_button.native.click()
    worker = widget.worker

    def record(step):
        # Connected after the widget's own slot, so the slice is in the layer now.
        if step.result is not None:
            similarity = viewer.layers["stack similarity"].data
            written.append([z for z in range(4) if np.any(similarity[z] != 0)])

    worker.yielded.connect(record)
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(lambda: not widget.running, timeout=5_000)
    assert widget.job.config.stack_mode == mode
    # Outward from the painted slice, one more slice in the layer at each step.
    assert written == [[2], [2, 3], [1, 2, 3], [0, 1, 2, 3]]
    labels = viewer.layers["stack PerSAM"].data
    assert labels.shape == (4, 32, 32) and set(np.unique(labels)) <= {0, 1}
    np.testing.assert_array_equal(reference.data, painted)


def test_instances_keep_their_ids_through_a_propagated_stack(
    viewer, open_widget, qtbot, semantic_factory
):
    image, truth = make_scene(
        3, shape=(256, 256), n_targets=3, radius=(16, 22), distractors=(), gap=10
    )
    # The objects drift 4 pixels to the right from slice to slice.
    stack = np.stack([np.roll(image, 4 * z, axis=1) for z in range(3)])
    objects = np.stack([np.roll(truth, 4 * z, axis=1) for z in range(3)])
    viewer.add_image(stack, name="drift", rgb=True)
    painted = np.zeros((3, 256, 256), np.uint8)
    painted[1] = objects[1] == 1
    viewer.add_labels(painted, name="ref")
    widget = open_widget()
    _semantic(widget, semantic_factory)
    widget.find_mode.value = "every instance"
    widget.targets.value = "all slices"

    def ids_of(k: int) -> list[set[int]]:
        labels = viewer.layers["drift PerSAM"].data
        return [set(np.unique(labels[z][objects[z] == k]).tolist()) - {0} for z in range(3)]

    run_and_wait(qtbot, widget)
    assert viewer.layers["drift PerSAM"].data.dtype == np.int32
    for k in (2, 3):  # unpainted objects: one id, the same on every slice
        first, *others = ids_of(k)
        assert len(first) == 1 and all(ids == first for ids in others), ids_of(k)

    widget.stack_mode.value = "independent"
    run_and_wait(qtbot, widget)
    for k in (2, 3):  # each slice on its own: new ids, unique in the stack
        per_slice = ids_of(k)
        assert all(len(ids) == 1 for ids in per_slice)
        assert len(set.union(*per_slice)) == 3, per_slice


def test_download_progress_reaches_the_progress_bar(viewer, open_widget, qtbot, tiny_sam):
    size = 3_000_000_000  # more than a Qt progress bar's int holds: it is scaled
    seen: list[tuple[int, int, str]] = []
    shown = threading.Event()

    def downloading(name, *, checkpoint, device):
        for done in (0, size // 3, size):
            shown.clear()
            yield Progress(done, size, "downloading sam_vit_h_4b8939.pth")
            # Like a real download, the next chunk comes after the bar has moved
            # (steps arriving at once are shown as the latest one only).
            assert shown.wait(10), f"the bar never showed {done} bytes"
        return tiny_sam

    def record(_event) -> None:
        seen.append((bar.n, bar.total, bar.desc))
        if bar.desc.startswith("PerSAM: downloading"):
            shown.set()

    viewer.add_image(squares((32, 32)), name="img")
    viewer.add_labels(np.pad(np.ones((8, 8), np.uint8), 12), name="ref")
    widget = open_widget()
    widget.model_factory = downloading
    widget.model.value = "vit_h"
    widget.run_button.native.click()
    bar = widget.progress_bar  # made with the run, before the worker starts
    assert bar is not None
    bar.events.value.connect(record)
    with qtbot.waitSignal(widget.worker.finished, timeout=60_000):
        pass
    downloads = [(n, total, desc) for n, total, desc in seen if "downloading" in desc]
    # Bytes, halved so that 3 GB fits the Qt bar.
    assert [(n, total) for n, total, _ in downloads] == [
        (0, size // 2), (size // 6, size // 2), (size // 2, size // 2)
    ]  # fmt: skip
    assert downloads[1][2].startswith(
        "PerSAM: downloading sam_vit_h_4b8939.pth (1,000.0 of 3,000.0 MB)"
    )
    assert "img PerSAM" in viewer.layers


def test_offline_download_is_a_notification(viewer, open_widget, qtbot, notifications, tmp_path):
    from napari_persam.core.models import iter_load_model

    viewer.add_image(squares((32, 32)), name="img")
    viewer.add_labels(np.pad(np.ones((8, 8), np.uint8), 12), name="ref")
    widget = open_widget()
    # Port 1 on the loopback refuses at once, like a computer without a network.
    url = "http://127.0.0.1:1/sam_vit_b_01ec64.pth"
    widget.model_factory = functools.partial(iter_load_model, cache_dir=tmp_path, url=url)
    widget.model.value = "vit_b"
    run_and_wait(qtbot, widget)
    (message,) = [m for m in notifications if m.startswith("PerSAM failed")]
    assert url in message and "sam_vit_b_01ec64.pth" in message and str(tmp_path) in message
    assert widget.status.value.startswith("Failed")
    assert "img PerSAM" not in viewer.layers


def _look_alike_scene():
    from tests.synthetic import LOOK_ALIKE

    image = plain_background((256, 256), seed=1)
    first = paint_object(image, (60, 60), 24, TARGET, seed=2)
    second = paint_object(image, (190, 70), 22, TARGET, seed=3)
    look_alike = paint_object(image, (120, 190), 22, LOOK_ALIKE, seed=4)
    return image, first, second, look_alike


def test_deleted_objects_of_a_result_become_negatives(viewer, open_widget, qtbot, semantic_factory):
    image, first, second, look_alike = _look_alike_scene()
    viewer.add_image(image, name="scene", rgb=True)
    reference = viewer.add_labels(first.astype(np.uint8), name="ref")
    widget = open_widget()
    _semantic(widget, semantic_factory)
    widget.find_mode.value = "every instance"
    run_and_wait(qtbot, widget)
    result = viewer.layers["scene PerSAM"]
    assert result.data[look_alike].any()  # found: it looks like the object
    assert widget.status.value.endswith("; 3 object(s).")

    # The correction loop: delete the look-alike from the result, add the slice.
    corrected = result.data.copy()
    corrected[corrected == corrected[look_alike].max()] = 0
    result.data = corrected
    widget.add_reference_button.native.click()
    (deleted,) = widget.extra_negatives
    assert deleted[look_alike].mean() > 0.9 and not deleted[first | second].any()
    assert "with the 1 object(s) you deleted as negatives" in widget.status.value

    run_and_wait(qtbot, widget)
    assert len(widget.job.negatives) == 2 and widget.job.negatives[0] is None
    labels = viewer.layers["scene PerSAM"].data
    assert not labels[look_alike].any()
    assert labels[first].any() and labels[second].any()
    assert widget.status.value.endswith("; 2 object(s).")
    np.testing.assert_array_equal(reference.data, first.astype(np.uint8))
    widget.clear_references_button.native.click()
    assert widget.extra_negatives == ()


def test_a_negatives_layer_and_the_prompt_options(viewer, open_widget, qtbot, semantic_factory):
    image, first, second, look_alike = _look_alike_scene()
    viewer.add_image(image, name="scene", rgb=True)
    viewer.add_labels(first.astype(np.uint8), name="ref")
    widget = open_widget()
    assert widget.negatives.value is None  # optional: no negatives by default
    not_this = viewer.add_labels(look_alike.astype(np.uint8) * 3, name="not this")
    widget.negatives.value = not_this
    _semantic(widget, semantic_factory)
    widget.find_mode.value = "every instance"

    widget.prompt_mode.value = "persam"
    assert all(
        w.native.isHidden() for w in (widget.min_parts, widget.max_parts, widget.max_negative_parts)
    )
    widget.prompt_mode.value = "part-aware"
    assert not widget.max_parts.native.isHidden()
    widget.max_parts.value = 3
    widget.min_parts.value = 4  # past the other end: the range follows
    assert widget.max_parts.value == 4
    widget.min_parts.value = 1
    widget.max_negative_parts.value = 2

    run_and_wait(qtbot, widget)
    config = widget.job.config
    assert (config.prompt_mode, config.min_parts, config.max_parts) == ("part-aware", 1, 4)
    assert config.max_negative_parts == 2
    (negatives,) = widget.job.negatives
    np.testing.assert_array_equal(negatives, look_alike)
    labels = viewer.layers["scene PerSAM"].data
    assert not labels[look_alike].any() and labels[first].any() and labels[second].any()
    np.testing.assert_array_equal(not_this.data, look_alike.astype(np.uint8) * 3)
