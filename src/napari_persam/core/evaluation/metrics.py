"""Segmentation quality against ground truth: pixel, boundary and instance metrics.

Conventions for empty masks (stated once, used everywhere): a ratio whose
denominator is zero scores **1.0 when prediction and ground truth are both empty**
(nothing to find, nothing found) and **0.0 otherwise**. So IoU, Dice and boundary
IoU of two empty masks are 1.0; an empty prediction for a non-empty ground truth
has precision 0.0 and recall 0.0; a non-empty prediction for an empty ground truth
has precision 0.0 and recall 0.0. Instance F1 and AP follow the same rule: no
ground-truth instances and no predicted instances score 1.0; either side empty
alone scores 0.0.

Masks are (H, W) arrays of any dtype; nonzero is foreground. Instance label images
are (H, W) integer arrays, 0 = background, each other value one instance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: COCO's IoU thresholds for AP 0.5:0.95.
COCO_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))

#: Cheng et al. (2021) use 2 % of the image diagonal as the boundary width.
DEFAULT_DILATION_RATIO = 0.02


def _ratio(numerator: float, denominator: float, *, both_empty: bool) -> float:
    if denominator == 0:
        return 1.0 if both_empty else 0.0
    return float(numerator) / float(denominator)


def _as_pair(prediction: np.ndarray, ground_truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(prediction) != 0
    truth = np.asarray(ground_truth) != 0
    if pred.shape != truth.shape:
        raise ValueError(
            f"Prediction has shape {pred.shape} but ground truth has {truth.shape}; "
            "compare masks of the same image."
        )
    return pred, truth


@dataclass(frozen=True)
class PixelCounts:
    """Pixel counts of one comparison, summable over images.

    Attributes
    ----------
    tp, fp, fn : int
        True positive, false positive and false negative pixels.
    """

    tp: int
    fp: int
    fn: int

    def __add__(self, other: PixelCounts) -> PixelCounts:
        return PixelCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def intersection(self) -> int:
        return self.tp

    @property
    def union(self) -> int:
        return self.tp + self.fp + self.fn

    @property
    def both_empty(self) -> bool:
        return self.union == 0

    @property
    def iou(self) -> float:
        return _ratio(self.tp, self.union, both_empty=self.both_empty)

    @property
    def dice(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn, both_empty=self.both_empty)

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp, both_empty=self.both_empty)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn, both_empty=self.both_empty)


def pixel_counts(prediction: np.ndarray, ground_truth: np.ndarray) -> PixelCounts:
    """True/false positive and false negative pixel counts of two masks of one shape."""
    pred, truth = _as_pair(prediction, ground_truth)
    tp = int(np.count_nonzero(pred & truth))
    return PixelCounts(
        tp=tp,
        fp=int(np.count_nonzero(pred)) - tp,
        fn=int(np.count_nonzero(truth)) - tp,
    )


def iou(prediction: np.ndarray, ground_truth: np.ndarray) -> float:
    """Intersection over union of two masks (1.0 when both are empty)."""
    return pixel_counts(prediction, ground_truth).iou


def dice(prediction: np.ndarray, ground_truth: np.ndarray) -> float:
    """Dice coefficient 2|P∩G| / (|P| + |G|) (1.0 when both are empty)."""
    return pixel_counts(prediction, ground_truth).dice


def precision_recall(prediction: np.ndarray, ground_truth: np.ndarray) -> tuple[float, float]:
    """Pixel precision TP / (TP + FP) and recall TP / (TP + FN), see the module's convention."""
    counts = pixel_counts(prediction, ground_truth)
    return counts.precision, counts.recall


def boundary_width(shape: tuple[int, ...], *, dilation_ratio: float) -> int:
    """Boundary width in pixels: ``dilation_ratio`` of the image diagonal, at least 1."""
    height, width = shape[:2]
    return max(1, round(dilation_ratio * float(np.hypot(height, width))))


def mask_boundary(mask: np.ndarray, *, width: int) -> np.ndarray:
    """The inner boundary band of a mask: pixels of ``mask`` within ``width`` of its contour.

    Parameters
    ----------
    mask : (H, W) array, nonzero = foreground
    width : int
        Band width in pixels (erosions by a 3x3 square).

    Returns
    -------
    (H, W) bool
        ``mask`` minus its erosion. Pixels outside the image count as background
        (as in the reference implementation, which pads with zeros), so a mask
        touching the border has a boundary there.
    """
    boolean = np.asarray(mask) != 0
    if not boolean.any():
        return boolean
    # ``width`` erosions by a 3x3 square are one erosion by a (2 width + 1) square,
    # which scipy's separable minimum filter does in time independent of ``width``.
    eroded = ndimage.minimum_filter(
        boolean.view(np.uint8), size=2 * width + 1, mode="constant", cval=0
    ).astype(bool)
    return boolean & ~eroded


