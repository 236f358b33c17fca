"""References beyond the painted layer: other painted pairs, and corrected results.

Few-shot learning takes every painted slice of the reference layer, plus what the
user adds here: other painted Labels layers (each on the image it fits) and
result slices they corrected ("add result slice"). Result slices are
copied into the widget; no layer is ever changed.

What a Run predicted is remembered per slice (:class:`PredictedSlice`), so the
objects the user deleted from a result before adding it are known: they were
found and are not the object, and become negative examples ("not this").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import napari
import numpy as np
from napari.layers import Image, Labels, Layer
from scipy import ndimage

from napari_persam._widgets._layers import METADATA_KEY, output_labels, spatial_shape

#: ``layer.metadata`` key of "<image> PerSAM": what its values mean
#: ({"instances": bool, "values": [int, ...]}), written with each result.
CONTENT_KEY = "napari_persam_content"


def reference_pairs(
    layers: Iterable[Layer], *, image: Image | None, reference: Labels | None
) -> list[tuple[str, tuple[Image, Labels]]]:
    """Choices for "more references": ("<labels> on <image>", (image, labels)).

    Every Labels layer other than ``reference`` and this plugin's outputs, on each
    image layer of the same kind as ``image`` (RGB or grey) with its shape.
    """
    if image is None:
        return []
    layers = list(layers)
    images = [
        layer
        for layer in layers
        if isinstance(layer, Image) and not layer.multiscale and layer.rgb == image.rgb
    ]
    pairs = []
    for labels in layers:
        if not isinstance(labels, Labels) or labels is reference:
            continue
        if METADATA_KEY in labels.metadata:
            continue  # this plugin's outputs: added with the button instead
        for candidate in images:
            if spatial_shape(candidate) == tuple(labels.data.shape):
                pairs.append((f"{labels.name} on {candidate.name}", (candidate, labels)))
    return pairs


def result_shot(
    viewer: napari.Viewer, image: Image, *, slice_index: int | None
) -> tuple[tuple[np.ndarray, np.ndarray], str]:
    """A copy of one slice of ``image``'s result, as a reference.

    Parameters
    ----------
    viewer : napari.Viewer
    image : Image layer
        The image whose "<image> PerSAM" layer holds the (corrected) result.
    slice_index : int or None
        The stack slice to take; ``None`` for a 2D image.

    Returns
    -------
    shot : (image, labels)
        The image slice (Y, X[, C]) and an int32 (Y, X) label image with label
        values: one-object results are used as they are; instance ids become the
        learned value (one value) or the value in "<image> classes" (several;
        pixels painted with new ids there are left out).
    where : str
        Which layer and slice, for the status line.

    Raises
    ------
    ValueError
        If there is no result layer, or it is empty there.
    """
    result = output_labels(viewer, image)
    if result is None:
        raise ValueError(
            f"Image {image.name!r} has no PerSAM result yet: press Run, correct the "
            f"result in '{image.name} PerSAM' if needed, then add it as a reference."
        )
    where = f"{result.name!r}" + ("" if slice_index is None else f" slice {slice_index}")
    plane = np.asarray(result.data if slice_index is None else result.data[slice_index])
    labels = plane.astype(np.int32)
    content = result.metadata.get(CONTENT_KEY, {})
    if content.get("instances"):
        values = content.get("values") or [1]
        classes = output_labels(viewer, image, "classes")
        if len(values) > 1 and classes is not None:
            data = classes.data if slice_index is None else classes.data[slice_index]
            labels = np.where(plane > 0, np.asarray(data), 0).astype(np.int32)
        else:
            labels = np.where(plane > 0, values[0], 0).astype(np.int32)
    if not labels.any():
        raise ValueError(
            f"{where} is empty here: paint the object on it (or go to a slice with a "
            "result), then add it as a reference."
        )
    pixels = np.array(image.data if slice_index is None else image.data[slice_index])
    return (pixels, labels), where


@dataclass(frozen=True)
class PredictedSlice:
    """Where a Run found objects on one slice: (Y, X) bool, kept as packed bits.

    One bit per pixel, so remembering every slice of a large stack stays small.
    """

    shape: tuple[int, int]
    bits: np.ndarray

    @classmethod
    def of(cls, labels: np.ndarray) -> PredictedSlice:
        found = np.asarray(labels) != 0
        return cls(shape=tuple(found.shape), bits=np.packbits(found, axis=None))

    def mask(self) -> np.ndarray:
        count = self.shape[0] * self.shape[1]
        return np.unpackbits(self.bits, count=count).reshape(self.shape).astype(bool)


def deleted_objects(predicted: PredictedSlice | None, labels: np.ndarray) -> np.ndarray | None:
    """The objects of ``predicted`` that are wholly gone from ``labels`` (Y, X).

    An object is a connected region (8-connected) of what the Run found; only those
    the user erased completely count: trimming an object's edge corrects the
    object, it does not say "not this". ``None`` when nothing was deleted, or the
    slice was not predicted by this widget (or has another shape).
    """
    if predicted is None or tuple(np.shape(labels)) != predicted.shape:
        return None
    found = predicted.mask()
    regions, count = ndimage.label(found, structure=np.ones((3, 3), dtype=bool))
    if not count:
        return None
    kept = np.zeros(count + 1, dtype=bool)
    kept[np.unique(regions[np.asarray(labels) != 0])] = True
    kept[0] = True  # background is not an object
    deleted = ~kept[regions]
    return deleted if deleted.any() else None
