"""Part, background and negative prototypes (P²SAM), made from reference cells.

An object with distinct parts (a polyp's rim and centre, a nucleus and its
cytoplasm) has one mean embedding that sits between its parts; its similarity
maximum falls on one part. P²SAM clusters the object's cell features with k-means:
each cluster's normalised mean is a *part prototype*, and each prototype's
similarity maximum becomes a positive point. The background is clustered the same
way for negative points, and every region the user marked "not this" gives one
negative prototype.

Prototypes are computed once per concept (when learning), never per image.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from collections.abc import Iterable

import numpy as np
from scipy import ndimage
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from napari_persam.core.engine.cells import cell_features, covered_cells
from napari_persam.core.engine.concepts import Concept
from napari_persam.core.engine.geometry import SamGeometry

#: k-means restarts. P²SAM calls ``KMeans(n_clusters=n, random_state=0)``, whose
#: default was 10 restarts when it was written; scikit-learn 1.4 changed the default
#: to one ("auto"), so the number is written out here.
KMEANS_RESTARTS = 10


def kmeans_prototypes(cells: np.ndarray, count: int) -> np.ndarray | None:
    """``count`` unit-length prototypes of ``cells``: the normalised cluster means.

    Parameters
    ----------
    cells : (N, C) float
        Raw cell features (P²SAM clusters them unnormalised).
    count : int
        Clusters; 1 is the normalised mean of all cells (no k-means, as in P²SAM).

    Returns
    -------
    (count, C) float32, or None
        ``None`` when there are fewer distinct cells than ``count``: P²SAM skips
        such a count on medical images; on PerSeg its code has no such check and
        fails inside k-means, and k-means with fewer distinct points than clusters
        would leave a cluster empty (its mean undefined).
    """
    cells = np.asarray(cells, dtype=np.float32)
    if count < 1 or len(cells) < count:
        return None
    if count == 1:
        return _unit(cells.mean(axis=0, keepdims=True))
    if len(np.unique(cells, axis=0)) < count:
        return None
    kmeans = KMeans(n_clusters=count, random_state=0, n_init=KMEANS_RESTARTS)
    # One thread: k-means on a few thousand cells is 20x faster that way on a CPU
    # shared with torch (OpenMP threads of both fight for the cores), and its sums
    # no longer depend on the thread count, so every machine gets the same prototypes.
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning on near-duplicate cells
        assignment = kmeans.fit_predict(cells)
    means = np.stack([cells[assignment == c].mean(axis=0) for c in range(count)])
    return _unit(means)


def prototype_table(
    cells: np.ndarray, counts: Iterable[int]
) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
    """Prototypes for several counts, stacked: (P, C) float32 rows and (P,) int32 counts.

    Row ``i`` belongs to the prototype set of ``groups[i]`` clusters; counts that
    :func:`kmeans_prototypes` skips have no rows. ``(None, None)`` when no count
    gives prototypes (none asked for, e.g. ``max_negative_parts=0``, or too few
    cells): a concept then has no table, which reads the same as an empty one and
    can be saved (a concept file holds no empty arrays).
    """
    rows, groups = [], []
    for count in counts:
        prototypes = kmeans_prototypes(cells, count)
        if prototypes is not None:
            rows.append(prototypes)
            groups.extend([count] * count)
    if not rows:
        return None, None
    return np.concatenate(rows).astype(np.float32), np.asarray(groups, dtype=np.int32)


def table_rows(
    table: np.ndarray | None, groups: np.ndarray | None, count: int
) -> np.ndarray | None:
    """The ``count`` prototypes of a :func:`prototype_table`, or None if it has none."""
    if table is None or groups is None:
        return None
    rows = table[groups == count]
    return rows if len(rows) == count else None


# ------------------------------------------------------------------ from a concept
_LAZY: weakref.WeakKeyDictionary[Concept, dict[int, np.ndarray | None]] = (
    weakref.WeakKeyDictionary()
)
_LAZY_LOCK = threading.Lock()


def part_prototypes(concept: Concept, count: int) -> np.ndarray | None:
    """The concept's ``count`` part prototypes (count, C) float32, or None.

    ``count`` 1 is the concept's own direction (PerSAM's mean embedding). Counts
    learned with the concept come from it; others are clustered from its
    reference cells once and kept with the concept object. ``None`` when the
    reference has fewer cells than ``count``, or the concept has no reference cells
    (a concept file of format 1).
    """
    if count == 1:
        return _unit(concept.target_embedding[None])
    stored = table_rows(concept.part_prototypes, concept.part_groups, count)
    if stored is not None or concept.part_cells is None:
        return stored
    with _LAZY_LOCK:
        memo = _LAZY.setdefault(concept, {})
        if count not in memo:
            memo[count] = kmeans_prototypes(concept.part_cells, count)
        return memo[count]


def background_prototypes(concept: Concept, count: int) -> np.ndarray | None:
    """The concept's ``count`` background prototypes, or None if it was not learned with them."""
    return table_rows(concept.background_prototypes, concept.background_groups, count)


def negative_directions(concept: Concept, background_counts: Iterable[int]) -> np.ndarray:
    """(K, C) float32: the user's negative prototypes and the given background sets."""
    rows = [] if concept.negative_prototypes is None else [concept.negative_prototypes]
    for count in background_counts:
        if count > 0:
            prototypes = background_prototypes(concept, count)
            if prototypes is not None:
                rows.append(prototypes)
    width = concept.target_embedding.shape[0]
    return np.concatenate(rows) if rows else np.zeros((0, width), dtype=np.float32)


# --------------------------------------------------------------- user negatives
def region_prototypes(
    features: np.ndarray,
    geometry: SamGeometry,
    negatives: np.ndarray,
    *,
    coverage: float,
    exclude: np.ndarray,
) -> np.ndarray:
    """One prototype per connected region the user marked "not this".

    Parameters
    ----------
    features : (C, gh, gw) float32
        The reference image's features.
    geometry : SamGeometry
    negatives : (H, W) bool
        The negative regions, in image pixels (8-connected regions).
    coverage : float
        The coverage rule of :func:`~.cells.covered_cells`.
    exclude : (gh, gw) bool
        Cells that make the object itself: never part of a negative (a thin negative
        beside the object would otherwise take the object's own border cells).

    Returns
    -------
    (U, C) float32
        Normalised mean of each region's cells; a region left with no cell of its
        own is dropped.
    """
    regions, count = ndimage.label(negatives, structure=np.ones((3, 3), dtype=bool))
    rows = []
    for value in range(1, count + 1):
        cells = covered_cells(geometry, regions == value, coverage) & ~exclude
        if cells.any():
            rows.append(cell_features(features, cells).mean(axis=0))
    if not rows:
        return np.zeros((0, features.shape[0]), dtype=np.float32)
    return _unit(np.stack(rows))


def _unit(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows / np.maximum(norms, 1e-12)).astype(np.float32)
