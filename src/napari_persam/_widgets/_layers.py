"""The output layers of a run: found and updated in place, or added.

Each image layer that gets segmented has two outputs, "<image> PerSAM" (Labels) and
"<image> similarity" (Image), with the image's spatial shape, scale, translate
and affine. They are tagged in ``metadata`` so a rerun finds them again even if
the user renamed them, and so a user's own layer that happens to have the same
name is never written to. The user's image and reference layers are only read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import napari
import numpy as np
from napari.layers import Image, Labels

if TYPE_CHECKING:  # pragma: no cover - concept.py imports torch
    from napari_persam.core.concept import Segmentation

#: ``layer.metadata`` key that marks a layer as written by this plugin.
METADATA_KEY = "napari_persam"
#: Similarity is cosine similarity in [-1, 1]; the interesting part is positive.
SIMILARITY_LIMITS = (0.0, 1.0)


def spatial_shape(image: Image) -> tuple[int, ...]:
    """(Y, X) or (Z, Y, X) of an image layer: its shape without the RGB(A) axis."""
    shape = tuple(int(n) for n in image.data.shape)
    return shape[:-1] if image.rgb else shape


def labels_name(image_name: str) -> str:
    return f"{image_name} PerSAM"


def similarity_name(image_name: str) -> str:
    return f"{image_name} similarity"


@dataclass
class OutputLayers:
    """The two layers that receive the results for one image layer."""

    labels: Labels
    similarity: Image


def ensure_outputs(viewer: napari.Viewer, image: Image, *, value: int) -> OutputLayers:
    """The output layers of ``image``, reused when they fit, added otherwise.

    Parameters
    ----------
    viewer : napari.Viewer
    image : Image layer
        The segmented image (read only).
    value : int
        The label value that will be written; new labels get the smallest integer
        dtype that holds it (uint8 for most), to keep large stacks small.

    Returns
    -------
    OutputLayers
        ``labels.data``: spatial shape, integer; ``similarity.data``:
        spatial shape, float32. Existing layers keep their data unless its shape or
        dtype no longer fits, in which case it is replaced (same layer object).
    """
    shape = spatial_shape(image)
    label_dtype = np.min_scalar_type(value)
    labels = _find(viewer, image.name, "labels", Labels)
    if labels is None:
        labels = viewer.add_labels(
            np.zeros(shape, dtype=label_dtype),
            name=labels_name(image.name),
            metadata=_tag(image.name, "labels"),
            **_placement(image),
        )
    elif labels.data.shape != shape or not _holds(labels.data.dtype, value):
        labels.data = np.zeros(shape, dtype=label_dtype)
    similarity = _find(viewer, image.name, "similarity", Image)
    if similarity is None:
        similarity = viewer.add_image(
            np.zeros(shape, dtype=np.float32),
            name=similarity_name(image.name),
            metadata=_tag(image.name, "similarity"),
            colormap="magma",
            contrast_limits=SIMILARITY_LIMITS,
            blending="additive",
            opacity=0.5,
            visible=False,  # the segmentation is what the user came for
            **_placement(image),
        )
        # Below the labels, so showing it never covers the segmentation.
        viewer.layers.move(viewer.layers.index(similarity), viewer.layers.index(labels))
    elif similarity.data.shape != shape or similarity.data.dtype != np.float32:
        similarity.data = np.zeros(shape, dtype=np.float32)
    return OutputLayers(labels=labels, similarity=similarity)


def write_result(
    outputs: OutputLayers,
    segmentation: Segmentation,
    *,
    slice_index: int | None,
    value: int,
) -> None:
    """Write one image's result into the output layers and redraw them.

    Parameters
    ----------
    outputs : OutputLayers
    segmentation : Segmentation
        ``mask`` (Y, X) bool and ``similarity`` (Y, X) float32.
    slice_index : int or None
        The slice (axis 0) of a stack; ``None`` for a 2D image.
    value : int
        Label value written where the mask is true; elsewhere 0.
    """
    index = () if slice_index is None else (slice_index,)
    labels = outputs.labels.data
    labels[index] = np.where(segmentation.mask, value, 0).astype(labels.dtype, copy=False)
    outputs.similarity.data[index] = segmentation.similarity
    outputs.labels.refresh()
    outputs.similarity.refresh()


def _holds(dtype: np.dtype, value: int) -> bool:
    if dtype.kind not in "iu":
        return False
    info = np.iinfo(dtype)
    return info.min <= value <= info.max


def _find(
    viewer: napari.Viewer, image_name: str, role: str, kind: type
) -> napari.layers.Layer | None:
    for layer in viewer.layers:
        tag = layer.metadata.get(METADATA_KEY)
        if isinstance(layer, kind) and tag == {"source": image_name, "role": role}:
            return layer
    return None


def _tag(image_name: str, role: str) -> dict:
    return {METADATA_KEY: {"source": image_name, "role": role}}


def _placement(image: Image) -> dict:
    return {
        "scale": tuple(image.scale),
        "translate": tuple(image.translate),
        "rotate": image.rotate,
        "shear": image.shear,
        "affine": image.affine.affine_matrix,
    }
