"""Finding what the user painted: which label value, on which slice.

Pure numpy, no napari: the widget passes the Labels layer's data in, so these
rules are tested without a viewer.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def painted_values(labels: np.ndarray) -> list[int]:
    """Every nonzero value painted in ``labels`` ((Y, X) or (Z, Y, X)), ascending."""
    array = np.asarray(labels)
    found: set[int] = set()
    for plane in array if array.ndim == 3 else array[np.newaxis]:
        found.update(int(v) for v in np.unique(plane) if v != 0)
    return sorted(found)


def reference_shots(
    image: np.ndarray,
    labels: np.ndarray,
    *,
    values: Sequence[int],
    slice_index: int | None = None,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], int | None]:
    """The painted references as (image, labels) pairs, one per painted slice.

    Parameters
    ----------
    image : array-like, (Y, X[, C]) or (Z, Y, X[, C])
        The image layer's data; only the painted slices are read.
    labels : (Y, X) or (Z, Y, X) integer array
        The reference Labels layer's data (only read).
    values : sequence of int
        The label values to learn (nonzero); other values are left out.
    slice_index : int, optional
        For a stack: learn from this slice only. ``None`` uses every slice that
        holds one of ``values`` (few-shot).

    Returns
    -------
    shots : list of (image, labels)
        New arrays: the image (Y, X[, C]) and an int32 (Y, X) label image that holds
        ``values`` only (0 elsewhere).
    main_slice : int or None
        For a stack, the slice with the most painted pixels (where propagation
        starts); ``None`` for 2D labels.

    Raises
    ------
    ValueError
        If a value is 0, nothing of ``values`` is painted (on the chosen slice), or
        the layer is not 2D or 3D; the message says what to do.
    """
    array = np.asarray(labels)
    wanted = [int(v) for v in values]
    if not wanted or 0 in wanted:
        raise ValueError("Label value 0 is the background; choose the value you painted with.")
    if array.ndim not in (2, 3):
        raise ValueError(
            f"The reference Labels layer has shape {array.shape}; a 2D (Y, X) or 3D "
            "(Z, Y, X) layer is needed."
        )
    named = ", ".join(map(str, wanted))
    if array.ndim == 2:
        plane = _keep(array, wanted)
        if not plane.any():
            raise ValueError(
                f"Label {named} is not painted in the reference layer; paint the object "
                "with it or choose another label value."
            )
        return [(np.array(image), plane)], None
    planes = _painted_planes(array, wanted, slice_index)
    # Copies: the user may paint or edit the image while the worker runs.
    shots = [(np.array(image[z]), plane) for z, plane in planes.items()]
    main = max(planes, key=lambda z: (int(np.count_nonzero(planes[z])), -z))
    return shots, int(main)


def reference_negatives(
    negatives: np.ndarray,
    labels: np.ndarray,
    *,
    values: Sequence[int],
    slice_index: int | None = None,
) -> list[np.ndarray | None]:
    """The "not this" regions of each reference shot, in the order of :func:`reference_shots`.

    Parameters
    ----------
    negatives : (Y, X) or (Z, Y, X) integer array
        A Labels layer's data with the reference's shape: nonzero is not the object.
    labels, values, slice_index
        As for :func:`reference_shots` (which must accept them).

    Returns
    -------
    list of (Y, X) bool or None
        One per shot; None where nothing is marked on that shot's slice.

    Raises
    ------
    ValueError
        If a negative overlaps a painted object, saying where and what to do.
    """
    array, marked = np.asarray(labels), np.asarray(negatives)
    wanted = [int(v) for v in values]
    if array.ndim == 2:
        pairs = [(None, _keep(array, wanted), marked)]
    else:
        planes = _painted_planes(array, wanted, slice_index)
        pairs = [(z, plane, marked[z]) for z, plane in planes.items()]
    result: list[np.ndarray | None] = []
    for z, plane, negative in pairs:
        negative = np.asarray(negative) != 0
        overlap = int(np.count_nonzero(negative & (plane != 0)))
        if overlap:
            where = "" if z is None else f" on slice {z}"
            raise ValueError(
                f"The negatives overlap the painted object in {overlap} pixel(s){where}; a "
                "place cannot be both the object and 'not this'. Erase the overlap from the "
                "negatives layer (or from the reference), then press Run."
            )
        result.append(negative if negative.any() else None)
    return result


def _painted_planes(
    array: np.ndarray, wanted: list[int], slice_index: int | None
) -> dict[int, np.ndarray]:
    """Slice -> (Y, X) int32 plane holding ``wanted`` only, for every painted slice used."""
    named = ", ".join(map(str, wanted))
    if slice_index is None:
        slices = sorted({z for value in wanted for z in painted_slices(array, value)})
        if not slices:
            raise ValueError(
                f"Label {named} is not painted on any slice; paint the object with it "
                "or choose another label value."
            )
    else:
        if not 0 <= slice_index < array.shape[0]:
            raise ValueError(
                f"Reference slice {slice_index} is outside the stack (0 to {array.shape[0] - 1})."
            )
        slices = [int(slice_index)]
    planes = {z: _keep(array[z], wanted) for z in slices}
    if not any(plane.any() for plane in planes.values()):
        raise ValueError(
            f"Label {named} is not painted on slice {slice_index}; go to the slice that "
            "holds the painting or learn from every painted slice."
        )
    return {z: plane for z, plane in planes.items() if plane.any()}


def _keep(plane: np.ndarray, values: list[int]) -> np.ndarray:
    """(Y, X) int32: ``plane`` where it holds one of ``values``, 0 elsewhere."""
    return np.where(np.isin(plane, values), plane, 0).astype(np.int32)
