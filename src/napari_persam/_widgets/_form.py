"""The PerSAM widget's form: its controls, their layout and visibility, and the Request.

:class:`PerSAMForm` knows what the user chose and shows only what applies; it does
nothing with it. :class:`~._persam_widget.PerSAMWidget` adds what the buttons do.
"""

from __future__ import annotations

from pathlib import Path

import napari
from magicgui.widgets import Container
from napari.layers import Image, Labels

from napari_persam._widgets import _controls as controls
from napari_persam._widgets._job import (
    IMAGE_LAYERS,
    SLICE_RANGE,
    TARGETS_2D,
    TARGETS_3D,
    Request,
    image_kind,
)
from napari_persam._widgets._layers import spatial_shape
from napari_persam._widgets._models import ModelChoice
from napari_persam._widgets._more_references import reference_pairs
from napari_persam.core.config import PerSAMConfig
from napari_persam.core.models.registry import TINY_MODEL


class PerSAMForm(Container):
    """The controls of the PerSAM widget, laid out, with their visibility rules.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose layers the pickers offer.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self._viewer = napari_viewer
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
        self.tiling = controls.tiling()
        self.tile_side = controls.tile_side()
        self.tiling_info = controls.tiling_info()
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
            self.tiling, self.tile_side, self.tiling_info,
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
        self.model.changed.connect(self._on_model_changed)
        self.finetune.changed.connect(self._on_finetune_changed)
        self.concept_file.changed.connect(self._on_concept_file_changed)
        self.tiling.changed.connect(self._on_tiling_changed)
        self._on_tiling_changed()
        self._on_image_changed()
        self._on_model_changed()
        self._on_finetune_changed()
        self._on_find_mode_changed()

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

    def _on_tiling_changed(self, *_: object) -> None:
        self.tile_side.visible = self.tiling.value == controls.TILE_SIDE

    def _tiling_choice(self) -> str | int:
        if self.tiling.value == controls.TILE_SIDE:
            return int(self.tile_side.value)
        return str(self.tiling.value)

    def _concept_path(self) -> Path | None:
        path = self.concept_file.value
        if not path or str(path) in ("", "."):
            return None
        return Path(path)

    def _request(self, *, concept: object | None = None, extra_shots: list | tuple = ()) -> Request:
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
                tiling=self._tiling_choice(),
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
            extra_shots=list(extra_shots),
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
