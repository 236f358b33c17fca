"""What PerSAM returns: one object, several classes, or every instance, and their label images."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: The largest label value a result can be painted with: label images are int32.
MAX_LABEL_VALUE = int(np.iinfo(np.int32).max)


@dataclass(frozen=True, eq=False)
class Segmentation:
    """The result of segmenting one image with a concept.

    Attributes
    ----------
    mask : (H, W) bool
        The object found (all False when nothing was found).
    similarity : (H, W) float32
        Cosine similarity to the target embedding in [-1, 1], in image pixels.
    score : float
        SAM's predicted IoU of the chosen mask; 0.0 when nothing was found.
    points : (N, 2) float
        Point prompts used, (y, x) in image pixels.
    point_labels : (N,) int
        1 for positive, 0 for negative points.
    box : (4,) float or None
        (y0, x0, y1, x1) box prompt of the final refinement step, in image pixels.
    parts : (int, int) or None
        The (part count, background count) whose prompts gave ``mask`` (part-aware
        prompting; (1, 0) is PerSAM's); ``None`` when not known (propagated slices).
    retrieval_distances : dict of (int, int) -> float
        Earth mover's distance between the cells of each pair's mask and the
        reference object's cells, for every pair tried (``inf`` for an empty mask);
        ``parts`` has the smallest. Empty when the concept has no reference cells.
    """

    mask: np.ndarray
    similarity: np.ndarray
    score: float
    points: np.ndarray
    point_labels: np.ndarray
    box: np.ndarray | None = None
    parts: tuple[int, int] | None = None
    retrieval_distances: dict[tuple[int, int], float] = field(default_factory=dict)

    @property
    def found(self) -> bool:
        return bool(self.mask.any())

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))


@dataclass(frozen=True, eq=False)
class Instances:
    """Every instance of a concept in one image.

    Attributes
    ----------
    labels : (H, W) int32
        0 background, 1..N objects, strongest first.
    scores : (N,) float32
        SAM's predicted IoU of each object's mask.
    similarity : (H, W) float32
        The concept's similarity map (for several classes: the maximum over them).
    classes : (N,) int32
        The class (reference label value) of each object; all equal for one concept.
    points : (N, 2) float
        The positive prompt, (y, x), that found each object.
    ids : (N,) int32
        The value of each object in ``labels``: 1..N for one image; in a stack,
        ids follow objects from slice to slice and need not be consecutive.
    distances : (N,) float32
        Part-aware prompting: earth mover's distance between each object's cells
        and the reference object's (as :attr:`Segmentation.retrieval_distances`).
        NaN with PerSAM's prompts, or when the concept has no reference cells.
    """

    labels: np.ndarray
    scores: np.ndarray
    similarity: np.ndarray
    classes: np.ndarray
    points: np.ndarray
    ids: np.ndarray | None = None
    distances: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.ids is None:
            object.__setattr__(self, "ids", np.arange(1, len(self.scores) + 1, dtype=np.int32))
        if self.distances is None:
            object.__setattr__(self, "distances", np.full(len(self.scores), np.nan, np.float32))
        else:
            distances = np.asarray(self.distances, dtype=np.float32).reshape(-1)
            if len(distances) != len(self.scores):
                raise ValueError("Instances need one distance per object.")
            object.__setattr__(self, "distances", distances)

    @property
    def count(self) -> int:
        return int(self.scores.shape[0])

    def class_map(self) -> np.ndarray:
        """(H, W) int32 with each object's class value (0 background)."""
        lookup = np.zeros(int(self.labels.max(initial=0)) + 1, dtype=np.int32)
        lookup[self.ids] = self.classes
        return lookup[self.labels]

    def masks(self) -> list[np.ndarray]:
        """One (H, W) bool mask per object, in the order of ``ids``."""
        return [self.labels == value for value in self.ids]


@dataclass(frozen=True, eq=False)
class LabelSegmentation:
    """Several classes segmented in one image.

    Attributes
    ----------
    labels : (H, W) int32
        Each pixel's class, using the reference's label values (0 background).
        Where two classes claim a pixel, the one with the higher score wins.
    scores : dict of int -> float
        Predicted IoU per class (0.0 when that class was not found).
    similarity : (K, H, W) float32
        One similarity map per class, in the order of ``values``.
    values : list of int
        The class values.
    """

    labels: np.ndarray
    scores: dict[int, float]
    similarity: np.ndarray
    values: list[int]


Result = Segmentation | LabelSegmentation | Instances


def merge_class_segmentations(
    results: dict[int, Segmentation], shape: tuple[int, int]
) -> LabelSegmentation:
    """One label image from per-class masks; the higher score wins contested pixels."""
    labels = np.zeros(shape, dtype=np.int32)
    best = np.full(shape, -np.inf)
    for value, result in results.items():
        wins = result.mask & (result.score > best)
        labels[wins] = value
        best[wins] = result.score
    return LabelSegmentation(
        labels=labels,
        scores={value: result.score for value, result in results.items()},
        similarity=np.stack([result.similarity for result in results.values()]),
        values=list(results),
    )


# ------------------------------------------------- any result as a label image
def label_image(result: Result, *, value: int = 1) -> np.ndarray:
    """The (H, W) int32 label image of any result: the one place this conversion lives.

    A one-object :class:`Segmentation` is painted with ``value``; a
    :class:`LabelSegmentation` holds its class values and :class:`Instances` their
    ids already (``value`` is not used for them).
    """
    if isinstance(result, Segmentation):
        if not 1 <= int(value) <= MAX_LABEL_VALUE:
            raise ValueError(
                f"Label value {value} does not fit a label image: use 1 to {MAX_LABEL_VALUE}."
            )
        return np.where(result.mask, np.int32(value), np.int32(0))
    if isinstance(result, (LabelSegmentation, Instances)):
        return np.asarray(result.labels, dtype=np.int32)
    raise TypeError(f"Not a PerSAM result: {type(result).__name__}.")


def best_similarity(result: Result) -> np.ndarray:
    """(H, W) float32 similarity map of a result (for several classes: the highest)."""
    if isinstance(result, LabelSegmentation):
        return np.max(result.similarity, axis=0).astype(np.float32, copy=False)
    return np.asarray(result.similarity, dtype=np.float32)


def object_count(result: Result) -> int:
    """Objects found: 0 or 1 for one object, classes found, or instances."""
    if isinstance(result, Segmentation):
        return int(result.found)
    if isinstance(result, LabelSegmentation):
        return len(set(np.unique(result.labels).tolist()) - {0})
    return result.count


def result_score(result: Result) -> float:
    """One confidence: SAM's predicted IoU, the best class's, or the instances' mean."""
    if isinstance(result, Segmentation):
        return float(result.score)
    if isinstance(result, LabelSegmentation):
        return float(max(result.scores.values(), default=0.0))
    return float(result.scores.mean()) if result.count else 0.0
