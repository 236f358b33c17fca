"""The line next to Run saying at what scale a Run works and how many encodings it costs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from napari_persam._widgets._spelling import widget_message
from napari_persam.core.config import PerSAMConfig
from napari_persam.core.engine.tiles import plans_for
from napari_persam.core.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from napari_persam.core.engine.concepts import Concept


def describe_tiling(
    image_hw: Sequence[int],
    concepts: Mapping[int, Concept],
    config: PerSAMConfig,
    *,
    images: int = 1,
    seconds_per_encoding: float | None = None,
) -> str:
    """E.g. "7.5 px per cell: 10 x 10 tiles of 480 px per slice; 300 encodings, about 4 min".

    Parameters
    ----------
    image_hw : (H, W)
        One image or slice.
    concepts : dict of int to Concept
        The Run's concepts (their learned scales).
    images : int
        Images or slices the Run segments.
    seconds_per_encoding : float, optional
        Measured on this machine (the Run's own encodings); gives the time estimate.
    """
    try:
        plans = plans_for(image_hw, concepts.values(), config=config)
    except InputError as error:
        return widget_message(error)
    per_image = sum(len(plan) for plan in plans)
    parts = [
        f"{plan.pixels_per_cell:.1f} px per cell: {plan.describe()}" for plan in plans if plan.tiled
    ]
    where = "; ".join(dict.fromkeys(parts)) or "the whole image at once"
    total = per_image * images
    text = f"{where} per {'slice' if images > 1 else 'image'}; {total} encoding(s)"
    if seconds_per_encoding is not None and total > 1:
        text += f", about {_duration(total * seconds_per_encoding)} on this machine"
    return text


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
