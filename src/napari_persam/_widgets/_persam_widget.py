"""The PerSAM dock widget: paint one object, segment it everywhere.

The widget is thin: it turns its fields into a :class:`~._job.Request`, checks it
(:func:`~._job.build_job`), runs :func:`~._runner.run_job` in a napari thread
worker and writes each result into the output layers as it arrives.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import napari
import numpy as np
from magicgui.widgets import Container
from napari.layers import Image, Labels
from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer

from napari_persam._widgets import _controls as controls
from napari_persam._widgets._concepts import (
    ConceptReady,
    LearnedConcept,
    check_export_target,
    describe,
    read_concept,
)
from napari_persam._widgets._job import (
    IMAGE_LAYERS,
    SLICE_RANGE,
    TARGETS_2D,
    TARGETS_3D,
    Request,
    build_job,
    check_image,
    image_kind,
)
from napari_persam._widgets._layers import spatial_shape
from napari_persam._widgets._more_references import reference_pairs, result_shot
from napari_persam._widgets._run_state import RunState
from napari_persam._widgets._runner import Job, LoadedModels, ModelChoice, ModelFactory, run_job
from napari_persam.core.config import PerSAMConfig
from napari_persam.core.models import TINY_MODEL
from napari_persam.core.progress import Progress

if TYPE_CHECKING:  # pragma: no cover
    from napari_persam.core.disk_cache import DiskEmbeddingCache


class PerSAMWidget(Container):
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
        self, napari_viewer: napari.Viewer, *, model_factory: ModelFactory | None = None
    ) -> None:
        super().__init__()
        self._viewer = napari_viewer
        self._models = LoadedModels(model_factory)
        self._run: RunState | None = None
        self._extra_shots: list[tuple[np.ndarray, np.ndarray]] = []
        self.worker: GeneratorWorker | None = None
        self.job: Job | None = None
        self.last_concept: LearnedConcept | None = None

        self.image = controls.image()
        self.reference = controls.reference()
        self.label_value = controls.label_value()
        self.learn_all_values = controls.learn_all_values()
        self.all_painted_slices = controls.all_painted_slices()
        self.reference_slice = controls.reference_slice()
        self.more_references = controls.more_references(self._reference_pairs)
        self.add_reference_button = controls.add_reference_button()
        self.extra_references_count = controls.extra_references_count()
        self.clear_references_button = controls.clear_references_button()
        extra_row = controls.row(
            self.add_reference_button,
            self.extra_references_count,
            self.clear_references_button,
            name="extra_references",
        )
        self.find_mode = controls.find_mode()
        self.auto_threshold = controls.auto_threshold()
        self.instance_threshold = controls.instance_threshold()
        self.max_instances = controls.max_instances()
        self.stack_mode = controls.stack_mode()
        self.targets = controls.targets(self._target_choices)
        self.first_slice = controls.first_slice()
        self.last_slice = controls.last_slice()
        self.target_layers = controls.target_layers(self._same_kind_layers)
        self.model = controls.model()
        self.checkpoint = controls.checkpoint()
        self.device = controls.device()
        self.cache_on_disk = controls.cache_on_disk()
        self.concept_file = controls.concept_file()
        self.export_path = controls.export_path()
        self.export_button = controls.export_button()
        self.finetune = controls.finetune()
        self.finetune_steps = controls.finetune_steps()
        self.target_guided_attention = controls.target_guided_attention()
        self.semantic_prompt = controls.semantic_prompt()
        self.min_object_size = controls.min_object_size()
        self.run_button = controls.run_button()
        self.cancel_button = controls.cancel_button()
        self.status = controls.status()

        self.extend([
            self.image, self.reference, self.label_value, self.learn_all_values,
            self.all_painted_slices, self.reference_slice, self.more_references, extra_row,
            self.find_mode, self.auto_threshold, self.instance_threshold, self.max_instances,
            self.targets, self.first_slice, self.last_slice, self.target_layers,
            self.stack_mode, self.model, self.checkpoint, self.device, self.cache_on_disk,
            self.concept_file, self.finetune, self.finetune_steps,
            self.target_guided_attention, self.semantic_prompt, self.min_object_size,
            self.run_button, self.cancel_button, self.export_path, self.export_button,
            self.status,
        ])  # fmt: skip

        self.image.changed.connect(self._on_image_changed)
        self.reference.changed.connect(self._on_reference_changed)
        self.targets.changed.connect(self._on_targets_changed)
        self.all_painted_slices.changed.connect(self._on_all_slices_changed)
        self.learn_all_values.changed.connect(self._on_all_values_changed)
        self.find_mode.changed.connect(self._on_find_mode_changed)
        self.auto_threshold.changed.connect(self._on_auto_threshold_changed)
        self.add_reference_button.changed.connect(self._on_add_reference_clicked)
        self.clear_references_button.changed.connect(self._on_clear_references_clicked)
        self.model.changed.connect(self._on_model_changed)
        self.finetune.changed.connect(self._on_finetune_changed)
        self.concept_file.changed.connect(self._on_concept_file_changed)
        self.export_button.changed.connect(self._on_export_clicked)
        self.run_button.changed.connect(self._on_run_clicked)
        self.cancel_button.changed.connect(self._on_cancel_clicked)
        self._on_image_changed()
        self._on_model_changed()
        self._on_finetune_changed()
        self._on_find_mode_changed()
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
        caches = {} if model is None else model.disk_caches
        return next(reversed(list(caches.values())), None)

    @property
    def running(self) -> bool:
        return self.worker is not None

    @property
    def extra_references(self) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        """The references added with "add result slice as reference".

        Each is (image (Y, X[, C]), labels (Y, X) int32 holding label values),
        copies taken when the button was pressed; the next Run learns from them too.
        """
        return tuple(self._extra_shots)

    @property
    def progress_bar(self) -> progress | None:
        """The napari progress bar of the running job (``None`` when idle).

        Counts bytes while a checkpoint downloads or is verified, then images.
        """
        return None if self._run is None else self._run.bar

    # ------------------------------------------------------------------ slots
    def _on_image_changed(self, *_: object) -> None:
        self._update_for_image()

    def _on_reference_changed(self, *_: object) -> None:
        self._refresh_pairs()

    def _on_targets_changed(self, *_: object) -> None:
        self._update_visibility()

    def _on_all_slices_changed(self, *_: object) -> None:
        self.reference_slice.enabled = not self.all_painted_slices.value

    def _on_all_values_changed(self, *_: object) -> None:
        loaded = self._concept_path() is not None
        self.label_value.enabled = not loaded and not self.learn_all_values.value

    def _on_find_mode_changed(self, *_: object) -> None:
        instances = self.find_mode.value == controls.EVERY_INSTANCE
        for widget in (self.auto_threshold, self.instance_threshold, self.max_instances):
            widget.visible = instances

    def _on_auto_threshold_changed(self, *_: object) -> None:
        self.instance_threshold.enabled = not self.auto_threshold.value

    def _on_add_reference_clicked(self, *_: object) -> None:
        self.add_result_as_reference()

    def _on_clear_references_clicked(self, *_: object) -> None:
        self.clear_extra_references()

    def _on_model_changed(self, *_: object) -> None:
        self.checkpoint.visible = self.model.value != TINY_MODEL

    def _on_finetune_changed(self, *_: object) -> None:
        self.finetune_steps.visible = self.finetune.value

    def _on_concept_file_changed(self, *_: object) -> None:
        # A loaded concept has no reference images: PerSAM-F has nothing to train on.
        loaded = self._concept_path() is not None
        self.finetune.enabled = not loaded
        if loaded:
            self.finetune.value = False
        for widget in (self.reference, self.learn_all_values):
            widget.enabled = not loaded
        self._on_all_values_changed()
        if loaded:
            self.status.value = (
                "Run segments with the concept file (the reference layer is not used); clear "
                "'concept file' to learn again."
            )
        else:
            self.status.value = "Run learns from the reference layer."

    def _on_export_clicked(self, *_: object) -> None:
        self.export_concept()

    def _on_run_clicked(self, *_: object) -> None:
        self.run()

    def _on_cancel_clicked(self, *_: object) -> None:
        self.cancel()

    def _on_yielded(self, step: Progress) -> None:
        if isinstance(step, ConceptReady) and step.concept is not None:
            self.last_concept = step.concept
            self.export_button.enabled = True
        self._show(step)

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
        if self.running:
            return
        try:
            job = build_job(self._request(concept=self._read_concept_file()))
        except ValueError as error:
            show_error(str(error))
            self.status.value = f"Not started: {error}"
            return
        images = {layer.name: layer for layer in self._viewer.layers if isinstance(layer, Image)}
        self.job = job
        self._run = RunState(self._viewer, job, images=images)
        self.worker = create_worker(
            run_job, job, models=self._models, _start_thread=False,
            _connect={
                "yielded": self._on_yielded, "errored": self._on_errored,
                "aborted": self._on_aborted, "finished": self._on_finished,
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

        Same as choosing it in "concept file"; the file is read when Run is pressed.
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
            written = self.last_concept.save(check_export_target(chosen))
        except (ValueError, OSError) as error:
            show_error(f"Concept not exported: {error}")
            self.status.value = f"Not exported: {error}"
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
        (several; pixels painted with new ids there are left out). Nothing in the
        viewer is changed.
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
            show_error(str(error))
            self.status.value = f"Not added: {error}"
            return
        self._extra_shots.append(shot)
        self._show_extra_count()
        self.status.value = f"Added {where} as a reference; it is used from the next Run on."

    def clear_extra_references(self) -> None:
        """Forget the references added with "add result slice as reference"."""
        self._extra_shots.clear()
        self._show_extra_count()

    # -------------------------------------------------------------- internals
    def _show_extra_count(self) -> None:
        count = len(self._extra_shots)
        self.extra_references_count.value = f"{count} added"
        self.clear_references_button.enabled = count > 0

    def _concept_path(self) -> Path | None:
        path = self.concept_file.value
        if not path or str(path) in ("", "."):
            return None
        return Path(path)

    def _read_concept_file(self) -> object | None:
        path = self._concept_path()
        return None if path is None else read_concept(path)

    def _request(self, *, concept: object | None = None) -> Request:
        image = self.image.value
        return Request(
            image=image,
            reference=self.reference.value,
            label_value=int(self.label_value.value),
            reference_slice=(
                None if self.all_painted_slices.value else int(self.reference_slice.value)
            ),
            target_mode=self.targets.value,
            current_slice=self._current_slice(image),
            slice_range=(int(self.first_slice.value), int(self.last_slice.value)),
            target_layers=list(self.target_layers.value or []),
            model=ModelChoice(
                name=self.model.value,
                checkpoint=self._checkpoint_path(),
                device=self.device.value,
            ),
            config=PerSAMConfig(
                target_guided_attention=self.target_guided_attention.value,
                semantic_prompt=self.semantic_prompt.value,
                min_area_fraction=float(self.min_object_size.value) / 100.0,
                finetune_steps=int(self.finetune_steps.value),
                instance_threshold=(
                    None if self.auto_threshold.value else float(self.instance_threshold.value)
                ),
                max_instances=int(self.max_instances.value),
                stack_mode=self.stack_mode.value,
            ),
            finetune=bool(self.finetune.value),
            learn_all_values=bool(self.learn_all_values.value),
            instances=self.find_mode.value == controls.EVERY_INSTANCE,
            more_references=list(self.more_references.value or []),
            extra_shots=list(self._extra_shots),
            concept_file=concept,
            concept_source=repr(str(self._concept_path())),
            cache_on_disk=bool(self.cache_on_disk.value),
        )

    def _checkpoint_path(self) -> Path | None:
        path = self.checkpoint.value
        if self.model.value == TINY_MODEL or not path or str(path) in ("", "."):
            return None
        return Path(path)

    def _current_slice(self, image: Image | None) -> int:
        if image is None or len(spatial_shape(image)) != 3:
            return 0
        return round(float(image.world_to_data(self._viewer.dims.point)[0]))

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
        if self._run is not None:
            self._run.finish()
            self.status.value = self._run.summary()
        self.worker = None
        self.run_button.enabled = True
        self.cancel_button.enabled = False

    def _update_for_image(self) -> None:
        image = self.image.value
        is_stack = image is not None and len(spatial_shape(image)) == 3
        last = spatial_shape(image)[0] - 1 if is_stack else 0
        for spin in (self.reference_slice, self.first_slice, self.last_slice):
            spin.max = max(last, 0)
        self.last_slice.value = max(last, 0)
        self.targets.reset_choices()
        self.target_layers.reset_choices()
        self.all_painted_slices.visible = is_stack
        self.reference_slice.visible = is_stack
        self.stack_mode.visible = is_stack
        self._refresh_pairs()
        self._update_visibility()

    def _update_visibility(self) -> None:
        mode = self.targets.value
        self.first_slice.visible = mode == SLICE_RANGE
        self.last_slice.visible = mode == SLICE_RANGE
        self.target_layers.visible = mode == IMAGE_LAYERS

    def reset_choices(self, *_: object) -> None:
        """Refresh the layer pickers (napari calls this when layers change)."""
        super().reset_choices()
        self._refresh_pairs()

    def _refresh_pairs(self) -> None:
        self.more_references.reset_choices()
        # Only offered when there is something to offer: it is a rare need.
        self.more_references.visible = len(self.more_references.choices) > 0

    def _reference_pairs(self, *_: object) -> list[tuple[str, tuple[Image, Labels]]]:
        image = self.image.value if hasattr(self, "image") else None
        reference = self.reference.value if hasattr(self, "reference") else None
        return reference_pairs(self._viewer.layers, image=image, reference=reference)

    def _target_choices(self, *_: object) -> tuple[str, ...]:
        image = self.image.value if hasattr(self, "image") else None
        if image is not None and len(spatial_shape(image)) == 3:
            return TARGETS_3D
        return TARGETS_2D

    def _same_kind_layers(self, *_: object) -> list[tuple[str, Image]]:
        image = self.image.value if hasattr(self, "image") else None
        if image is None:
            return []
        kind = image_kind(image)
        return [
            (layer.name, layer)
            for layer in self._viewer.layers
            if isinstance(layer, Image) and not layer.multiscale and image_kind(layer) == kind
        ]


__all__ = ["PerSAMWidget"]
