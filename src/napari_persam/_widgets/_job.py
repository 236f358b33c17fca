"""From the widget's choices to a :class:`~._runner.Job`, checked on the main thread.

Everything the user could get wrong is caught here, before any thread or model
starts, with a message that says what to change. Only napari layer objects are
used (no Qt), so these rules are tested without a window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from napari.layers import Image, Labels

from napari_persam._widgets._layers import spatial_shape
from napari_persam._widgets._reference import most_painted_label, reference_mask
from napari_persam._widgets._runner import Job, ModelChoice, Target, slice_targets
from napari_persam.core.config import PerSAMConfig

THIS_IMAGE = "this image"
THIS_SLICE = "this slice"
ALL_SLICES = "all slices"
SLICE_RANGE = "slice range"
IMAGE_LAYERS = "chosen image layers"

#: Target choices offered for a 2D image and for a (Z, Y, X) stack.
TARGETS_2D = (THIS_IMAGE, IMAGE_LAYERS)
TARGETS_3D = (THIS_SLICE, ALL_SLICES, SLICE_RANGE, IMAGE_LAYERS)


@dataclass(frozen=True)
class Request:
    """What the user chose in the widget, as plain values.

    Attributes
    ----------
    image : Image layer or None
    reference : Labels layer or None
    label_value : int
        0 means "the value with the most painted pixels".
    reference_slice : int or None
        ``None`` finds the painted slice.
    target_mode : str
        One of :data:`TARGETS_2D` or :data:`TARGETS_3D`.
    current_slice : int
        The slice the viewer shows (for "this slice").
    slice_range : (int, int)
        First and last slice, inclusive (for "slice range").
    target_layers : sequence of Image layers
        For "chosen image layers".
    model : ModelChoice
    config : PerSAMConfig
    finetune : bool
    """

    image: Image | None
    reference: Labels | None
    label_value: int
    reference_slice: int | None
    target_mode: str
    current_slice: int
    slice_range: tuple[int, int]
    target_layers: Sequence[Image]
    model: ModelChoice
    config: PerSAMConfig
    finetune: bool


def image_kind(image: Image) -> tuple[bool, int]:
    """(is RGB, number of spatial dimensions): targets must match the reference's."""
    return bool(image.rgb), len(spatial_shape(image))


def check_image(image: Image | None) -> Image:
    """``image`` if the plugin can segment it; a ValueError saying why not otherwise."""
    if image is None:
        raise ValueError("Choose an image layer: open an image first (File > Open).")
    if image.multiscale:
        raise ValueError(
            f"Image {image.name!r} is multiscale (a pyramid); PerSAM needs a single-scale "
            "image. Open one resolution level as its own layer."
        )
    ndim = len(spatial_shape(image))
    if ndim not in (2, 3):
        raise ValueError(
            f"Image {image.name!r} has {ndim} spatial dimensions (shape {image.data.shape}); "
            "PerSAM takes a 2D image (Y, X) or a stack (Z, Y, X), RGB or grey. Split the "
            "other axes into separate layers first."
        )
    return image


def build_job(request: Request) -> tuple[Job, int]:
    """The job to run and the label value its results are written with.

    Raises
    ------
    ValueError
        For a missing or unsuitable layer, an empty or ambiguous reference, or
        impossible targets; the message says what to do.
    """
    image = check_image(request.image)
    reference = request.reference
    if reference is None:
        raise ValueError(
            "Choose a reference Labels layer: add one (Layers > New Labels Layer) and "
            "paint one object on the image."
        )
    shape = spatial_shape(image)
    if tuple(reference.data.shape) != shape:
        raise ValueError(
            f"The reference layer {reference.name!r} has shape {tuple(reference.data.shape)} "
            f"but image {image.name!r} is {shape}; paint on a Labels layer made for this "
            "image (select the image, then Layers > New Labels Layer)."
        )
    labels = np.asarray(reference.data)
    value = request.label_value or most_painted_label(labels)
    slice_index = request.reference_slice if len(shape) == 3 else None
    mask, used_slice = reference_mask(labels, value=value, slice_index=slice_index)
    # Copies: the user may paint or edit the image while the worker runs.
    source = image.data if used_slice is None else image.data[used_slice]
    reference_image = np.array(source)
    job = Job(
        model=request.model,
        config=request.config,
        finetune=request.finetune,
        reference_image=reference_image,
        reference_mask=mask,
        targets=_targets(request, image),
    )
    return job, int(value)


def _targets(request: Request, image: Image) -> tuple[Target, ...]:
    mode = request.target_mode
    depth = spatial_shape(image)[0]
    if mode == IMAGE_LAYERS:
        layers = list(request.target_layers)
        if not layers:
            raise ValueError(
                "No image layers chosen: select one or more in 'image layers' "
                "(hold Ctrl or Shift to choose several)."
            )
        kind = image_kind(image)
        targets: list[Target] = []
        for layer in layers:
            check_image(layer)
            if image_kind(layer) != kind:
                raise ValueError(
                    f"Layer {layer.name!r} is not the same kind of image as {image.name!r} "
                    "(RGB or grey, 2D or stack); choose layers like the reference image."
                )
            slices = None if kind[1] == 2 else range(spatial_shape(layer)[0])
            targets.extend(slice_targets(layer.data, output=layer.name, slices=slices))
        return tuple(targets)
    if len(spatial_shape(image)) == 2:
        if mode != THIS_IMAGE:
            raise ValueError(f"Target {mode!r} needs a stack; {image.name!r} is a 2D image.")
        return slice_targets(image.data, output=image.name, slices=None)
    if mode == THIS_SLICE:
        slices = [min(max(request.current_slice, 0), depth - 1)]
    elif mode == ALL_SLICES:
        slices = list(range(depth))
    elif mode == SLICE_RANGE:
        first, last = request.slice_range
        if not 0 <= first <= last < depth:
            raise ValueError(
                f"Slice range {first} to {last} is not inside the stack (0 to {depth - 1}, "
                "first <= last); adjust 'first slice' and 'last slice'."
            )
        slices = list(range(first, last + 1))
    else:
        raise ValueError(f"Target {mode!r} does not apply to a stack; choose one of {TARGETS_3D}.")
    return slice_targets(image.data, output=image.name, slices=slices)
