"""The dock as a person sees it, and what the GUI thread never does (issue 13, items 19-20)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

import napari_persam
from tests.widgets._helpers import run_and_wait, squares

SRC = Path(napari_persam.__file__).resolve().parents[1]  # the package these tests import


def _longest_message() -> str:
    """The offline hint for the largest model, plus a long path without spaces."""
    from napari_persam.core.models.checkpoints import manual_install_hint
    from napari_persam.core.models.registry import MODEL_REGISTRY

    path = "/".join(["a_rather_long_folder_name_without_spaces"] * 8)
    return (
        "Failed after 0 of 1 image(s): Could not download the vit_h weights from "
        f"{MODEL_REGISTRY['vit_h'].url}: no connection. "
        + manual_install_hint(MODEL_REGISTRY["vit_h"], cache_dir=path)
    )


def test_the_canvas_keeps_its_width_after_the_longest_message(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    canvas = viewer.window._qt_viewer.canvas.native
    viewer.add_image(squares((5, 48, 64)), name="a_long_layer_name_from_a_microscope_0001.tif")
    _, widget = viewer.window.add_plugin_dock_widget("napari-persam", "PerSAM")
    qtbot.wait(100)
    opened = canvas.width()
    assert opened >= window.width() // 4, (opened, window.width())

    widget.advanced.expanded = True
    widget.concepts.expanded = True
    widget.status.value = _longest_message()
    qtbot.wait(100)
    assert canvas.width() >= opened - 2, (canvas.width(), opened)
    assert widget.status.tooltip == _longest_message()  # the details stay at hand

    widget.advanced.expanded = False
    assert widget.learn_all_values.native.isHidden() is False  # folded, not hidden
    assert not widget.advanced.body.native.isVisible()


def test_opening_the_widget_imports_no_torch(tmp_path):
    code = (
        "import sys, napari\n"
        "viewer = napari.Viewer(show=False)\n"
        "viewer.window.add_plugin_dock_widget('napari-persam', 'PerSAM')\n"
        "print('torch' in sys.modules, 'segment_anything' in sys.modules)\n"
        "viewer.close()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "QT_QPA_PLATFORM": "offscreen"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "False False"


def _paint(viewer, shape=(32, 32)):
    viewer.add_image(squares(shape), name="img")
    labels = np.zeros(shape, np.uint8)
    labels[4:12, 4:12] = 1
    viewer.add_labels(labels, name="ref")


def test_a_concept_file_is_read_in_the_worker_not_on_the_gui_thread(
    viewer, open_widget, qtbot, tmp_path, monkeypatch
):
    from napari_persam.core.io import concept_file

    _paint(viewer)
    widget = open_widget()
    run_and_wait(qtbot, widget)
    path = widget.export_concept(tmp_path / "c.npz")

    readers: list[str] = []
    original = concept_file.read_concept_file

    def recording(*args, **kwargs):
        readers.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(concept_file, "read_concept_file", recording)
    widget.load_concept(path)
    for _ in range(2):
        run_and_wait(qtbot, widget)
        assert widget.status.value.startswith("Done"), widget.status.value
    assert len(readers) == 2 and threading.main_thread().name not in readers
    assert widget.job.values == (1,)


def test_a_concept_of_another_model_is_refused_before_the_model_loads(
    viewer, open_widget, qtbot, tmp_path, notifications
):
    _paint(viewer)
    widget = open_widget()
    run_and_wait(qtbot, widget)
    path = widget.export_concept(tmp_path / "c.npz")
    loads: list[str] = []

    def factory(name, *, checkpoint, device):
        loads.append(name)
        raise AssertionError("no model may be loaded for a concept of another model")
        yield

    widget.model_factory = factory
    widget.load_concept(path)
    widget.model.value = "vit_t"
    run_and_wait(qtbot, widget)
    assert loads == []
    assert any("learned with model 'tiny', not with 'vit_t'" in m for m in notifications)
    assert widget.status.value.startswith("Failed")


def test_the_device_list_is_exact_once_torch_is_loaded(viewer, open_widget, qtbot):
    from napari_persam.core.devices import available_devices

    _paint(viewer)
    widget = open_widget()
    run_and_wait(qtbot, widget)
    assert list(widget.device.choices) == ["auto", *available_devices()]
    assert widget.device.value == "cpu"


def _form_names(widget) -> list[str]:
    """The names of the form's pieces and of every control in them, in order."""
    names = []
    for piece in widget.content:
        names.append(piece.name)
        body = getattr(piece, "body", piece)
        names.extend(child.name for child in getattr(body, "_list", []))
    return names


def test_the_menu_builds_the_form_in_pieces_and_ends_with_the_same_form(viewer, qtbot, monkeypatch):
    from napari_persam._widgets import PerSAMMenuWidget, PerSAMWidget
    from napari_persam._widgets._form import PerSAMForm

    turns = []  # each piece in a timer callback of its own: napari repaints between them
    real = PerSAMForm._build_next

    def build_next(form):
        turns.append(len(form._pending_builds))
        real(form)

    monkeypatch.setattr(PerSAMForm, "_build_next", build_next)
    _paint(viewer)
    _, widget = viewer.window.add_plugin_dock_widget("napari-persam", "PerSAM")
    assert isinstance(widget, PerSAMMenuWidget)
    assert not widget.built  # nothing but the frame in the menu's own event
    pieces = len(widget._pending_builds)
    assert pieces >= 4
    qtbot.waitUntil(lambda: widget.built, timeout=10_000)
    assert turns == list(range(pieces, 0, -1))

    whole = PerSAMWidget(viewer)
    assert _form_names(widget) == _form_names(whole)
    assert [piece.name for piece in widget.content] == [
        "main", "advanced", "concepts", "run_row", "status"
    ]  # fmt: skip
    assert widget.image.value is viewer.layers["img"]  # the pickers know the layers
    assert widget.reference.value is viewer.layers["ref"]
    whole.close()


def test_a_control_asked_for_before_the_form_is_built_builds_the_rest(viewer, qtbot):
    _paint(viewer)
    _, widget = viewer.window.add_plugin_dock_widget("napari-persam", "PerSAM")
    assert not widget.built
    widget.finetune.value = True  # in the last piece of the advanced options
    assert widget.built
    assert not widget.finetune_steps.native.isHidden()  # the form's rules are connected
    qtbot.wait(50)  # the pieces still scheduled find nothing left to do
    assert widget.built and widget.finetune.value is True


def test_closing_the_dock_while_it_is_being_built(viewer, qtbot):
    dock, widget = viewer.window.add_plugin_dock_widget("napari-persam", "PerSAM")
    assert not widget.built
    viewer.window.remove_dock_widget(dock)
    widget.native.deleteLater()
    qtbot.wait(100)  # the scheduled pieces must not fail on the deleted widget
    assert widget.built or not widget._pending_builds
