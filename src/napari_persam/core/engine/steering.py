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
    """(y, x) of the mask pixel farthest from its border (inside even for a crescent)."""
    distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    return np.array(np.unravel_index(np.argmax(distance), mask.shape), dtype=np.float64)


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
