"""The bookkeeping of one Run: where each result goes, how far it got, how it ended.

Lives on the main thread; the widget feeds it the worker's signals. Kept apart
from the widget so a late signal (adding a layer can process pending events, so
"finished" may be handled while a result is still being written) only ever
touches this run's own state.
"""

from __future__ import annotations

import napari
import numpy as np
from napari.layers import Image
from napari.utils import progress

from napari_persam._widgets._layers import OutputLayers, ensure_outputs, write_result
from napari_persam._widgets._more_references import CONTENT_KEY, PredictedSlice
from napari_persam._widgets._runner import Job
from napari_persam._widgets._spelling import widget_message
from napari_persam.core.progress import Progress

#: Qt progress bars hold a 32-bit int; byte counts of large checkpoints are scaled down.
_BAR_LIMIT = 2**31 - 1


class RunState:
    """One run's progress bar, output layers and counts.

    Parameters
    ----------
    viewer : napari.Viewer
        Where the output layers are added.
    job : Job
        The run; ``Progress.index`` refers to ``job.targets``.
    images : dict of str to Image
        The image layers that targets name in ``Target.output`` (read only).
    predictions : dict, optional
        Filled with (image name, slice index or None) -> :class:`PredictedSlice` of
        each result written, so deleted objects can be told apart later.
    """

    def __init__(
        self,
        viewer: napari.Viewer,
        job: Job,
        *,
        images: dict[str, Image],
        predictions: dict[tuple[str, int | None], PredictedSlice] | None = None,
    ) -> None:
        self.viewer = viewer
        self.job = job
        self.images = images
        self.predictions = predictions
        self.outputs: dict[str, OutputLayers] = {}
        self.done = 0
        self.found = 0
        self.objects = 0
        self.cancelled = False
        self.failure = ""
        self.finished = False
        self.warnings: list[str] = []
        self.values: tuple[int, ...] = ()
        self.dtype = np.dtype(np.int32)
        self.classes_dtype: np.dtype | None = None
        if job.values:  # a concept file's values come with the worker's ConceptReady step
            self.set_values(job.values)
        self._bar: progress | None = progress(total=len(job.targets), desc="PerSAM")
        self._pending: tuple[int, int, str] | None = None
        self._shown: tuple[int, int, str] | None = None
        self._updating = False

    def set_values(self, values: tuple[int, ...]) -> None:
        """The label values the results hold, which decide the output layers' dtypes."""
        self.values = tuple(values)
        # Instance ids grow through a stack; class values are the user's own.
        top = max(self.values)
        self.dtype = np.dtype(np.int32) if self.job.instances else np.min_scalar_type(top)
        several = self.job.instances and len(self.values) > 1
        self.classes_dtype = np.min_scalar_type(top) if several else None

    @property
    def total(self) -> int:
        return len(self.job.targets)

    @property
    def bar(self) -> progress | None:
        """The napari progress bar while the run lasts; ``None`` once it has ended."""
        return self._bar

    def show(self, step: Progress) -> None:
        """Show a step: its message and count, and its result in the output layers."""
        if step.result is None or step.index is None:
            # Loading steps count their own units (bytes while downloading).
            self._set_bar(step.done, step.total, step.message)
            return
        target = self.job.targets[step.index]
        outputs = self.outputs.get(target.output)
        if outputs is None or any(
            layer is not None and layer not in self.viewer.layers
            for layer in (outputs.labels, outputs.similarity, outputs.classes)
        ):
            # (Re)made when missing: the user may delete an output layer mid-run.
            outputs = ensure_outputs(
                self.viewer,
                self.images[target.output],
                dtype=self.dtype,
                classes_dtype=self.classes_dtype,
            )
            self.outputs[target.output] = outputs
            outputs.labels.metadata[CONTENT_KEY] = {
                "instances": self.job.instances,
                "values": list(self.values),
            }
        write_result(outputs, step.result, slice_index=target.slice_index)
        if self.predictions is not None:
            key = (target.output, target.slice_index)
            self.predictions[key] = PredictedSlice.of(step.result.labels)
        self.done += 1
        self.found += int(step.result.objects > 0)
        self.objects += step.result.objects
        self._set_bar(self.done, self.total, step.message)

    def _set_bar(self, done: int, total: int, message: str) -> None:
        # Updating the bar emits events that may handle the worker's next steps (and
        # even "finished", which closes the bar) before returning. A nested call only
        # leaves its state for the outer one to apply, so the bar never goes back to
        # an older step, and the bar is checked before every call.
        self._pending = (done, total, message)
        if self._updating:
            return
        self._updating = True
        try:
            while self._pending is not None and self._bar is not None:
                done, total, message = step = self._pending
                self._pending = None
                if step == self._shown:
                    # A step repeated while the worker waits (an export polled four
                    # times a second): napari's bar would process events twice for it.
                    continue
                scale = max(1, -(-total // _BAR_LIMIT))
                self._bar.set_description(f"PerSAM: {message}")
                if self._pending is not None or self._bar is None:
                    continue
                self._bar.total = total // scale
                self._bar.n = 0
                self._bar.update(min(done, total) // scale)
                self._shown = step  # once wholly shown
        finally:
            self._updating = False

    def fail(self, error: BaseException) -> str:
        """Record a failure; returns the message for the user."""
        message = widget_message(error)
        if isinstance(error, MemoryError) or "out of memory" in message.lower():
            message += " (out of memory: try a smaller model, the CPU, or fewer slices)"
        self.failure = message
        return message

    def finish(self) -> None:
        self.finished = True
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def summary(self) -> str:
        """One line for the widget's status (with the run's warnings after it)."""
        text = self._outcome()
        if self.warnings:
            text += " Warning: " + " ".join(dict.fromkeys(self.warnings))
        return text

    def _outcome(self) -> str:
        if self.failure:
            return f"Failed after {self.done} of {self.total} image(s): {self.failure}"
        if self.cancelled:
            return f"Cancelled: kept the {self.done} of {self.total} image(s) finished."
        if not self.finished:
            return f"Segmented {self.done} of {self.total}..."
        missed = self.done - self.found
        found = f"; nothing found in {missed}" if missed else ""
        objects = f"; {self.objects} object(s)" if self.job.instances else ""
        return f"Done: segmented {self.done} of {self.total} image(s){found}{objects}."
