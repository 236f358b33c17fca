"""The PerSAM dock widget: paint one object, segment it everywhere.

The widget is thin: it turns its fields into a :class:`~._job.Request`, checks it
(:func:`~._job.build_job`), runs :func:`~._runner.run_job` in a napari thread
worker and writes each result into the output layers as it arrives.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import napari
import numpy as np
from napari.layers import Image
from napari.utils import progress
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer

from napari_persam._widgets._form import PerSAMForm
from napari_persam._widgets._job import (
    build_job,
    check_image,
)
from napari_persam._widgets._layers import METADATA_KEY, spatial_shape
from napari_persam._widgets._models import LoadedModels
from napari_persam._widgets._more_references import deleted_objects, result_shot
from napari_persam._widgets._spelling import widget_message

# What only a Run, an export or a result needs is imported there: opening the widget
# (on napari's GUI thread) imports as little as it can.
if TYPE_CHECKING:  # pragma: no cover
    from napari.qt.threading import GeneratorWorker

    from napari_persam._widgets._concepts import ConceptReady, LearnedConcept
    from napari_persam._widgets._more_references import PredictedSlice
    from napari_persam._widgets._run_state import RunState
    from napari_persam._widgets._runner import Job
    from napari_persam.core.engine_builder import ModelFactory
    from napari_persam.core.io.disk_cache import DiskEmbeddingCache
    from napari_persam.core.progress import Progress


class PerSAMWidget(PerSAMForm):
    """Learn an object from a painted reference and segment it in images and slices.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose layers are read and written.
    model_factory : callable, optional
        ``factory(name, *, checkpoint, device)`` returning a generator that yields
        :class:`~napari_persam.core.progress.Progress` and returns a ``Sam``. The
        default, :func:`napari_persam.core.models.iter_load_model`, builds the
        registry's models. Can also be set later through :attr:`model_factory`
        (e.g. to run your own SAM variant, or a small one in tests). The model
        is loaded once per (model, checkpoint, device) and kept while the widget
        lives; choosing another one replaces it.
    staged : bool
        Build the form a piece per turn of the event loop, as napari's Plugins menu
        opens it (:class:`PerSAMMenuWidget`); see :class:`~._form.PerSAMForm`.

    Attributes
    ----------
    worker : GeneratorWorker or None
        The running worker; ``None`` when idle.
    job : Job or None
        What the latest Run was given (references as ``job.shots``, label values,
        targets, config); for scripts and tests that check what a Run used.
    last_concept : LearnedConcept or None
        The concept(s) the latest Run segmented with (learned or loaded), handed
        back by the worker once ready; what "export concept" saves.
    """

    def __init__(
        self,
        napari_viewer: napari.Viewer,
        *,
        model_factory: ModelFactory | None = None,
        staged: bool = False,
    ) -> None:
        self._models = LoadedModels(model_factory)
        self._run: RunState | None = None
        self._extra_shots: list[tuple[np.ndarray, np.ndarray]] = []
        # For each extra shot: the objects deleted from it (negatives), or None.
        self._extra_negatives: list[np.ndarray | None] = []
        self._predictions: dict[tuple[str, int | None], PredictedSlice] = {}
        self.worker: GeneratorWorker | None = None
        self.job: Job | None = None
        self.last_concept: LearnedConcept | None = None
        super().__init__(napari_viewer, staged=staged)
        self._viewer.layers.events.removed.connect(self._on_layer_removed)

    def _connect_form(self) -> None:
        super()._connect_form()
        self.add_reference_button.changed.connect(self._on_add_reference_clicked)
        self.clear_references_button.changed.connect(self._on_clear_references_clicked)
        self.export_button.changed.connect(self._on_export_clicked)
        self.run_button.changed.connect(self._on_run_clicked)
        self.cancel_button.changed.connect(self._on_cancel_clicked)
        self._show_extra_count()

    # ------------------------------------------------------------------ hooks
    @property
    def model_factory(self) -> ModelFactory | None:
        """How models are built (see the class docstring); ``None`` is the default."""
        return self._models.factory

    @model_factory.setter
    def model_factory(self, factory: ModelFactory | None) -> None:
        # Models built by the old factory must not be reused under the new one.
        self._models = LoadedModels(factory)

    @property
    def disk_cache(self) -> DiskEmbeddingCache | None:
        """The loaded model's disk embedding cache (``None`` before a Run with it on).

        Its ``hits``, ``misses`` and ``writes`` count this model's disk reads and
        writes since it was loaded.
        """
        model = self._models.current
        caches = [] if model is None else model.disk_caches
        return caches[-1] if caches else None

    @property
    def running(self) -> bool:
        return self.worker is not None

    @property
    def extra_references(self) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        """The references added with "add result slice".

        Each is (image (Y, X[, C]), labels (Y, X) int32 holding label values),
        copies taken when the button was pressed; the next Run learns from them too.
        """
        return tuple(self._extra_shots)

    @property
    def extra_negatives(self) -> tuple[np.ndarray | None, ...]:
        """For each extra reference: the (Y, X) bool objects deleted from it, or None.

        Objects the Run found on that slice and the user erased before pressing "add
        result slice as reference"; the next Run learns them as "not this".
        """
        return tuple(self._extra_negatives)

    @property
    def progress_bar(self) -> progress | None:
        """The napari progress bar of the running job (``None`` when idle).

        Counts bytes while a checkpoint downloads or is verified, then images.
        """
        return None if self._run is None else self._run.bar

    # ------------------------------------------------------------------ slots
    def _on_add_reference_clicked(self, *_: object) -> None:
        self.add_result_as_reference()

    def _on_clear_references_clicked(self, *_: object) -> None:
        self.clear_extra_references()

    def _on_export_clicked(self, *_: object) -> None:
        self.export_concept()

    def _on_layer_removed(self, event) -> None:
        # A deleted result layer takes what the Runs found in it along: objects never
        # written to a new "<image> PerSAM" layer were not deleted by the user.
        tag = getattr(event.value, "metadata", {}).get(METADATA_KEY, {})
        if tag.get("role") == "labels":
            for key in [key for key in self._predictions if key[0] == tag.get("source")]:
                del self._predictions[key]

    def _on_run_clicked(self, *_: object) -> None:
        self.run()

    def _on_cancel_clicked(self, *_: object) -> None:
        self.cancel()

    def _on_yielded(self, step: Progress) -> None:
        from napari_persam._widgets._concepts import ConceptReady

        if isinstance(step, ConceptReady) and step.concept is not None:
            self.last_concept = step.concept
            self.export_button.enabled = True
            values = tuple(step.concept.label_values)
            if self.job is not None and self.job.values != values:
                # A concept file read by the worker: its label values are known now.
                self.job = dataclasses.replace(self.job, values=values)
                if self._run is not None:
                    self._run.set_values(values)
            if self.job is not None and self.job.concept_path is not None:
                self._show_prompt_settings(step.concept.config)
            self._show_tiling(step)
        self._show(step)

    def _show_prompt_settings(self, config) -> None:
        """Set the prompt controls to a concept file's settings, which its Run used."""
        self.prompt_mode.value = config.prompt_mode
        # The lower end first: each end moves the other along, so the range always fits.
        for spin, value in (
            (self.min_parts, config.min_parts),
            (self.max_parts, config.max_parts),
            (self.max_negative_parts, config.max_negative_parts),
        ):
            spin.max = max(spin.max, value)  # a file from a script may go beyond the widget's
            spin.value = value

    def _show_tiling(self, step: ConceptReady) -> None:
        """Say next to Run at what scale the Run works and what it costs."""
        job = self.job
        if job is None or not job.targets or step.concept is None:
            return
        first = job.targets[0]
        shape = np.shape(first.source)
        image_hw = shape[1:3] if first.slice_index is not None else shape[:2]
        from napari_persam._widgets._tiling_info import describe_tiling

        self.tiling_info.value = describe_tiling(
            image_hw,
            step.concept.concepts,
            job.config,
            images=len(job.targets),
            seconds_per_encoding=step.seconds_per_encoding,
        )

    def _on_warned(self, warning: tuple) -> None:
        # napari shows the warning as a notification too; the status keeps it in view.
        if self._run is not None:
            self._run.warnings.append(str(warning[0]))

    def _on_errored(self, error: BaseException) -> None:
        self._report(error)

    def _on_aborted(self) -> None:
        self._mark_cancelled()

    def _on_finished(self) -> None:
        self._finish()

    # ---------------------------------------------------------------- actions
    def run(self) -> None:
        """Check the choices and start the work in a thread (what Run does).

        Bad choices become a napari error notification and nothing starts.
        """
        from napari.qt.threading import create_worker

        from napari_persam._widgets._run_state import RunState
        from napari_persam._widgets._runner import run_job

        if self.running:
            return
        try:
            job = build_job(
                self._request(extra_shots=self._extra_shots, extra_negatives=self._extra_negatives)
            )
        except ValueError as error:
            show_error(widget_message(error))
            self.status.value = f"Not started: {widget_message(error)}"
            return
        images = {layer.name: layer for layer in self._viewer.layers if isinstance(layer, Image)}
        self.job = job
        self._run = RunState(self._viewer, job, images=images, predictions=self._predictions)
        self.worker = create_worker(
            run_job, job, models=self._models, _start_thread=False,
            _connect={
                "yielded": self._on_yielded, "errored": self._on_errored,
                "aborted": self._on_aborted, "finished": self._on_finished,
                "warned": self._on_warned,
            },
        )  # fmt: skip
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = f"Running on {len(job.targets)} image(s)..."
        # Started from the event loop, once this click is handled, so whoever holds
        # the worker now (a test, a script) can connect to its signals first.
        QTimer.singleShot(0, self.worker.start)

    def load_concept(self, path: str | Path | None) -> None:
        """Segment with the concept file at ``path`` from the next Run on (``None``: learn again).

        Same as choosing it in "concept file"; the file is read by the Run's worker.
        """
        self.concept_file.value = None if path is None else Path(path)

    def export_concept(self, path: str | Path | None = None) -> Path | None:
        """Save the last Run's concept to ``path`` (default: "export to").

        Returns the file written, or ``None`` when nothing was saved (a
        notification says why: no Run yet, no file chosen, a file that is not a
        concept file in the way).
        """
        try:
            if self.last_concept is None:
                raise ValueError("No concept yet: press Run first, then export its concept.")
            chosen = path if path is not None else self.export_path.value
            if chosen is None or str(chosen) in ("", "."):
                raise ValueError("Choose a file in 'export to' first (a name ending in .npz).")
            from napari_persam._widgets._concepts import check_export_target, describe

            written = self.last_concept.save(check_export_target(chosen))
        except (ValueError, OSError) as error:
            show_error(f"Concept not exported: {widget_message(error)}")
            self.status.value = f"Not exported: {widget_message(error)}"
            return None
        show_info(f"Concept saved to {written}")
        self.status.value = f"Exported the concept ({describe(self.last_concept)}) to {written}."
        return written

    def cancel(self) -> None:
        """Stop after the image being segmented now; finished results stay."""
        if self.worker is not None:
            self.status.value = "Cancelling after the current image..."
            self.worker.quit()

    def add_result_as_reference(self) -> None:
        """Keep the result slice the viewer shows, and its image, as an extra reference.

        Takes the current slice (the whole image for 2D) of this image's
        "<image> PerSAM" layer, as the user may have corrected it by painting on it.
        One-object results hold label values and are used as they are; instance ids
        become the learned value (one value) or the value in "<image> classes"
        (several; pixels painted with new ids there are left out). Objects that
        the Run found on this slice and that were deleted from the layer since are
        kept as negatives ("not this") of that reference (:attr:`extra_negatives`).
        Nothing in the viewer is changed.
        """
        try:
            image = check_image(self.image.value)
            index = None
            if len(spatial_shape(image)) == 3:
                index, depth = self._current_slice(image), spatial_shape(image)[0]
                if not 0 <= index < depth:  # a negative index would take another slice
                    raise ValueError(
                        f"the viewer shows slice {index}, outside {image.name!r} (slices 0 "
                        f"to {depth - 1}); move the slider onto the image first."
                    )
            shot, where = result_shot(self._viewer, image, slice_index=index)
        except ValueError as error:
            show_error(widget_message(error))
            self.status.value = f"Not added: {widget_message(error)}"
            return
        deleted = deleted_objects(self._predictions.get((image.name, index)), shot[1])
        self._extra_shots.append(shot)
        self._extra_negatives.append(deleted)
        self._show_extra_count()
        negatives = ""
        if deleted is not None:
            from scipy import ndimage

            count = ndimage.label(deleted, structure=np.ones((3, 3), dtype=bool))[1]
            negatives = f" with the {count} object(s) you deleted as negatives"
        self.status.value = (
            f"Added {where} as a reference{negatives}; it is used from the next Run on."
        )

    def clear_extra_references(self) -> None:
        """Forget the references added with "add result slice"."""
        self._extra_shots.clear()
        self._extra_negatives.clear()
        self._show_extra_count()

    # -------------------------------------------------------------- internals
    def _show_extra_count(self) -> None:
        count = len(self._extra_shots)
        self.extra_references_count.value = f"{count} added"
        self.clear_references_button.enabled = count > 0

    def _show(self, step: Progress) -> None:
        run = self._run  # this run's, even if another starts while a result is written
        if run is None:
            return
        run.show(step)
        if self.worker is not None and step.result is None:
            self.status.value = step.message.capitalize() + "..."
        else:
            self.status.value = run.summary()

    def _report(self, error: BaseException) -> None:
        if self._run is not None:
            show_error(f"PerSAM failed: {self._run.fail(error)}")
            self.status.value = self._run.summary()

    def _mark_cancelled(self) -> None:
        if self._run is not None:
            self._run.cancelled = True

    def _finish(self) -> None:
        # A cancelled worker stops at a yield and leaves its generator suspended; closing
        # it now runs the Run's clean-up at once (a child process exporting the encoder
        # is killed, a partial download removed), not whenever Python frees the worker.
        generator = getattr(self.worker, "_gen", None)
        if generator is not None:
            generator.close()
        if self._run is not None:
            self._run.finish()
            self.status.value = self._run.summary()
        self.worker = None
        self.run_button.enabled = True
        self.cancel_button.enabled = False
        self._refresh_devices(self._models.devices)


__all__ = ["PerSAMWidget"]


class PerSAMMenuWidget(PerSAMWidget):
    """The widget as napari's Plugins menu opens it: built a piece per event-loop turn.

    Built at once, the form would freeze napari's window for about 0.3 s; in pieces,
    the window keeps repainting. It is the same widget: asking it for any control
    finishes the building first. (A class, not a function: napari passes the viewer
    only to a class whose ``__init__`` asks for ``napari_viewer``.)
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer, staged=True)
