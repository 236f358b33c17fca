"""From the widget's choices to a :class:`~._runner.Job`, checked on the main thread.

Everything the user could get wrong is caught here, before any thread or model
starts, with a message that says what to change. Only napari layer objects are
used (no Qt), so these rules are tested without a window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels

from napari_persam._widgets._layers import METADATA_KEY, spatial_shape
from napari_persam._widgets._reference import (
    most_painted_label,
    painted_values,
    reference_negatives,
    reference_shots,
)
from napari_persam.core.config import PerSAMConfig

if TYPE_CHECKING:  # pragma: no cover
    from napari_persam._widgets._runner import Job, ModelChoice, Target

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
    learn_all_values : bool
        Learn every painted value as its own class (``label_value`` is ignored).
    reference_slice : int or None
        Learn from this slice of a stack only; ``None`` uses every painted slice.
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
    instances : bool
        Every instance instead of one object per value.
    more_references : sequence of (Image, Labels)
        Other painted image/labels pairs to learn from too (every painted slice).
    extra_shots : sequence of (image, labels)
        References kept by the widget ("add this slice as a reference"): an image
        (Y, X[, C]) and its (Y, X) int label image.
    concept_file : ConceptFile or None
        Segment with this file's concepts; the references are then not used.
    concept_path : path or None
        Segment with the concept file there, read by the worker (the widget's
        way, so nothing is read on napari's main thread).
    concept_source : str
        The concept file's path, for messages.
    cache_on_disk : bool
        Keep embeddings in the default disk cache folder (shared with the command
        line) too, not only in memory.
    negatives : Labels layer or None
        Where the user painted "not this" on the reference image (read on the
        reference's painted slices).
    extra_negatives : sequence of (Y, X) bool or None
        For each of ``extra_shots``: the objects the user deleted from that result
        slice before adding it, or None.
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
    learn_all_values: bool = False
    instances: bool = False
    more_references: Sequence[tuple[Image, Labels]] = ()
    extra_shots: Sequence[tuple[np.ndarray, np.ndarray]] = ()
    concept_file: Any = None
    concept_path: Any = None
    concept_source: str = ""
    cache_on_disk: bool = False
    negatives: Labels | None = None
    extra_negatives: Sequence[np.ndarray | None] = ()


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


def build_job(request: Request) -> Job:
    """The job to run, with copies of every reference it learns from.

    Raises
    ------
    ValueError
        For a missing or unsuitable layer, an empty reference, or impossible
        targets; the message says what to do.
    """
    from napari_persam._widgets._runner import Job  # with the engine's types: at Run time

    image = check_image(request.image)
    if request.concept_file is not None or request.concept_path is not None:
        return _concept_file_job(request, image)
    reference = _check_labels(request.reference, image)
    labels = np.asarray(reference.data)
    if request.learn_all_values:
        values = painted_values(labels)
        if not values:
            most_painted_label(labels)  # raises the "empty: paint" message
    else:
        values = [request.label_value or most_painted_label(labels)]
    slice_index = request.reference_slice if len(spatial_shape(image)) == 3 else None
    shots, main_slice = reference_shots(image.data, labels, values=values, slice_index=slice_index)
    negatives: list[np.ndarray | None] = [None] * len(shots)
    if request.negatives is not None:
        marked = np.asarray(_check_negatives(request.negatives, reference).data)
        negatives = reference_negatives(marked, labels, values=values, slice_index=slice_index)
    for other_image, other_labels in request.more_references:
        if other_image is image and other_labels is reference:
            continue
        more = _pair_shots(other_image, other_labels, image, values)
        shots.extend(more)
        negatives.extend([None] * len(more))
    extra_negatives = list(request.extra_negatives) or [None] * len(request.extra_shots)
    for (extra_image, extra_labels), deleted in zip(request.extra_shots, extra_negatives):
        kept = np.where(np.isin(extra_labels, values), extra_labels, 0).astype(np.int32)
        if kept.any():
            shots.append((extra_image, kept))
            negatives.append(deleted)
    return Job(
        model=request.model,
        config=request.config,
        finetune=request.finetune,
        shots=tuple(shots),
        values=tuple(int(v) for v in values),
        targets=_targets(request, image),
        instances=request.instances,
        reference_index=main_slice,
        cache_on_disk=request.cache_on_disk,
        negatives=tuple(negatives) if any(n is not None for n in negatives) else (),
    )


def _concept_file_job(request: Request, image: Image) -> Job:
    """A job segmenting with a concept file: no reference layer is read."""
    from napari_persam._widgets._runner import Job

    if request.finetune:
        raise ValueError(
            "PerSAM-F cannot train a concept loaded from a file (the file holds no reference "
            "images). Untick PerSAM-F (a fine-tuned concept file keeps its mask weights), or "
            "clear 'concept file' to learn from the reference layer."
        )
    content = request.concept_file  # None: the worker reads request.concept_path
    is_stack = len(spatial_shape(image)) == 3
    start = min(max(request.current_slice, 0), spatial_shape(image)[0] - 1) if is_stack else None
    return Job(
        model=request.model,
        config=request.config,
        finetune=False,
        shots=(),
        values=() if content is None else tuple(int(value) for value in content.label_values),
        targets=_targets(request, image),
        instances=request.instances,
        # Propagation starts where the user looks: there is no painted slice.
        reference_index=start,
        concept_file=content,
        concept_path=None if request.concept_path is None else str(request.concept_path),
        concept_source=request.concept_source,
        cache_on_disk=request.cache_on_disk,
    )


def _check_labels(reference: Labels | None, image: Image) -> Labels:
    if reference is None:
        raise ValueError(
            "Choose a reference Labels layer: add one (Layers > New Labels Layer) and "
            "paint one object on the image."
        )
    if METADATA_KEY in reference.metadata:
        # Runs write into the plugin's own layers: learning from one would overwrite
        # the user's corrections on the next Run.
        raise ValueError(
            f"{reference.name!r} is a result of this plugin and is rewritten by every Run; "
            "use 'add result slice' (advanced options) for a corrected result, or duplicate the "
            "layer (Layers > Duplicate Layer) and choose the copy."
        )
    shape = spatial_shape(image)
    if tuple(reference.data.shape) != shape:
        raise ValueError(
            f"The reference layer {reference.name!r} has shape {tuple(reference.data.shape)} "
            f"but image {image.name!r} is {shape}; paint on a Labels layer made for this "
            "image (select the image, then Layers > New Labels Layer)."
        )
    return reference


def _check_negatives(negatives: Labels, reference: Labels) -> Labels:
    if negatives is reference:
        raise ValueError(
            f"{negatives.name!r} is the reference layer; paint what is not the object on "
            "another Labels layer (Layers > New Labels Layer) and choose it as 'negatives', "
            "or choose no negatives."
        )
    if METADATA_KEY in negatives.metadata:
        raise ValueError(
            f"{negatives.name!r} is a result of this plugin; paint the negatives on a Labels "
            "layer of your own, or use 'add result slice as reference' after deleting the "
            "wrong objects from the result."
        )
    if tuple(negatives.data.shape) != tuple(reference.data.shape):
        raise ValueError(
            f"The negatives layer {negatives.name!r} has shape {tuple(negatives.data.shape)} "
            f"but the reference layer {reference.name!r} is {tuple(reference.data.shape)}; "
            "paint the negatives on a Labels layer made for the reference image."
        )
    return negatives


def _pair_shots(
    image: Image, labels: Labels, main: Image, values: Sequence[int]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shots from another painted image/labels pair (every painted slice)."""
    check_image(image)
    if image_kind(image)[0] != image_kind(main)[0]:
        raise ValueError(
            f"Reference image {image.name!r} is not {'RGB' if main.rgb else 'grey'} like "
            f"{main.name!r}; choose references of the same kind."
        )
    _check_labels(labels, image)
    array = np.asarray(labels.data)
    present = [v for v in values if v in painted_values(array)]
    if not present:
        raise ValueError(
            f"The extra reference {labels.name!r} holds none of the label value(s) "
            f"{', '.join(map(str, values))}; paint them there or remove it from "
            "'more references'."
        )
    shots, _ = reference_shots(image.data, array, values=present)
    return shots


def _targets(request: Request, image: Image) -> tuple[Target, ...]:
    from napari_persam._widgets._runner import slice_targets

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
