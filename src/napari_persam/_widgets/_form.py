"""The PerSAM widget's form: its controls, their layout and visibility, and the Request.

:class:`PerSAMForm` knows what the user chose and shows only what applies; it does
nothing with it. :class:`~._persam_widget.PerSAMWidget` adds what the buttons do.
"""

from __future__ import annotations

from pathlib import Path

import napari
from magicgui.widgets import Container
from napari.layers import Image, Labels
from qtpy.QtCore import QTimer

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

# Between two pieces of a staged build. Not 0: Qt runs zero-delay timers back to back
# in one pass of its event loop, which would leave no turn for repainting between them.
_PIECE_DELAY_MS = 1


class PerSAMForm(Container):
    """The controls of the PerSAM widget, laid out, with their visibility rules.

    The form is narrow enough to sit beside napari's canvas: what every Run needs
    is always shown; the rest is in sections that fold away ("advanced options",
    "concept files"), and the whole form scrolls when the dock is short. To add a
    control, write its function in :mod:`._controls` and place it with one line,
    in the order it is shown, in the ``_build_*`` method of its piece, e.g. in
    the advanced section::

        self.part_range = self.advanced.add(controls.part_range())

    (``self.main.add(...)`` for the always-shown part, ``self.concepts.add(...)``
    for concept files; ``run_row`` holds the buttons next to Run.) Connect its
    signals in ``_connect_form``, which runs once every piece is built.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose layers the pickers offer.
    staged : bool
        Build the form a piece per turn of napari's event loop (as the Plugins menu
        opens it) instead of all at once; see :meth:`finish_building`.
    """

    def __init__(self, napari_viewer: napari.Viewer, *, staged: bool = False) -> None:
        super().__init__(labels=False)
        self._viewer = napari_viewer
        self.margins = (0, 0, 0, 0)
        self.content = Container(labels=False, name="content")
        self.content.native.layout().addStretch(1)  # controls stay together at the top
        self.native.layout().addWidget(controls.scroll_area(self.content))
        # Built in this order; with ``staged``, one piece per turn of the event loop.
        self._pending_builds = [
            self._build_main,
            self._build_advanced,
            self._build_advanced_engine,
            self._build_concepts,
            self._connect_form,
        ]
        self._building = False
        if staged:
            QTimer.singleShot(_PIECE_DELAY_MS, self._build_next)
        else:
            self.finish_building()

    # ------------------------------------------------------------------ building
    # Opening the widget from napari's menu builds it piece by piece (``staged``), so
    # that napari's window is never frozen for long: the whole form takes about 0.3 s
    # of the GUI thread to build, each piece well under 0.1 s. Whatever asks for a
    # control before it exists (a script, a click on Run) gets the rest built at once.

    @property
    def built(self) -> bool:
        """Whether every control exists (always, unless opened ``staged`` moments ago)."""
        return not self._pending_builds

    def finish_building(self) -> None:
        """Build what is not built yet, now."""
        while self._pending_builds and not self._building:
            self._build_one()

    def _build_next(self) -> None:
        try:
            self.native.objectName()
        except RuntimeError:  # the dock was closed meanwhile: Qt deleted the widget
            self._pending_builds.clear()
            return
        self._build_one()
        if self._pending_builds:
            QTimer.singleShot(_PIECE_DELAY_MS, self._build_next)

    def _build_one(self) -> None:
        if not self._pending_builds or self._building:
            return
        self._building = True
        try:
            self._pending_builds.pop(0)()
        finally:
            self._building = False

    def __getattr__(self, name: str):
        pending = self.__dict__.get("_pending_builds")
        if pending and not self.__dict__.get("_building") and not name.startswith("__"):
            self.finish_building()
            return getattr(self, name)
        return super().__getattr__(name)

    def _build_main(self) -> None:
        # Always shown: what a Run needs.
        self.main = controls.Group(name="main")
        self.image = self.main.add(controls.image())
        self.reference = self.main.add(controls.reference())
        self.negatives = self.main.add(controls.negatives())
        self.label_value = self.main.add(controls.label_value())
        self.find_mode = self.main.add(controls.find_mode())
        self.targets = self.main.add(controls.targets(self._target_choices))
        self.first_slice = self.main.add(controls.first_slice())
        self.last_slice = self.main.add(controls.last_slice())
        self.target_layers = self.main.add(controls.target_layers(self._same_kind_layers))
        self.model = self.main.add(controls.model())
        self.tiling_info = self.main.add(controls.tiling_info())  # what a Run will cost

        self.run_button = controls.run_button()
        self.cancel_button = controls.cancel_button()
        self.run_row = controls.row(self.run_button, self.cancel_button, name="run_row")
        self.status = controls.status()
        self.content.extend([self.main, self.run_row, self.status])

    def _build_advanced(self) -> None:
        # Folded away until asked for. One line per control: create and place it.
        self.advanced = controls.Section("advanced options", name="advanced")
        self.learn_all_values = self.advanced.add(controls.learn_all_values())
        self.all_painted_slices = self.advanced.add(controls.all_painted_slices())
        self.reference_slice = self.advanced.add(controls.reference_slice())
        self.more_references = self.advanced.add(controls.more_references(self._reference_pairs))
        self.add_reference_button = controls.add_reference_button()
        self.extra_references_count = controls.extra_references_count()
        self.clear_references_button = controls.clear_references_button()
        self.advanced.add(
            controls.row(
                self.add_reference_button,
                self.extra_references_count,
                self.clear_references_button,
                name="extra_references",
            )
        )
        self.auto_threshold = self.advanced.add(controls.auto_threshold())
        self.instance_threshold = self.advanced.add(controls.instance_threshold())
        self.max_instances = self.advanced.add(controls.max_instances())
        self.stack_mode = self.advanced.add(controls.stack_mode())
        self.checkpoint = self.advanced.add(controls.checkpoint())
        self.device = self.advanced.add(controls.device())
        self.cache_on_disk = self.advanced.add(controls.cache_on_disk())
        self.content.insert(1, self.advanced)

    def _build_advanced_engine(self) -> None:
        # The rest of the advanced options: how the engine learns, prompts and tiles.
        self.finetune = self.advanced.add(controls.finetune())
        self.finetune_steps = self.advanced.add(controls.finetune_steps())
        self.target_guided_attention = self.advanced.add(controls.target_guided_attention())
        self.semantic_prompt = self.advanced.add(controls.semantic_prompt())
        self.min_object_size = self.advanced.add(controls.min_object_size())
        # Part-aware prompting (P²SAM).
        self.prompt_mode = self.advanced.add(controls.prompt_mode())
        self.min_parts = self.advanced.add(controls.min_parts())
        self.max_parts = self.advanced.add(controls.max_parts())
        self.max_negative_parts = self.advanced.add(controls.max_negative_parts())
        # Small objects in large images: the scale and the tiles.
        self.tiling = self.advanced.add(controls.tiling())
        self.tile_side = self.advanced.add(controls.tile_side())

    def _build_concepts(self) -> None:
        self.concepts = controls.Section("concept files", name="concepts")
        self.concept_file = self.concepts.add(controls.concept_file())
        self.export_path = self.concepts.add(controls.export_path())
        self.export_button = self.concepts.add(controls.export_button())
        self.content.insert(2, self.concepts)

    def _connect_form(self) -> None:
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
        self.prompt_mode.changed.connect(self._on_prompt_mode_changed)
        self.min_parts.changed.connect(self._on_min_parts_changed)
        self.max_parts.changed.connect(self._on_max_parts_changed)
        self._on_prompt_mode_changed()
        self.tiling.changed.connect(self._on_tiling_changed)
        self._on_tiling_changed()
        self._on_image_changed()
        self._on_model_changed()
        self._on_finetune_changed()
        self._on_find_mode_changed()
        self.reset_choices()

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

    def _on_prompt_mode_changed(self, *_: object) -> None:
        part_aware = self.prompt_mode.value == "part-aware"
        for widget in (self.min_parts, self.max_parts, self.max_negative_parts):
            widget.visible = part_aware

    # The range stays a range: moving one end past the other takes the other along.
    def _on_min_parts_changed(self, *_: object) -> None:
        if self.min_parts.value > self.max_parts.value:
            self.max_parts.value = self.min_parts.value

    def _on_max_parts_changed(self, *_: object) -> None:
        if self.max_parts.value < self.min_parts.value:
            self.min_parts.value = self.max_parts.value

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
        for widget in (self.reference, self.negatives, self.learn_all_values):
            widget.enabled = not loaded
        self._on_all_values_changed()
        if loaded:
            self.status.value = (
                "Run segments with the concept file (the reference layer is not used); clear "
                "'concept file' to learn again."
            )
        else:
            self.status.value = "Run learns from the reference layer."

    def _refresh_devices(self, devices: list[str] | None) -> None:
        """Show ``devices`` (listed by a Run's worker, with torch) instead of the guess."""
        if devices is None:
            return
        choices = ["auto", *devices]
        if list(self.device.choices) != choices:
            current = self.device.value
            self.device.choices = choices
            if current in choices:
                self.device.value = current

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

    def _request(
        self, *, extra_shots: list | tuple = (), extra_negatives: list | tuple = ()
    ) -> Request:
        image = self.image.value
        return Request(
            image=image,
            reference=self.reference.value,
            negatives=self.negatives.value,
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
                prompt_mode=self.prompt_mode.value,
                min_parts=int(self.min_parts.value),
                max_parts=int(self.max_parts.value),
                max_negative_parts=int(self.max_negative_parts.value),
            ),
            finetune=bool(self.finetune.value),
            learn_all_values=bool(self.learn_all_values.value),
            instances=self.find_mode.value == controls.EVERY_INSTANCE,
            more_references=list(self.more_references.value or []),
            extra_shots=list(extra_shots),
            extra_negatives=list(extra_negatives),
            concept_path=self._concept_path(),
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
        if not self.built:
            return  # the last piece built refreshes them
        super().reset_choices()
        self.content.reset_choices()
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