def boundary_iou(
    prediction: np.ndarray,
    ground_truth: np.ndarray,
    *,
    dilation_ratio: float = DEFAULT_DILATION_RATIO,
) -> float:
    """Boundary IoU (Cheng et al., CVPR 2021).

    IoU of the two masks' inner boundary bands, each ``d`` pixels wide with
    ``d = max(1, round(dilation_ratio * image diagonal))``. It weighs errors along
    the contour, which plain IoU hides for large objects. 1.0 when both masks are
    empty.
    """
    pred, truth = _as_pair(prediction, ground_truth)
    width = boundary_width(pred.shape, dilation_ratio=dilation_ratio)
    return pixel_counts(mask_boundary(pred, width=width), mask_boundary(truth, width=width)).iou


# ----------------------------------------------------------------------- instances
def _compact_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels renumbered 0..n (0 = background) and the original ids (n,)."""
    ids, inverse = np.unique(np.asarray(labels), return_inverse=True)
    inverse = inverse.reshape(np.shape(labels))
    if ids.size and ids[0] == 0:
        return inverse, ids[1:]
    # No background pixel at all: shift so that 0 stays free for background.
    return inverse + 1, ids


def instance_iou_matrix(
    predicted_labels: np.ndarray, true_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every predicted instance with every ground-truth instance.

    Parameters
    ----------
    predicted_labels, true_labels : (H, W) integer arrays
        0 is background; every other value is one instance.

    Returns
    -------
    iou : (P, G) float64
        ``iou[i, j]`` for the i-th predicted and j-th true instance id.
    predicted_ids : (P,) and true_ids : (G,)
        The label values in the order of the rows and columns (ascending).
    """
    pred = np.asarray(predicted_labels)
    truth = np.asarray(true_labels)
    if pred.shape != truth.shape:
        raise ValueError(
            f"Predicted labels have shape {pred.shape} but ground truth has {truth.shape}; "
            "compare label images of the same image."
        )
    pred_index, pred_ids = _compact_labels(pred)
    true_index, true_ids = _compact_labels(truth)
    n_pred, n_true = pred_ids.size + 1, true_ids.size + 1
    # One bincount gives the whole contingency table of (predicted, true) labels.
    table = np.bincount(
        (pred_index.astype(np.int64) * n_true + true_index).ravel(), minlength=n_pred * n_true
    ).reshape(n_pred, n_true)
    intersection = table[1:, 1:].astype(np.float64)
    pred_area = table[1:, :].sum(axis=1)[:, None]
    true_area = table[:, 1:].sum(axis=0)[None, :]
    union = pred_area + true_area - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        matrix = np.where(union > 0, intersection / np.maximum(union, 1), 0.0)
    return matrix, pred_ids, true_ids


def match_by_score(iou: np.ndarray, scores: np.ndarray, *, threshold: float) -> np.ndarray:
    """COCO's greedy matching of predictions to ground truth.

    Predictions are visited by descending score (ties: in the given order); each
    takes the still-unmatched ground-truth instance of highest IoU, if that IoU is
    at least ``threshold``.

    Parameters
    ----------
    iou : (P, G) float
    scores : (P,) float
    threshold : float

    Returns
    -------
    (P,) bool
        True where the prediction is a true positive.
    """
    iou = np.asarray(iou, dtype=np.float64)
    n_pred, n_true = iou.shape
    matched_true = np.zeros(n_true, dtype=bool)
    is_tp = np.zeros(n_pred, dtype=bool)
    for index in np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable"):
        if n_true == 0:
            break
        candidates = np.where(matched_true, -1.0, iou[index])
        best = int(np.argmax(candidates))
        if candidates[best] >= threshold:
            matched_true[best] = True
            is_tp[index] = True
    return is_tp


