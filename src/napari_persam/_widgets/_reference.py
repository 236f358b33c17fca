"""Finding what the user painted: which label value, on which slice.

Pure numpy, no napari: the widget passes the Labels layer's data in, so these
rules are tested without a viewer.
"""

from __future__ import annotations

import numpy as np


def most_painted_label(labels: np.ndarray) -> int:
    """The nonzero label value that covers the most pixels.

    Parameters
    ----------
    labels : (Y, X) or (Z, Y, X) integer array
        A napari Labels layer's data; 0 is background.

    Raises
    ------
    ValueError
        If nothing is painted.
    """
    array = np.asarray(labels)
    # Slice by slice: only painted pixels are counted, so a large, mostly empty stack
    # costs one comparison pass instead of a sort of every voxel.
    counts: dict[int, int] = {}
    for plane in array if array.ndim == 3 else array[np.newaxis]:
        painted = plane[plane != 0]
        if painted.size:
            values, numbers = np.unique(painted, return_counts=True)
            for value, number in zip(values.tolist(), numbers.tolist()):
                counts[value] = counts.get(value, 0) + number
    if not counts:
        raise ValueError(
            "The reference Labels layer is empty: paint the object you want to find "
            "(any label value) on one image or slice, then press Run."
        )
    # The smallest value wins a tie, so the choice does not depend on dict order.
    return int(max(sorted(counts), key=counts.__getitem__))


def painted_slices(labels: np.ndarray, value: int) -> list[int]:
    """Indices along axis 0 of a (Z, Y, X) labels array that hold ``value``.

    Parameters
    ----------
    labels : (Z, Y, X) integer array
    value : int
        The label value to look for.
    """
    array = np.asarray(labels)
    if array.ndim != 3:
        raise ValueError(f"Expected (Z, Y, X) labels, got shape {array.shape}.")
    found = (array == value).reshape(array.shape[0], -1).any(axis=1)
    return [int(z) for z in np.flatnonzero(found)]


def reference_mask(
    labels: np.ndarray, *, value: int, slice_index: int | None = None
) -> tuple[np.ndarray, int | None]:
    """The painted object as a 2D boolean mask, and the slice it was taken from.

    Parameters
    ----------
    labels : (Y, X) or (Z, Y, X) integer array
        A napari Labels layer's data (not modified).
    value : int
        The label value that marks the object (nonzero).
    slice_index : int, optional
        For a stack, the slice (axis 0) that holds the reference. ``None`` finds
        it: the one slice painted with ``value``.

    Returns
    -------
    mask : (Y, X) bool
        A new array (``labels`` is never a view target).
    slice_index : int or None
        The slice used; ``None`` for 2D labels.

    Raises
    ------
    ValueError
        If ``value`` is not painted (on the chosen slice), or is painted on several
        slices and none was chosen; the message says what to do.
    """
    array = np.asarray(labels)
    if value == 0:
        raise ValueError("Label value 0 is the background; choose the value you painted with.")
    if array.ndim == 2:
        mask = array == value
        if not mask.any():
            raise ValueError(
                f"Label {value} is not painted in the reference layer; paint the object "
                "with it or choose another label value."
            )
        return mask, None
    if array.ndim != 3:
        raise ValueError(
            f"The reference Labels layer has shape {array.shape}; a 2D (Y, X) or 3D "
            "(Z, Y, X) layer is needed."
        )
    if slice_index is None:
        slices = painted_slices(array, value)
        if not slices:
            raise ValueError(
                f"Label {value} is not painted on any slice; paint the object with it "
                "or choose another label value."
            )
        if len(slices) > 1:
            shown = ", ".join(map(str, slices[:10])) + (", ..." if len(slices) > 10 else "")
            raise ValueError(
                f"Label {value} is painted on {len(slices)} slices ({shown}); untick "
                "'find reference slice' and choose the one slice to learn from."
            )
        slice_index = slices[0]
    if not 0 <= slice_index < array.shape[0]:
        raise ValueError(
            f"Reference slice {slice_index} is outside the stack (0 to {array.shape[0] - 1})."
        )
    mask = array[slice_index] == value
    if not mask.any():
        raise ValueError(
            f"Label {value} is not painted on slice {slice_index}; go to the slice that "
            "holds the painting or tick 'find reference slice'."
        )
    return mask, int(slice_index)
