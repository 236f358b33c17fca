"""The output layers of a run: found and updated in place, or added.

Each image layer that gets segmented has two outputs, "<image> PerSAM" (Labels) and
"<image> similarity" (Image), and a third, "<image> classes" (Labels), for
every-instance runs with several label values; all have the image's spatial shape, scale, translate
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

if TYPE_CHECKING:  # pragma: no cover
    from napari_persam._widgets._runner import SliceResult

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


def classes_name(image_name: str) -> str:
    return f"{image_name} classes"


@dataclass
class OutputLayers:
    """The layers that receive the results for one image layer.

    ``classes`` is only made for every-instance runs with several label values.
    """

    labels: Labels
    similarity: Image
    classes: Labels | None = None


def ensure_outputs(
    viewer: napari.Viewer,
    image: Image,
    *,
    dtype: np.dtype | type,
    classes_dtype: np.dtype | type | None = None,
) -> OutputLayers:
    """The output layers of ``image``, reused when they fit, added otherwise.

    Parameters
    ----------
    viewer : napari.Viewer
    image : Image layer
        The segmented image (read only).
    dtype : numpy dtype
        Integer dtype the labels need (e.g. uint8 for small label values, int32 for
        instance ids), so large stacks stay small.
    classes_dtype : numpy dtype, optional
        Also make or reuse "<image> classes" (every instance, several values).

    Returns
    -------
    OutputLayers
        ``labels.data``: spatial shape, integer; ``similarity.data``: spatial
        shape, float32. Existing layers keep their data; labels whose dtype is too
        small are converted (values kept); data of another shape is replaced
        (same layer object).
    """
    labels = _labels(viewer, image, "labels", labels_name(image.name), np.dtype(dtype))
    shape = spatial_shape(image)
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
    classes = None
    if classes_dtype is not None:
        # Hidden when made: the instances are shown; the class map is a toggle away.
        name = classes_name(image.name)
        classes = _labels(viewer, image, "classes", name, np.dtype(classes_dtype), visible=False)
    return OutputLayers(labels=labels, similarity=similarity, classes=classes)


def output_labels(viewer: napari.Viewer, image: Image, role: str = "labels") -> Labels | None:
    """This plugin's "<image> PerSAM" (``role="labels"``) or "<image> classes" layer."""
    return _find(viewer, image.name, role, Labels)


def write_result(outputs: OutputLayers, result: SliceResult, *, slice_index: int | None) -> None:
    """Write one image's result into the output layers and redraw them.

    Parameters
    ----------
    outputs : OutputLayers
    result : SliceResult
        ``labels`` (Y, X) int32, ``similarity`` (Y, X) float32, ``classes``
        (Y, X) int32 or None.
    slice_index : int or None
        The slice (axis 0) of a stack; ``None`` for a 2D image.
    """
    index = () if slice_index is None else (slice_index,)
    labels = outputs.labels.data
    labels[index] = result.labels.astype(labels.dtype, copy=False)
    outputs.similarity.data[index] = result.similarity
    outputs.labels.refresh()
    outputs.similarity.refresh()
    if outputs.classes is not None and result.classes is not None:
        classes = outputs.classes.data
        classes[index] = result.classes.astype(classes.dtype, copy=False)
        outputs.classes.refresh()


def _labels(
    viewer: napari.Viewer,
    image: Image,
    role: str,
    name: str,
    dtype: np.dtype,
    *,
    visible: bool = True,
) -> Labels:
    shape = spatial_shape(image)
    layer = _find(viewer, image.name, role, Labels)
    if layer is None:
        return viewer.add_labels(
            np.zeros(shape, dtype=dtype), name=name, metadata=_tag(image.name, role),
            visible=visible, **_placement(image),
        )  # fmt: skip
    if layer.data.shape != shape:
        layer.data = np.zeros(shape, dtype=dtype)
    elif not _holds(layer.data.dtype, dtype):
        layer.data = np.asarray(layer.data).astype(np.promote_types(layer.data.dtype, dtype))
    return layer


def _holds(have: np.dtype, need: np.dtype) -> bool:
    return have.kind in "iu" and np.can_cast(need, have)


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
