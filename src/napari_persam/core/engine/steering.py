"""Prompts from an object seen in a neighbouring slice (propagation through a stack).

A neighbour's mask steers the next slice: a point deep inside it, the similarity
maximum within its box (enlarged a little, as the object moves), the negative prior
point, and the enlarged box itself.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from napari_persam.core.engine.postprocess import tight_box
from napari_persam.core.engine.prompting import PromptSet, extreme_points


def inner_point(mask: np.ndarray) -> np.ndarray:
    """(y, x) of the mask pixel farthest from its border (inside even for a crescent).

    The distance transform runs on the mask's bounding box only, padded by one
    background pixel: no background beyond that ring can be nearer to a pixel
    inside (the way there crosses the ring), so the point is the one a full-image
    transform gives, for a small object in an 8192 px slice in microseconds.
    """
    rows = np.flatnonzero(np.any(mask, axis=1))
    if rows.size == 0:
        return np.zeros(2, dtype=np.float64)
    cols = np.flatnonzero(np.any(mask, axis=0))
    y0, x0 = rows[0], cols[0]
    box = np.asarray(mask[y0 : rows[-1] + 1, x0 : cols[-1] + 1])
    distance = ndimage.distance_transform_edt(np.pad(box, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(np.argmax(distance), box.shape)
    return np.array([y0 + y, x0 + x], dtype=np.float64)


def enlarged_box(box: np.ndarray, margin: float, shape: tuple[int, int]) -> np.ndarray:
    """(y0, x0, y1, x1) grown by ``margin`` of its size on each side, inside the image."""
    y0, x0, y1, x1 = box
    dy, dx = (y1 - y0 + 1) * margin, (x1 - x0 + 1) * margin
    return np.array(
        [
            max(0.0, y0 - dy),
            max(0.0, x0 - dx),
            min(shape[0] - 1.0, y1 + dy),
            min(shape[1] - 1.0, x1 + dx),
        ]
    )


def propagation_prompt(
    previous: np.ndarray, similarity: np.ndarray, *, margin: float, negative: bool
) -> PromptSet:
    """Prompts for an object seen in the neighbouring slice.

    Positive points at the inside of the neighbour's mask and at the similarity
    maximum within its enlarged box, the negative prior point, and the enlarged box.
    """
    box = enlarged_box(tight_box(previous), margin, previous.shape)
    y0, x0, y1, x1 = box.astype(int)
    window = similarity[y0 : y1 + 1, x0 : x1 + 1]
    local = np.array(np.unravel_index(np.argmax(window), window.shape), dtype=np.float64)
    points = [inner_point(previous), local + np.array([y0, x0])]
    labels = [1, 1]
    if negative:
        points.append(extreme_points(similarity)[1])
        labels.append(0)
    return PromptSet(points=np.stack(points), labels=np.array(labels), box=box)
