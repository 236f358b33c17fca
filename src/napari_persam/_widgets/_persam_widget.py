"""The PerSAM dock widget: paint one object, segment it everywhere.

The widget is thin: it turns its fields into a :class:`~._job.Request`, checks it
(:func:`~._job.build_job`), runs :func:`~._runner.run_job` in a napari thread
worker and writes each result into the output layers as it arrives.
"""

from __future__ import annotations

from pathlib import Path

import napari
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    PushButton,
    Select,
    SpinBox,
    create_widget,
)
from napari.layers import Image, Labels
from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import QTimer

from napari_persam._widgets._job import (
    IMAGE_LAYERS,
    SLICE_RANGE,
    TARGETS_2D,
    TARGETS_3D,
    Request,
    build_job,
    image_kind,
)
from napari_persam._widgets._layers import spatial_shape
from napari_persam._widgets._run_state import RunState
from napari_persam._widgets._runner import LoadedModels, ModelChoice, ModelFactory, run_job
from napari_persam.core.config import PerSAMConfig
from napari_persam.core.models import DEFAULT_MODEL, TINY_MODEL, model_names
from napari_persam.core.progress import Progress

_MAX_LABEL = 2**31 - 1


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
    """

    def __init__(
        self, napari_viewer: napari.Viewer, *, model_factory: ModelFactory | None = None
    ) -> None:
        super().__init__()
        self._viewer = napari_viewer
        self._models = LoadedModels(model_factory)
        self._run: RunState | None = None
        self.worker: GeneratorWorker | None = None

        self.image = create_widget(annotation=Image, label="image", name="image")
        self.reference = create_widget(annotation=Labels, label="reference", name="reference")
        self.label_value = SpinBox(
            label="label value (0: most painted)",
            name="label_value",
            min=0,
            max=_MAX_LABEL,
            value=0,
            tooltip="The painted value to learn; 0 takes the value with the most pixels.",
        )
        self.find_reference_slice = CheckBox(
            text="find reference slice",
            name="find_reference_slice",
            value=True,
            tooltip="Use the one slice that holds the painting.",
        )
        self.reference_slice = SpinBox(
            label="reference slice", name="reference_slice", min=0, max=0, enabled=False
        )
        self.targets = ComboBox(label="segment", name="targets", choices=self._target_choices)
        self.first_slice = SpinBox(label="first slice", name="first_slice", min=0, max=0)
        self.last_slice = SpinBox(label="last slice", name="last_slice", min=0, max=0)
        self.target_layers = Select(
            label="image layers",
            name="target_layers",
            choices=self._same_kind_layers,
            tooltip="Images like the reference image to segment (Ctrl/Shift for several).",
        )
        self.model = ComboBox(
            label="model",
            name="model",
            choices=model_names(),
            value=DEFAULT_MODEL,
            tooltip=f"'{TINY_MODEL}' is a small random SAM for trying the plugin out.",
        )
        self.checkpoint = FileEdit(
            label="checkpoint",
            name="checkpoint",
            mode="r",
            filter="*.pth *.pt",
            nullable=True,
            tooltip="The model's weights file (e.g. sam_vit_b_01ec64.pth).",
        )
        self.device = ComboBox(label="device", name="device", choices=_device_choices())
        self.finetune = CheckBox(
            text="PerSAM-F (fit mask weights to the reference)", name="finetune", value=False
        )
        self.finetune_steps = SpinBox(
            label="PerSAM-F steps",
            name="finetune_steps",
            min=1,
            max=100_000,
            value=PerSAMConfig().finetune_steps,
            tooltip="Training steps of the mask weights (the paper uses 1000).",
        )
        self.target_guided_attention = CheckBox(
            text="target-guided attention", name="target_guided_attention", value=True
        )
        self.semantic_prompt = CheckBox(
            text="target-semantic prompt", name="semantic_prompt", value=True
        )
        self.min_object_size = FloatSpinBox(
            label="min object size (% of image)",
            name="min_object_size",
            min=0.0,
            max=50.0,
            step=0.05,
            value=100 * PerSAMConfig().min_area_fraction,
            tooltip="Smaller pieces of the result are removed; 0 keeps everything.",
        )
        self.run_button = PushButton(text="Run", name="run_button")
        self.cancel_button = PushButton(text="Cancel", name="cancel_button", enabled=False)
        self.status = Label(value="", name="status", label="")
        self.status.native.setWordWrap(True)

        self.extend([
            self.image, self.reference, self.label_value, self.find_reference_slice,
            self.reference_slice, self.targets, self.first_slice, self.last_slice,
            self.target_layers, self.model, self.checkpoint, self.device, self.finetune,
            self.finetune_steps, self.target_guided_attention, self.semantic_prompt,
            self.min_object_size, self.run_button, self.cancel_button, self.status,
        ])  # fmt: skip

        self.image.changed.connect(self._on_image_changed)
        self.targets.changed.connect(self._on_targets_changed)
        self.find_reference_slice.changed.connect(self._on_find_slice_changed)
        self.model.changed.connect(self._on_model_changed)
        self.finetune.changed.connect(self._on_finetune_changed)
        self.run_button.changed.connect(self._on_run_clicked)
        self.cancel_button.changed.connect(self._on_cancel_clicked)
        self._on_image_changed()
        self._on_model_changed()
        self._on_finetune_changed()

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
    def running(self) -> bool:
        return self.worker is not None

    # ------------------------------------------------------------------ slots
    def _on_image_changed(self, *_: object) -> None:
        self._update_for_image()

    def _on_targets_changed(self, *_: object) -> None:
        self._update_visibility()

    def _on_find_slice_changed(self, *_: object) -> None:
        self.reference_slice.enabled = not self.find_reference_slice.value

    def _on_model_changed(self, *_: object) -> None:
        self.checkpoint.visible = self.model.value != TINY_MODEL

    def _on_finetune_changed(self, *_: object) -> None:
        self.finetune_steps.visible = self.finetune.value

    def _on_run_clicked(self, *_: object) -> None:
        self.run()

    def _on_cancel_clicked(self, *_: object) -> None:
        self.cancel()

    def _on_yielded(self, step: Progress) -> None:
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
            job, value = build_job(self._request())
        except ValueError as error:
            show_error(str(error))
            self.status.value = f"Not started: {error}"
            return
        images = {layer.name: layer for layer in self._viewer.layers if isinstance(layer, Image)}
        self._run = RunState(self._viewer, job, value=value, images=images)
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

    def cancel(self) -> None:
        """Stop after the image being segmented now; finished results stay."""
        if self.worker is not None:
            self.status.value = "Cancelling after the current image..."
            self.worker.quit()

    # -------------------------------------------------------------- internals
    def _request(self) -> Request:
        image = self.image.value
        return Request(
            image=image,
            reference=self.reference.value,
            label_value=int(self.label_value.value),
            reference_slice=(
                None if self.find_reference_slice.value else int(self.reference_slice.value)
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
            ),
            finetune=bool(self.finetune.value),
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
        self.find_reference_slice.visible = is_stack
        self.reference_slice.visible = is_stack
        self._update_visibility()

    def _update_visibility(self) -> None:
        mode = self.targets.value
        self.first_slice.visible = mode == SLICE_RANGE
        self.last_slice.visible = mode == SLICE_RANGE
        self.target_layers.visible = mode == IMAGE_LAYERS

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


def _device_choices() -> list[str]:
    # Opening the widget (not listing the plugin) is when torch is first needed.
    from napari_persam.core.devices import available_devices

    return ["auto", *available_devices()]


__all__ = ["PerSAMWidget"]
