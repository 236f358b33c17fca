"""The "Evaluate" dock widget: a result Labels layer against a ground-truth one.

Shows the whole image's or stack's scores, a table of slices worst first and a plot
of IoU along z; clicking a row or the plot moves the viewer to that slice. Layers
are only read, never changed.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import Container, Label, PushButton, Table, create_widget

from napari_persam._widgets._slice_plot import SliceScorePlot
from napari_persam._widgets._spelling import widget_message
from napari_persam.core.evaluation.compare import StackComparison, iter_compare_stacks

if TYPE_CHECKING:  # pragma: no cover
    import napari

SLICE_COLUMNS = ("z", "IoU", "Dice", "boundary IoU", "precision", "recall", "GT px", "result px")


def _layer_array(layer) -> np.ndarray:
    """The full-resolution data of a Labels layer (level 0 of a multiscale one)."""
    return layer.data[0] if layer.multiscale else layer.data


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


class EvaluateWidget(Container):
    """Compare a result Labels layer with a ground-truth Labels layer.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer whose layers are compared and whose z slider is moved.

    Notes
    -----
    2D layers are one slice; 3D layers are compared slice by slice along their
    first axis. Any nonzero label is foreground; when a layer holds several label
    ids, instance F1 (IoU >= 0.5 matches) is shown too.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        import napari

        self._viewer = viewer
        self._result_layer = create_widget(label="Result", annotation=napari.layers.Labels)
        self._truth_layer = create_widget(label="Ground truth", annotation=napari.layers.Labels)
        self._run_button = PushButton(text="Evaluate")
        self._status = Label(value="Choose a result and a ground-truth Labels layer.")
        # magicgui reads a dict as {"data", "index", "columns"} only with all three keys.
        self._summary = Table(
            value={"data": [], "index": [], "columns": ["value"]}, label="Overall"
        )
        self._slices = Table(
            value={"data": [], "index": [], "columns": list(SLICE_COLUMNS)}, label="Slices"
        )
        self._summary.read_only = True
        self._slices.read_only = True
        self._slices.tooltip = "Worst slices first; click a row to go to that slice"
        self._plot = SliceScorePlot()
        self.extend(
            [
                self._result_layer,
                self._truth_layer,
                self._run_button,
                self._status,
                self._summary,
                self._slices,
            ]
        )
        self.native.layout().addWidget(self._plot)

        self.comparison: StackComparison | None = None
        self._row_slices: list[int] = []
        self._compared_layer = None
        self._worker = None

        self._run_button.changed.connect(self._on_run)
        self._slices.native.cellClicked.connect(self._on_row_clicked)
        self._plot.slice_clicked.connect(self._on_plot_clicked)
        step_event = self._viewer.dims.events.current_step
        step_event.connect(self._on_dims_changed)
        # The viewer outlives a closed dock widget: stop calling into deleted Qt objects.
        handler = self._on_dims_changed
        self.native.destroyed.connect(lambda *_: step_event.disconnect(handler))

    # ------------------------------------------------------------------ slots
    def _on_run(self) -> None:
        self.evaluate()

    def _on_row_clicked(self, row: int, _column: int) -> None:
        self.go_to_slice(self._row_slices[row])

    def _on_plot_clicked(self, index: int) -> None:
        self.go_to_slice(index)

    def _on_dims_changed(self, _event=None) -> None:
        self._plot.set_current(self.current_slice())

    # ----------------------------------------------------------------- actions
    def evaluate(self):
        """Start comparing the chosen layers in a worker thread and return the worker.

        Returns None (and says why in the status line) when the layers cannot be
        compared.
        """
        from napari.qt.threading import create_worker

        result, truth = self._result_layer.value, self._truth_layer.value
        if result is None or truth is None:
            self._status.value = "Choose both a result and a ground-truth Labels layer."
            return None
        if result is truth:
            self._status.value = "Result and ground truth are the same layer; choose two layers."
            return None
        try:
            work = iter_compare_stacks(_layer_array(result), _layer_array(truth))
            first = next(work)  # validates shapes before a thread starts
        except ValueError as error:
            self._status.value = widget_message(error)
            return None
        except StopIteration as stop:  # pragma: no cover - a stack has >= 1 slice
            self._show(stop.value, truth)
            return None

        def resumed():
            yield first
            return (yield from work)

        self._run_button.enabled = False
        self._status.value = f"Comparing {result.name} with {truth.name}..."
        worker = create_worker(resumed)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda comparison: self._show(comparison, truth))
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        worker.start()
        return worker

    def _on_progress(self, step) -> None:
        self._status.value = f"Comparing: {step.message}"

    def _on_error(self, error: Exception) -> None:
        self._status.value = f"Evaluation failed: {widget_message(error)}"

    def _on_finished(self) -> None:
        self._run_button.enabled = True

    def _show(self, comparison: StackComparison, truth_layer) -> None:
        self.comparison = comparison
        self._compared_layer = truth_layer
        summary = comparison.summary()
        self._summary.value = {
            "data": [[_fmt(value)] for value in summary.values()],
            "index": list(summary),
            "columns": ["value"],
        }
        columns = list(SLICE_COLUMNS) + (["instance F1"] if comparison.instances else [])
        worst = comparison.worst()
        rows = []
        for item in worst:
            row = [
                str(item.index),
                _fmt(item.iou),
                _fmt(item.dice),
                _fmt(item.boundary_iou),
                _fmt(item.precision),
                _fmt(item.recall),
                str(item.true_area),
                str(item.predicted_area),
            ]
            if comparison.instances:
                row.append(_fmt(item.instance_f1))
            rows.append(row)
        self._row_slices = [item.index for item in worst]
        self._slices.value = {
            "data": rows,
            "index": [str(rank) for rank in range(1, len(rows) + 1)],
            "columns": columns,
        }
        self._plot.set_values([item.iou for item in comparison.slices])
        self._plot.set_current(self.current_slice())
        count = len(comparison.slices)
        lowest = worst[0]
        self._status.value = (
            f"{count} slice(s); IoU of all pixels {_fmt(comparison.counts.iou)}; "
            f"worst slice z={lowest.index} (IoU {_fmt(lowest.iou)})."
        )

    # -------------------------------------------------------------- navigation
    def _z_axis(self) -> int | None:
        """The viewer axis of the compared layer's slice axis, or None for 2D layers."""
        layer = self._compared_layer
        if layer is None or layer.ndim < 3 or layer not in self._viewer.layers:
            return None
        return self._viewer.dims.ndim - layer.ndim

    def go_to_slice(self, index: int) -> None:
        """Move the viewer's slider to slice ``index`` (data coordinates) of the layers."""
        axis = self._z_axis()
        if axis is None:
            return
        layer = self._compared_layer
        data_point = np.zeros(layer.ndim)
        data_point[0] = index
        world = np.asarray(layer.data_to_world(data_point))
        self._viewer.dims.set_point(axis, float(world[0]))

    def current_slice(self) -> int | None:
        """The compared layers' slice the viewer shows, or None."""
        axis = self._z_axis()
        if axis is None:
            return None
        layer = self._compared_layer
        world = np.asarray(self._viewer.dims.point)[-layer.ndim :]
        index = round(float(np.asarray(layer.world_to_data(world))[0]))
        return int(np.clip(index, 0, layer.data.shape[0] - 1))
