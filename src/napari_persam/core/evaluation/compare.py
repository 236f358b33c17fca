"""Comparing a result label image or stack with its ground truth, slice by slice.

This is what the napari Evaluate widget shows: per-slice scores along the first
axis (z) of a (Z, H, W) stack, the whole stack's scores, and the worst slices.
A 2D (H, W) image is a stack of one slice.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from napari_persam.core.evaluation import metrics
from napari_persam.core.progress import Progress, ProgressGenerator


@dataclass(frozen=True)
class SliceScores:
    """Scores of one slice (foreground = any nonzero label).

    ``instance_f1`` is NaN when the comparison is not of instances.
    """

    index: int
    iou: float
    dice: float
    boundary_iou: float
    precision: float
    recall: float
    true_area: int
    predicted_area: int
    instance_f1: float = math.nan

    @property
    def both_empty(self) -> bool:
        return self.true_area == 0 and self.predicted_area == 0


@dataclass(frozen=True)
class StackComparison:
    """Per-slice and whole-stack scores.

    Attributes
    ----------
    slices : tuple of SliceScores
        In slice order.
    counts : PixelCounts
        Summed over every slice: ``counts.iou`` is the volume IoU.
    instances : bool
        Whether instance F1 was computed (some slice holds more than one label id).
    """

    slices: tuple[SliceScores, ...]
    counts: metrics.PixelCounts
    instances: bool

    def summary(self) -> dict[str, float]:
        """Whole-stack scores: volume IoU, Dice of the summed counts and slice means."""

        def mean(name: str) -> float:
            return float(np.mean([getattr(item, name) for item in self.slices]))

        summary = {
            "IoU (all pixels)": self.counts.iou,
            "Dice (all pixels)": self.counts.dice,
            "precision (all pixels)": self.counts.precision,
            "recall (all pixels)": self.counts.recall,
            "mean slice IoU": mean("iou"),
            "mean slice boundary IoU": mean("boundary_iou"),
        }
        if self.instances:
            summary["mean slice instance F1@0.5"] = mean("instance_f1")
        return summary

    def worst(self, count: int | None = None) -> list[SliceScores]:
        """Slices by ascending IoU (ties: larger ground truth first), at most ``count``."""
        ranked = sorted(self.slices, key=lambda item: (item.iou, -item.true_area, item.index))
        return ranked if count is None else ranked[:count]


def _as_stack(array: np.ndarray, name: str) -> np.ndarray:
    if array.ndim == 2:
        return array[np.newaxis]
    if array.ndim == 3:
        return array
    raise ValueError(
        f"The {name} layer has {array.ndim} dimensions {tuple(array.shape)}; compare 2D "
        "images or 3D (Z, Y, X) stacks (for more dimensions, compare one time point at a "
        "time)."
    )


def iter_compare_stacks(
    predicted: np.ndarray,
    truth: np.ndarray,
    *,
    dilation_ratio: float = metrics.DEFAULT_DILATION_RATIO,
) -> ProgressGenerator[StackComparison]:
    """Compare label images slice by slice (a progress generator).

    Parameters
    ----------
    predicted, truth : (H, W) or (Z, H, W) integer arrays
        0 is background. Any array-like with numpy indexing (dask, zarr) works; one
        slice at a time is loaded.
    dilation_ratio : float
        Boundary IoU band width as a fraction of each slice's diagonal.

    Yields
    ------
    Progress
        One per slice, ``result`` its :class:`SliceScores`.

    Returns
    -------
    StackComparison

    Raises
    ------
    ValueError
        If the shapes differ or the arrays are not 2D or 3D.
    """
    if tuple(predicted.shape) != tuple(truth.shape):
        raise ValueError(
            f"The result has shape {tuple(predicted.shape)} but the ground truth has "
            f"{tuple(truth.shape)}; choose layers of the same image."
        )
    predicted = _as_stack(predicted, "result")
    truth = _as_stack(truth, "ground truth")
    total = predicted.shape[0]
    slices: list[SliceScores] = []
    counts = metrics.PixelCounts(0, 0, 0)
    # IoU matrices are kept until the end: whether the layers hold instances is only
    # known after every slice was seen.
    matrices: list[np.ndarray] = []
    any_instances = False
    for index in range(total):
        pred_slice = np.asarray(predicted[index])
        true_slice = np.asarray(truth[index])
        slice_counts = metrics.pixel_counts(pred_slice, true_slice)
        counts = counts + slice_counts
        iou_matrix, pred_ids, true_ids = metrics.instance_iou_matrix(pred_slice, true_slice)
        any_instances = any_instances or pred_ids.size > 1 or true_ids.size > 1
        matrices.append(iou_matrix)
        item = SliceScores(
            index=index,
            iou=slice_counts.iou,
            dice=slice_counts.dice,
            boundary_iou=metrics.boundary_iou(
                pred_slice, true_slice, dilation_ratio=dilation_ratio
            ),
            precision=slice_counts.precision,
            recall=slice_counts.recall,
            true_area=slice_counts.tp + slice_counts.fn,
            predicted_area=slice_counts.tp + slice_counts.fp,
        )
        slices.append(item)
        yield Progress(index + 1, total, f"slice {index + 1} of {total}", index=index, result=item)
    if any_instances:
        slices = [
            dataclasses.replace(item, instance_f1=metrics.matched_f1(matrix))
            for item, matrix in zip(slices, matrices)
        ]
    return StackComparison(slices=tuple(slices), counts=counts, instances=any_instances)
