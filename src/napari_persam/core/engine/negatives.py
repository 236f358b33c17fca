"""The regions a user marked "not this": checked against the references, and their
prototypes (one per connected region), which prompt negative points and drop
look-alike instances (:mod:`.retrieval`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from napari_persam.core.engine.concepts import Shot
from napari_persam.core.engine.parts import region_prototypes
from napari_persam.core.errors import InputError, option


def per_reference(
    negatives: np.ndarray | Sequence[np.ndarray | None] | None, count: int
) -> list[np.ndarray | None]:
    """``negatives`` as one entry (array or None) per reference."""
    if negatives is None:
        return [None] * count
    if isinstance(negatives, np.ndarray):
        if count == 1:
            return [negatives]
        raise ValueError(
            f"With {count} references, give negatives as a list with one mask (or None) "
            "per reference."
        )
    listed = list(negatives)
    if len(listed) != count:
        raise ValueError(
            f"{len(listed)} negatives for {count} references; give one mask (or None) each."
        )
    return listed


def check_negatives(
    negatives: np.ndarray | None, mask: np.ndarray, *, reference: int | None = None
) -> np.ndarray | None:
    """A reference's "not this" regions as a bool mask, or None when there are none.

    Parameters
    ----------
    negatives : (H, W) array or None
        Nonzero pixels are not the object. Empty (all zero) counts as none.
    mask : (H, W) bool
        The reference object (already checked).
    reference : int, optional
        Which reference of several, for the message.

    Raises
    ------
    InputError
        If the shapes differ, or the negatives overlap the object (a pixel cannot be
        both); the message says what to change.
    """
    if negatives is None:
        return None
    array = np.asarray(negatives)
    which = "" if reference is None else f" of reference {reference + 1}"
    if array.shape != mask.shape:
        raise InputError(
            f"The negatives{which} have shape {array.shape} but the reference mask has "
            f"{mask.shape}; paint {option('negatives')} on the reference image."
        )
    if array.dtype.kind == "f" and np.isnan(array).any():
        raise InputError(f"The negatives{which} contain NaN; use 0 where nothing is marked.")
    marked = array != 0
    if not marked.any():
        return None  # an empty negatives layer means "no negatives"
    overlap = int(np.count_nonzero(marked & mask))
    if overlap:
        raise InputError(
            f"The negatives{which} overlap the reference object in {overlap} pixel(s); a "
            f"place cannot be both the object and 'not this'. Erase the overlap from "
            f"{option('negatives')} or from the reference."
        )
    return marked


def negative_rows(shots: Sequence[Shot], coverage: float) -> np.ndarray | None:
    rows = [
        region_prototypes(
            shot.features,
            shot.geometry,
            shot.negatives,
            coverage=coverage,
            exclude=shot.foreground_cells,
        )
        for shot in shots
        if shot.negatives is not None
    ]
    rows = [row for row in rows if len(row)]
    return np.concatenate(rows) if rows else None
