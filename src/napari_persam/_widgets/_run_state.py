"""The bookkeeping of one Run: where each result goes, how far it got, how it ended.

Lives on the main thread; the widget feeds it the worker's signals. Kept apart
from the widget so a late signal (adding a layer can process pending events, so
"finished" may be handled while a result is still being written) only ever
touches this run's own state.
"""

from __future__ import annotations

import napari
from napari.layers import Image
from napari.utils import progress

from napari_persam._widgets._layers import OutputLayers, ensure_outputs, write_result
from napari_persam._widgets._runner import Job
from napari_persam.core.progress import Progress


class RunState:
    """One run's progress bar, output layers and counts.

    Parameters
    ----------
    viewer : napari.Viewer
        Where the output layers are added.
    job : Job
        The run; ``Progress.index`` refers to ``job.targets``.
    value : int
        Label value written where an object is found.
    images : dict of str to Image
        The image layers that targets name in ``Target.output`` (read only).
    """

    def __init__(
        self, viewer: napari.Viewer, job: Job, *, value: int, images: dict[str, Image]
    ) -> None:
        self.viewer = viewer
        self.job = job
        self.value = value
        self.images = images
        self.outputs: dict[str, OutputLayers] = {}
        self.done = 0
        self.found = 0
        self.cancelled = False
        self.failure = ""
        self.finished = False
        self._bar: progress | None = progress(total=len(job.targets), desc="PerSAM")

    @property
    def total(self) -> int:
        return len(self.job.targets)

    def show(self, step: Progress) -> None:
        """Show a step: its message, and its result in the output layers if it has one."""
        if self._bar is not None:
            self._bar.set_description(f"PerSAM: {step.message}")
        if step.result is None or step.index is None:
            return
        target = self.job.targets[step.index]
        outputs = self.outputs.get(target.output)
        if outputs is None or outputs.labels not in self.viewer.layers:
            # (Re)made when missing: the user may delete an output layer mid-run.
            outputs = ensure_outputs(self.viewer, self.images[target.output], value=self.value)
            self.outputs[target.output] = outputs
        write_result(outputs, step.result, slice_index=target.slice_index, value=self.value)
        self.done += 1
        self.found += int(step.result.found)
        if self._bar is not None:
            self._bar.update(1)

    def fail(self, error: BaseException) -> str:
        """Record a failure; returns the message for the user."""
        message = str(error) or type(error).__name__
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
        """One line for the widget's status."""
        if self.failure:
            return f"Failed after {self.done} of {self.total} image(s): {self.failure}"
        if self.cancelled:
            return f"Cancelled: kept the {self.done} of {self.total} image(s) finished."
        if not self.finished:
            return f"Segmented {self.done} of {self.total}..."
        missed = self.done - self.found
        found = f"; nothing found in {missed}" if missed else ""
        return f"Done: segmented {self.done} of {self.total} image(s){found}."