def matched_f1(iou: np.ndarray, *, threshold: float = 0.5) -> float:
    """Instance F1 = 2 TP / (2 TP + FP + FN) with one-to-one matches of IoU >= threshold.

    Pairs are matched greedily by descending IoU; for ``threshold >= 0.5`` every
    instance has at most one partner above it, so this is the optimal matching.
    1.0 when there are no instances on either side.
    """
    iou = np.asarray(iou, dtype=np.float64)
    n_pred, n_true = iou.shape
    if n_pred == 0 and n_true == 0:
        return 1.0
    order = np.argsort(-iou, axis=None, kind="stable")
    used_pred = np.zeros(n_pred, dtype=bool)
    used_true = np.zeros(n_true, dtype=bool)
    tp = 0
    for flat in order:
        i, j = divmod(int(flat), n_true)
        if iou[i, j] < threshold:
            break
        if not used_pred[i] and not used_true[j]:
            used_pred[i] = used_true[j] = True
            tp += 1
    return 2.0 * tp / (n_pred + n_true)


@dataclass(frozen=True)
class InstanceImage:
    """One image's instance comparison, the unit :func:`average_precision` accumulates.

    Attributes
    ----------
    iou : (P, G) float64
        From :func:`instance_iou_matrix`.
    scores : (P,) float64
        Confidence of each predicted instance (higher first).
    """

    iou: np.ndarray
    scores: np.ndarray

    @property
    def n_predicted(self) -> int:
        return int(self.iou.shape[0])

    @property
    def n_true(self) -> int:
        return int(self.iou.shape[1])


def compare_instances(
    predicted_labels: np.ndarray,
    true_labels: np.ndarray,
    *,
    scores: Sequence[float] | np.ndarray | None = None,
) -> InstanceImage:
    """Compare two instance label images.

    Parameters
    ----------
    predicted_labels, true_labels : (H, W) integer arrays
    scores : (P,) float, optional
        One confidence per predicted id, in ascending id order. By default every
        instance scores its area, so larger instances rank first.
    """
    matrix, pred_ids, _ = instance_iou_matrix(predicted_labels, true_labels)
    if scores is None:
        areas = ndimage.sum_labels(
            np.ones(np.shape(predicted_labels)), np.asarray(predicted_labels), index=pred_ids
        )
        values = np.asarray(areas, dtype=np.float64).reshape(-1)
    else:
        values = np.asarray(scores, dtype=np.float64).reshape(-1)
        if values.size != pred_ids.size:
            raise ValueError(
                f"Got {values.size} scores for {pred_ids.size} predicted instances; "
                "give one score per predicted label id."
            )
    return InstanceImage(iou=matrix, scores=values)


def average_precision(images: Sequence[InstanceImage], *, threshold: float) -> float:
    """COCO-style average precision over one or more images at one IoU threshold.

    Predictions of all images are ranked together by score, matched per image
    with :func:`match_by_score`, and precision is interpolated at 101 recall points
    (0, 0.01, ..., 1) from its monotone envelope, as in pycocotools (without its
    limit of 100 detections per image: nucleus images hold hundreds).

    Returns 1.0 when there is no instance on either side, 0.0 when only one side
    has instances.
    """
    n_true = sum(image.n_true for image in images)
    n_pred = sum(image.n_predicted for image in images)
    if n_true == 0 or n_pred == 0:
        return 1.0 if n_true == n_pred else 0.0
    scores = np.concatenate([image.scores for image in images])
    flags = np.concatenate(
        [match_by_score(image.iou, image.scores, threshold=threshold) for image in images]
    )
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(flags[order])
    fp = np.cumsum(~flags[order])
    recall = tp / n_true
    precision = tp / (tp + fp)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    points = np.linspace(0.0, 1.0, 101)
    found = np.searchsorted(recall, points, side="left")
    reached = found < envelope.size  # recall points never reached get precision 0
    interpolated = np.where(reached, envelope[np.minimum(found, envelope.size - 1)], 0.0)
    return float(interpolated.mean())


def average_precision_range(
    images: Sequence[InstanceImage], *, thresholds: Sequence[float] = COCO_THRESHOLDS
) -> float:
    """Mean of :func:`average_precision` over IoU ``thresholds`` (COCO's AP 0.5:0.95)."""
    return float(np.mean([average_precision(images, threshold=t) for t in thresholds]))


def connected_instances(mask: np.ndarray) -> np.ndarray:
    """(H, W) int32 labels of the 8-connected components of a mask (0 = background)."""
    labels, _ = ndimage.label(np.asarray(mask) != 0, structure=np.ones((3, 3), dtype=bool))
    return labels.astype(np.int32, copy=False)
