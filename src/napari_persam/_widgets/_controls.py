"""The widget's controls: labels, ranges, defaults and tooltips, one function each.

Kept apart from :mod:`._persam_widget`, which holds what the controls do, and from
:mod:`._form`, which places them. Labels and texts are short so the dock stays
narrow beside the canvas; the details are in tooltips. :class:`Section` is a part
of the form the user can fold away (see :mod:`._layout`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    FileEdit,
    FloatSpinBox,
    Label,
    PushButton,
    Select,
    SpinBox,
    create_widget,
)
from napari.layers import Image, Labels
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QSizePolicy

from napari_persam._widgets._layout import Group, Section, StatusLabel, compact, row, scroll_area
from napari_persam.core.config import PROMPT_MODES, STACK_MODES, PerSAMConfig
from napari_persam.core.devices import likely_devices
from napari_persam.core.models import DEFAULT_MODEL, TINY_MODEL, model_names

MAX_LABEL = 2**31 - 1
ONE_OBJECT = "one object"
EVERY_INSTANCE = "every instance"
FIND_MODES = (ONE_OBJECT, EVERY_INSTANCE)


def image() -> Any:
    return compact(create_widget(annotation=Image, label="image", name="image"))


def reference() -> Any:
    return compact(create_widget(annotation=Labels, label="reference", name="reference"))


def negatives() -> Any:
    widget = create_widget(
        annotation=Labels | None, label="negatives", name="negatives", options={"nullable": True}
    )
    widget.tooltip = (
        "Optional: a Labels layer on the reference image where you painted what is NOT the "
        "object (any value; on the painted slice(s) of a stack). Each painted region becomes "
        "a negative example; leave empty for none. A concept file keeps its own negatives."
    )
    return widget


def label_value() -> SpinBox:
    return SpinBox(
        label="label value",
        name="label_value",
        min=0,
        max=MAX_LABEL,
        value=0,
        tooltip="The painted value to learn; 0 (the default) takes the value with the most pixels.",
    )


def learn_all_values() -> CheckBox:
    return CheckBox(
        text="learn every painted value",
        name="learn_all_values",
        value=False,
        tooltip="Each painted label value is its own kind of object; results keep the values.",
    )


def all_painted_slices() -> CheckBox:
    return CheckBox(
        text="learn from every painted slice",
        name="all_painted_slices",
        value=True,
        tooltip="Every slice with painting is a reference (few-shot). Untick to "
        "learn from one slice only.",
    )


def reference_slice() -> SpinBox:
    return SpinBox(label="reference slice", name="reference_slice", min=0, max=0, enabled=False)


def more_references(choices: Callable[..., Any]) -> Select:
    select = Select(
        label="more references",
        name="more_references",
        choices=choices,
        tooltip="Other painted Labels layers (on their image) to learn from too.",
    )
    select.native.setMaximumHeight(90)  # a rare need: keep it small
    return compact(select)


def add_reference_button() -> PushButton:
    button = PushButton(text="add result slice", name="add_reference_button")
    button.tooltip = (
        "Add the result as a reference: copy the slice shown of '<image> PerSAM' "
        "(correct it first by painting on "
        "it) and its image into this widget's extra references, used by the next "
        "Run. Objects found there that you deleted become negative examples ('not "
        "this'). Your layers are not changed."
    )
    return button


def extra_references_count() -> Label:
    return Label(value="", name="extra_references_count")


def clear_references_button() -> PushButton:
    return PushButton(text="clear", name="clear_references_button")


def find_mode() -> ComboBox:
    return compact(
        ComboBox(
            label="find",
            name="find_mode",
            choices=FIND_MODES,
            value=ONE_OBJECT,
            tooltip="One object per label value, or every instance (an id per object).",
        )
    )


def auto_threshold() -> CheckBox:
    return CheckBox(
        text="instance threshold from reference",
        name="auto_threshold",
        value=True,
        tooltip="Every instance: take the similarity an object needs from the reference "
        "(halfway between its object and its background); untick to set it yourself.",
    )


def instance_threshold() -> FloatSpinBox:
    return FloatSpinBox(
        label="instance threshold",
        name="instance_threshold",
        min=-1.0,
        max=1.0,
        step=0.05,
        value=0.5,
        enabled=False,
        tooltip="Similarity a place needs to be tried as an instance (lower finds more).",
    )


def max_instances() -> SpinBox:
    return SpinBox(
        label="max instances",
        name="max_instances",
        min=1,
        max=10_000,
        value=PerSAMConfig().max_instances,
    )


def stack_mode() -> ComboBox:
    return compact(
        ComboBox(
            label="stack mode",
            name="stack_mode",
            choices=STACK_MODES,
            value=PerSAMConfig().stack_mode,
            tooltip="propagate: each slice is also prompted with its neighbour's result, "
            "outward from the reference slice; independent: each slice on its own.",
        )
    )


def targets(choices: Callable[..., Any]) -> ComboBox:
    return compact(ComboBox(label="segment", name="targets", choices=choices))


def first_slice() -> SpinBox:
    return SpinBox(label="first slice", name="first_slice", min=0, max=0)


def last_slice() -> SpinBox:
    return SpinBox(label="last slice", name="last_slice", min=0, max=0)


def target_layers(choices: Callable[..., Any]) -> Select:
    return compact(
        Select(
            label="image layers",
            name="target_layers",
            choices=choices,
            tooltip="Images like the reference image to segment (Ctrl/Shift for several).",
        )
    )


def model() -> ComboBox:
    return compact(
        ComboBox(
            label="model",
            name="model",
            choices=model_names(),
            value=DEFAULT_MODEL,
            tooltip=f"'{TINY_MODEL}' is a small random SAM for trying the plugin out.",
        )
    )


def checkpoint() -> FileEdit:
    return compact(
        FileEdit(
            label="checkpoint",
            name="checkpoint",
            mode="r",
            filter="*.pth *.pt",
            nullable=True,
            tooltip="Leave empty to use the published weights: downloaded once, checked, "
            "and kept in the cache folder. Or choose your own weights file.",
        )
    )


def cache_on_disk() -> CheckBox:
    return CheckBox(
        text="cache embeddings on disk",
        name="cache_on_disk",
        value=True,
        tooltip="Keep each image's SAM encoding in the cache folder ($NAPARI_PERSAM_CACHE or "
        "the user cache), shared with the command line and later sessions, so an image is "
        "encoded once.",
    )


def concept_file() -> FileEdit:
    return compact(
        FileEdit(
            label="concept file",
            name="concept_file",
            mode="r",
            filter="*.npz",
            nullable=True,
            tooltip="A concept saved by 'export concept' or `napari-persam learn`: Run "
            "segments with it instead of learning from the reference layer (which is then "
            "not needed). Leave empty to learn from the reference.",
        )
    )


def export_path() -> FileEdit:
    return compact(
        FileEdit(
            label="export to",
            name="export_path",
            mode="w",
            filter="*.npz",
            nullable=True,
            tooltip="Concept file (.npz) to write with 'export concept'.",
        )
    )


def export_button() -> PushButton:
    button = PushButton(text="export concept", name="export_button", enabled=False)
    button.tooltip = (
        "Save the concept of the last Run (its label values, model and options) to "
        "'export to', for `napari-persam segment --concept` or another session."
    )
    return button


def device() -> ComboBox:
    return compact(
        ComboBox(
            label="device",
            name="device",
            choices=device_choices(),
            tooltip="auto: CUDA, then Apple MPS, then the CPU. The list is checked again "
            "once PyTorch is loaded (by the first Run).",
        )
    )


def finetune() -> CheckBox:
    return CheckBox(
        text="PerSAM-F (fit mask weights)",
        name="finetune",
        value=False,
        tooltip="Fit the weights of SAM's three masks to the reference (PerSAM-F).",
    )


def finetune_steps() -> SpinBox:
    return SpinBox(
        label="PerSAM-F steps",
        name="finetune_steps",
        min=1,
        max=100_000,
        value=PerSAMConfig().finetune_steps,
        tooltip="Training steps of the mask weights (the paper uses 1000).",
    )


def target_guided_attention() -> CheckBox:
    return CheckBox(text="target-guided attention", name="target_guided_attention", value=True)


def semantic_prompt() -> CheckBox:
    return CheckBox(text="target-semantic prompt", name="semantic_prompt", value=True)


#: The prompt modes as the widget names them.
PROMPT_CHOICES = tuple(("PerSAM" if mode == "persam" else mode, mode) for mode in PROMPT_MODES)


def prompt_mode() -> ComboBox:
    return ComboBox(
        label="prompts",
        name="prompt_mode",
        choices=PROMPT_CHOICES,
        value=PerSAMConfig().prompt_mode,
        tooltip="part-aware (P²SAM): a positive point on each part of the object, keeping the "
        "mask that looks most like the reference; also drops instances that do not. PerSAM: "
        "one positive and one negative point, as in the PerSAM paper.",
    )


def min_parts() -> SpinBox:
    return SpinBox(
        label="parts from",
        name="min_parts",
        min=1,
        max=16,
        value=PerSAMConfig().min_parts,
        tooltip="Part-aware: the fewest parts tried (1 is PerSAM's single point).",
    )


def max_parts() -> SpinBox:
    return SpinBox(
        label="parts to",
        name="max_parts",
        min=1,
        max=16,
        value=PerSAMConfig().max_parts,
        tooltip="Part-aware: the most parts tried; each count costs a few decoder calls.",
    )


def max_negative_parts() -> SpinBox:
    return SpinBox(
        label="background parts",
        name="max_negative_parts",
        min=0,
        max=8,
        value=PerSAMConfig().max_negative_parts,
        tooltip="Part-aware: also try negative points on up to this many kinds of background "
        "(0: PerSAM's negative point only).",
    )


def min_object_size() -> FloatSpinBox:
    return FloatSpinBox(
        label="min object size (%)",
        name="min_object_size",
        min=0.0,
        max=50.0,
        step=0.05,
        value=100 * PerSAMConfig().min_area_fraction,
        tooltip="Pieces of the result smaller than this % of the image are removed; 0 keeps "
        "everything.",
    )


AUTO_TILING = "auto"
NO_TILING = "off"
TILE_SIDE = "tile size"
TILINGS = (AUTO_TILING, NO_TILING, TILE_SIDE)


def tiling() -> ComboBox:
    return ComboBox(
        label="tiling",
        name="tiling",
        choices=TILINGS,
        value=AUTO_TILING,
        tooltip="Small objects in large images: 'auto' learns the scale from your painting "
        "and works in tiles where the object would be too small for SAM at the whole-image "
        "scale; 'off' always segments the whole image at once; 'tile size' sets the tile "
        "side yourself.",
    )


def tile_side() -> SpinBox:
    return SpinBox(
        label="tile size (px)",
        name="tile_side",
        min=64,
        max=65536,
        step=64,
        value=1024,
        tooltip="Side of a tile in image pixels (one SAM input, 64 x 64 feature cells).",
    )


def tiling_info() -> Label:
    label = Label(value="learned from the painting at Run", name="tiling_info", label="scale")
    label.native.setWordWrap(True)
    return label


def run_button() -> PushButton:
    return PushButton(text="Run", name="run_button")


def cancel_button() -> PushButton:
    return PushButton(text="Cancel", name="cancel_button", enabled=False)


def status() -> Label:
    """The status line: wraps, never widens the dock; the full text is also its tooltip."""
    label = StatusLabel(value="", name="status", label="")
    native = label.native
    native.setWordWrap(True)
    # Ignored: the label takes the width the dock gives it and never asks for more, so
    # a long message (a path, a URL) cannot push the canvas out of the window.
    native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    native.setMinimumWidth(1)
    native.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


def device_choices() -> list[str]:
    """ "auto" and the devices that seem usable, without importing torch (see likely_devices)."""
    return ["auto", *likely_devices()]


__all__ = ["Group", "Section", "compact", "row", "scroll_area"]
