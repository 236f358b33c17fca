"""The Evaluate dock widget."""

from __future__ import annotations

import numpy as np
import pytest

from napari_persam._widgets._evaluate_widget import EvaluateWidget


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def _layers(viewer, *, scale=(1, 1, 1)):
    truth = np.zeros((5, 20, 20), dtype=np.int32)
    truth[:, 5:15, 5:15] = 1
    result = truth.copy()
    result[3] = 0  # slice 3 missed entirely
    result[1, 5:15, 5:10] = 0  # slice 1 half found
    truth_layer = viewer.add_labels(truth, name="truth", scale=scale)
    result_layer = viewer.add_labels(result, name="result", scale=scale)
    return result_layer, truth_layer


def _evaluate(widget, qtbot):
    worker = widget.evaluate()
    assert worker is not None
    qtbot.waitUntil(lambda: widget.comparison is not None, timeout=10000)
    qtbot.waitUntil(lambda: widget._run_button.enabled, timeout=10000)


def test_table_plot_and_worst_slice_navigation(viewer, qtbot):
    result_layer, truth_layer = _layers(viewer, scale=(2.5, 1, 1))
    before_result = result_layer.data.copy()
    widget = EvaluateWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.reset_choices()
    widget._result_layer.value = result_layer
    widget._truth_layer.value = truth_layer
    _evaluate(widget, qtbot)

    comparison = widget.comparison
    assert [item.iou for item in comparison.slices] == pytest.approx([1, 0.5, 1, 0, 1])
    # Worst slices first in the table.
    assert widget._slices.data[0][0] == "3"
    assert widget._slices.data[1][0] == "1"
    assert "worst slice z=3" in widget._status.value
    assert widget._summary.shape[0] == len(comparison.summary())
    np.testing.assert_allclose(widget._plot.values, [1, 0.5, 1, 0, 1])

    # Clicking the worst row moves the viewer there (through the layer's z scale).
    widget._slices.native.cellClicked.emit(0, 2)
    assert viewer.dims.point[0] == pytest.approx(3 * 2.5)
    assert widget.current_slice() == 3
    # Clicking the plot's left edge goes to slice 0.
    widget._plot.slice_clicked.emit(1)
    assert widget.current_slice() == 1
    assert widget._plot._current == 1

    # The user's layers are read, never changed.
    np.testing.assert_array_equal(result_layer.data, before_result)


def test_plot_maps_clicks_to_slices(qtbot):
    from napari_persam._widgets._slice_plot import SliceScorePlot

    plot = SliceScorePlot()
    qtbot.addWidget(plot)
    plot.resize(230, 120)
    assert plot.slice_at(100) is None
    plot.set_values([0.1, 0.9, 0.5])
    assert plot.slice_at(0) == 0
    assert plot.slice_at(10_000) == 2
    assert plot.slice_at(30 + 96) == 1
    plot.grab()  # paints without error


def test_bad_choices_say_what_to_do(viewer, qtbot):
    widget = EvaluateWidget(viewer)
    assert widget.evaluate() is None
    assert "Choose both" in widget._status.value
    a = viewer.add_labels(np.zeros((4, 5), dtype=np.int32), name="a")
    b = viewer.add_labels(np.zeros((4, 6), dtype=np.int32), name="b")
    widget.reset_choices()
    widget._result_layer.value = a
    widget._truth_layer.value = a
    assert widget.evaluate() is None
    assert "same layer" in widget._status.value
    widget._truth_layer.value = b
    assert widget.evaluate() is None
    assert "same image" in widget._status.value


def test_2d_layers_show_one_slice(viewer, qtbot):
    truth = np.zeros((12, 12), dtype=np.int32)
    truth[2:6, 2:6] = 1
    truth[8:11, 8:11] = 2
    result = np.zeros_like(truth)
    result[2:6, 2:6] = 7
    result_layer = viewer.add_labels(result, name="result")
    truth_layer = viewer.add_labels(truth, name="truth")
    widget = EvaluateWidget(viewer)
    widget.reset_choices()
    widget._result_layer.value = result_layer
    widget._truth_layer.value = truth_layer
    _evaluate(widget, qtbot)
    assert len(widget.comparison.slices) == 1
    assert "instance F1" in widget._slices.column_headers
    widget.go_to_slice(0)  # no z axis: nothing to move, no error
    assert widget.current_slice() is None


def test_manifest_contributes_the_widget():
    import importlib
    from pathlib import Path

    import yaml

    import napari_persam

    manifest = yaml.safe_load(
        (Path(napari_persam.__file__).parent / "napari.yaml").read_text(encoding="utf-8")
    )
    commands = {item["id"]: item for item in manifest["contributions"]["commands"]}
    widget = next(
        item for item in manifest["contributions"]["widgets"] if item["display_name"] == "Evaluate"
    )
    module, name = commands[widget["command"]]["python_name"].split(":")
    assert getattr(importlib.import_module(module), name) is EvaluateWidget
