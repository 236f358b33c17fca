"""The PerSAM dock widget, opened through the manifest and driven like a user would.

The tiny random SAM makes meaningless masks, so these tests check the plumbing:
layers, shapes, dtypes, placement, in-place reruns, cancel and errors. Every
computed image gets a similarity map (never all zero), which shows which slices
were written.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from qtpy.QtCore import QTimer

from tests.widgets._helpers import run_and_wait, squares


def _written(similarity: np.ndarray) -> list[int]:
    """Slices of a (Z, Y, X) similarity stack that received a result."""
    return [z for z in range(similarity.shape[0]) if np.any(similarity[z] != 0)]


def _reference(shape: tuple[int, ...], *, value: int = 1, slice_index: int | None = None):
    labels = np.zeros(shape, dtype=np.uint8)
    target = labels if slice_index is None else labels[slice_index]
    target[4:12, 4:12] = value
    return labels


def test_2d_grey_image_gets_new_output_layers(viewer, open_widget, qtbot):
    data = squares((48, 64))
    image = viewer.add_image(data.copy(), name="img", scale=(0.5, 0.25), translate=(10, 5))
    painted = _reference((48, 64))
    reference = viewer.add_labels(painted.copy(), name="ref", scale=(0.5, 0.25), translate=(10, 5))
    widget = open_widget()
    assert widget.image.value is image and widget.reference.value is reference

    run_and_wait(qtbot, widget)

    labels, similarity = viewer.layers["img PerSAM"], viewer.layers["img similarity"]
    assert labels.data.shape == similarity.data.shape == (48, 64)
    assert labels.data.dtype == np.uint8 and similarity.data.dtype == np.float32
    assert set(np.unique(labels.data)) <= {0, 1}
    assert np.any(similarity.data != 0)
    assert -1.0 <= similarity.data.min() and similarity.data.max() <= 1.0
    for layer in (labels, similarity):
        np.testing.assert_array_equal(layer.scale, image.scale)
        np.testing.assert_array_equal(layer.translate, image.translate)
    assert not similarity.visible or similarity.opacity < 1
    np.testing.assert_array_equal(reference.data, painted)  # never modified
    np.testing.assert_array_equal(image.data, data)
    assert widget.status.value.startswith("Done: segmented 1 of 1")


def test_2d_rgb_image_with_persam_f(viewer, open_widget, qtbot):
    rgb = (np.stack([squares((40, 56))] * 3, axis=-1) * 255).clip(0, 255).astype(np.uint8)
    viewer.add_image(rgb, name="photo", rgb=True)
    viewer.add_labels(_reference((40, 56)), name="ref")
    widget = open_widget()
    widget.finetune.value = True
    widget.finetune_steps.value = 5
    messages = []
    widget.run_button.native.click()
    widget.worker.yielded.connect(lambda step: messages.append(step.message))
    with qtbot.waitSignal(widget.worker.finished, timeout=60_000):
        pass
    assert "fine-tuning (PerSAM-F)" in messages
    assert viewer.layers["photo PerSAM"].data.shape == (40, 56)
    assert viewer.layers["photo similarity"].data.shape == (40, 56)


def test_stack_all_slices_from_a_middle_slice_while_the_viewer_stays_live(
    viewer, open_widget, qtbot
):
    data = squares((3, 32, 32))
    image = viewer.add_image(data, name="stack", scale=(2.0, 1.0, 1.0))
    painted = _reference((3, 32, 32), value=3, slice_index=1)
    reference = viewer.add_labels(painted.copy(), name="ref", scale=(2.0, 1.0, 1.0))
    widget = open_widget()
    widget.targets.value = "all slices"
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start(10)
    starts = []
    widget.run_button.native.click()
    worker = widget.worker
    worker.started.connect(lambda: starts.append(len(ticks)))
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    timer.stop()
    # The event loop kept running while the worker computed the slices.
    assert len(ticks) - starts[0] >= 5

    labels, similarity = viewer.layers["stack PerSAM"], viewer.layers["stack similarity"]
    assert labels.data.shape == similarity.data.shape == (3, 32, 32)
    assert set(np.unique(labels.data)) <= {0, 3}  # the painted value, found automatically
    assert _written(similarity.data) == [0, 1, 2]
    np.testing.assert_array_equal(labels.scale, image.scale)
    np.testing.assert_array_equal(reference.data, painted)


def test_rgb_stack_slice_targets_rerun_in_place_with_one_model_load(
    viewer, open_widget, qtbot, tiny_sam
):
    rgb = (np.stack([squares((4, 32, 32))] * 3, axis=-1) * 255).clip(0, 255).astype(np.uint8)
    viewer.add_image(rgb, name="rgbstack", rgb=True)
    viewer.add_labels(_reference((4, 32, 32), slice_index=0), name="ref")
    widget = open_widget()
    loads = []

    def factory(name, *, checkpoint, device):
        loads.append((name, checkpoint, device))
        return tiny_sam
        yield  # a generator, as the hook requires

    widget.model_factory = factory
    viewer.dims.set_current_step(0, 3)
    widget.targets.value = "this slice"
    run_and_wait(qtbot, widget)
    labels, similarity = viewer.layers["rgbstack PerSAM"], viewer.layers["rgbstack similarity"]
    assert labels.data.shape == (4, 32, 32)
    assert _written(similarity.data) == [3]

    data_before, count_before = labels.data, len(viewer.layers)
    widget.targets.value = "slice range"
    widget.first_slice.value, widget.last_slice.value = 0, 1
    run_and_wait(qtbot, widget)
    assert viewer.layers["rgbstack PerSAM"] is labels and labels.data is data_before
    assert len(viewer.layers) == count_before
    assert _written(similarity.data) == [0, 1, 3]  # slice 3 from the first run is kept
    assert loads == [("tiny", None, "cpu")]


def test_other_image_layers_of_the_same_kind(viewer, open_widget, qtbot):
    viewer.add_image(squares((32, 32)), name="a")
    viewer.add_image(squares((24, 40), seed=1), name="b")
    viewer.add_image(squares((40, 24), seed=2), name="c")
    viewer.add_image(np.zeros((32, 32, 3), np.uint8), name="colour", rgb=True)
    viewer.add_labels(_reference((32, 32)), name="ref")
    widget = open_widget()
    widget.image.value = viewer.layers["a"]
    widget.targets.value = "chosen image layers"
    offered = [layer.name for layer in widget.target_layers.choices]
    assert "colour" not in offered and {"a", "b", "c"} <= set(offered)
    widget.target_layers.value = [viewer.layers["b"], viewer.layers["c"]]
    run_and_wait(qtbot, widget)
    assert viewer.layers["b PerSAM"].data.shape == (24, 40)
    assert viewer.layers["c PerSAM"].data.shape == (40, 24)
    assert "a PerSAM" not in viewer.layers


def test_cancel_keeps_the_finished_slices(viewer, open_widget, qtbot):
    viewer.add_image(squares((10, 32, 32)), name="long")
    viewer.add_labels(_reference((10, 32, 32), slice_index=0), name="ref")
    widget = open_widget()
    widget.targets.value = "all slices"
    widget.run_button.native.click()
    worker = widget.worker
    # Cancel as soon as the first slice is shown, like a user who has seen enough.
    worker.yielded.connect(lambda step: step.result is not None and widget.cancel())
    with qtbot.waitSignals([worker.aborted, worker.finished], timeout=60_000):
        pass
    qtbot.waitUntil(lambda: not widget.running, timeout=5_000)
    done = _written(viewer.layers["long similarity"].data)
    assert 1 <= len(done) < 10
    assert done == list(range(len(done)))
    assert widget.status.value.startswith(f"Cancelled: kept the {len(done)} of 10")
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_errors_become_notifications_and_the_viewer_keeps_working(
    viewer, open_widget, qtbot, notifications
):
    viewer.add_image(squares((32, 32)), name="img")
    reference = viewer.add_labels(np.zeros((32, 32), np.uint8), name="ref")
    widget = open_widget()

    widget.run_button.native.click()  # nothing painted: refused before any work
    assert widget.worker is None
    assert any("empty: paint" in message for message in notifications)

    reference.data = _reference((32, 32))

    def broken(name, *, checkpoint, device):
        raise ValueError(f"Checkpoint {checkpoint} is not a {name} checkpoint.")
        yield

    widget.model_factory = broken
    widget.model.value = "vit_b"
    run_and_wait(qtbot, widget)
    assert any("is not a vit_b checkpoint" in message for message in notifications)
    assert widget.status.value.startswith("Failed")
    assert "img PerSAM" not in viewer.layers

    viewer.add_points([[1, 1]])  # the viewer still works...
    widget.model_factory = None
    widget.model.value = "tiny"
    run_and_wait(qtbot, widget)  # ...and so does the widget
    assert "img PerSAM" in viewer.layers


def test_a_chosen_reference_slice_must_hold_the_painting(viewer, open_widget, qtbot, notifications):
    viewer.add_image(squares((4, 32, 32)), name="stack")
    viewer.add_labels(_reference((4, 32, 32), slice_index=1), name="ref")
    widget = open_widget()
    widget.all_painted_slices.value = False
    widget.reference_slice.value = 3
    widget.run_button.native.click()
    assert widget.worker is None
    assert any("not painted on slice 3" in message for message in notifications)

    widget.reference_slice.value = 1
    viewer.dims.set_current_step(0, 2)
    run_and_wait(qtbot, widget)
    assert _written(viewer.layers["stack similarity"].data) == [2]


def test_sample_data_is_ready_to_run_and_screenshot(make_napari_viewer, qtbot):
    """With NAPARI_PERSAM_SCREENSHOT=path, also saves the window there (for the README).

    NAPARI_PERSAM_SCREENSHOT_CHECKPOINT=sam_vit_b_01ec64.pth makes that screenshot
    with the real ViT-B instead of the tiny random model.
    """
    screenshot = os.environ.get("NAPARI_PERSAM_SCREENSHOT")
    checkpoint = os.environ.get("NAPARI_PERSAM_SCREENSHOT_CHECKPOINT")
    viewer = make_napari_viewer(show=bool(screenshot))
    viewer.open_sample("napari-persam", "blobs3d")
    assert viewer.layers["blobs"].data.shape == viewer.layers["blobs reference"].data.shape
    viewer.layers.clear()
    viewer.open_sample("napari-persam", "coins")
    _, widget = viewer.window.add_plugin_dock_widget("napari-persam", "PerSAM")
    assert widget.image.value.name == "coins"
    assert widget.reference.value.name == "coins reference"
    if screenshot and checkpoint:
        widget.model.value = "vit_b"
        widget.checkpoint.value = checkpoint
    else:
        widget.model.value = "tiny"
    run_and_wait(qtbot, widget, timeout=600_000)
    assert viewer.layers["coins PerSAM"].data.shape == (303, 384)
    if screenshot:
        # Show the every-instance controls too (instance ids, one colour per object).
        widget.find_mode.value = "every instance"
        widget.max_instances.value = 30
        run_and_wait(qtbot, widget, timeout=600_000)
        viewer.window.resize(1500, 900)
        viewer.layers.selection.active = viewer.layers["coins PerSAM"]
        qtbot.wait(200)
        Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(screenshot, canvas_only=False)
        assert Path(screenshot).stat().st_size > 0


def test_widget_lists_the_registry_and_devices(viewer, open_widget):
    widget = open_widget()
    assert "tiny" in widget.model.choices and "vit_b" in widget.model.choices
    assert widget.device.choices[0] == "auto" and "cpu" in widget.device.choices
    assert widget.checkpoint.native.isHidden()  # the tiny model needs no weights file
    widget.model.value = "vit_b"
    assert not widget.checkpoint.native.isHidden()
    assert widget.finetune_steps.native.isHidden()
    widget.finetune.value = True
    assert not widget.finetune_steps.native.isHidden()
    # Every-instance options only in that mode; the stack mode only for stacks.
    assert widget.max_instances.native.isHidden() and widget.stack_mode.native.isHidden()
    widget.find_mode.value = "every instance"
    assert not widget.max_instances.native.isHidden()
    assert not widget.instance_threshold.enabled
    widget.auto_threshold.value = False
    assert widget.instance_threshold.enabled
    viewer.add_image(np.zeros((3, 16, 16), np.float32), name="stack")
    widget.image.value = viewer.layers["stack"]
    assert not widget.stack_mode.native.isHidden() and widget.stack_mode.value == "propagate"


def test_the_part_range_moves_both_ends_either_way(open_widget):
    widget = open_widget()
    widget.max_parts.value = 4
    widget.min_parts.value = 3
    widget.max_parts.value = 2  # below the lower end: takes it along
    assert (widget.min_parts.value, widget.max_parts.value) == (2, 2)
    widget.min_parts.value = 4  # above the upper end: takes it along
    assert (widget.min_parts.value, widget.max_parts.value) == (4, 4)


def test_a_deleted_result_layer_takes_its_predictions_along(viewer, open_widget, qtbot):
    # Else objects never written to a new result layer would count as deleted by the
    # user (negatives) when a slice of it is added as a reference.
    viewer.add_image(squares((48, 64)), name="img")
    viewer.add_labels(_reference((48, 64)), name="ref")
    widget = open_widget()
    run_and_wait(qtbot, widget)
    assert ("img", None) in widget._predictions
    viewer.layers.remove("img similarity")  # not a result layer: kept
    assert ("img", None) in widget._predictions
    viewer.layers.remove("img PerSAM")
    assert ("img", None) not in widget._predictions


def test_a_cancelled_run_cleans_up_at_once(viewer, open_widget, qtbot):
    # A model that takes long to load (as a download or an encoder export does), with
    # clean-up of its own: cancelling must run that clean-up when the Run ends.
    viewer.add_image(squares((32, 32)), name="img")
    viewer.add_labels(_reference((32, 32)), name="ref")
    widget = open_widget()
    cleaned = []

    def slow_factory(name, *, checkpoint, device):
        from napari_persam.core.progress import Progress

        try:
            while True:
                yield Progress(0, 1, "loading slowly")
                time.sleep(0.02)
        finally:
            cleaned.append(name)

    widget.model_factory = slow_factory
    widget.run_button.native.click()
    worker = widget.worker
    worker.yielded.connect(lambda step: step.message == "loading slowly" and widget.cancel())
    with qtbot.waitSignals([worker.aborted, worker.finished], timeout=60_000):
        pass
    qtbot.waitUntil(lambda: not widget.running, timeout=5_000)
    assert cleaned == ["tiny"]


def test_a_step_repeated_while_the_worker_waits_updates_the_bar_once(
    viewer, open_widget, qtbot, monkeypatch
):
    # An export in a child process is polled four times a second with the same
    # message; napari's bar processes events on every update, so repeats are skipped.
    from napari.utils import progress

    viewer.add_image(squares((32, 32)), name="img")
    viewer.add_labels(_reference((32, 32)), name="ref")
    widget = open_widget()
    shown = []
    real = progress.set_description
    monkeypatch.setattr(
        progress, "set_description", lambda bar, text: (shown.append(text), real(bar, text))
    )

    def waiting_factory(name, *, checkpoint, device):
        from napari_persam.core.models import build_tiny_sam
        from napari_persam.core.progress import Progress

        for _ in range(10):
            yield Progress(0, 1, "exporting the encoder")
            time.sleep(0.05)  # apart, as the polls of a child process are
        return build_tiny_sam().to(device or "cpu").eval()

    widget.model_factory = waiting_factory
    run_and_wait(qtbot, widget)
    assert widget.status.value.startswith("Done"), widget.status.value
    assert shown.count("PerSAM: exporting the encoder") == 1
