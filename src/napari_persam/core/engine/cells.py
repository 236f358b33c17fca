"""The feature cells of a mask, and how far two sets of cells are from each other.

A mask speaks to SAM's features through the cells of its feature grid: the cells
it covers by at least ``foreground_coverage`` (the rule that makes the target
embedding). Two sets of cells are compared as P²SAM does, by the earth mover's
distance between them with uniform weights and squared Euclidean ground cost
(POT's ``ot.emd2`` on ``ot.dist``): small when the mask holds the same kinds of
cells as the reference, in the same proportions, large when it holds only one part
of the object or grows into the background.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import ot
import torch
import torch.nn.functional as F

from napari_persam.core.engine.geometry import SamGeometry

#: At most this many cells of each set enter an earth mover's distance. The exact
#: distance costs about (N M)^1.5: 1000 x 1000 cells take half a second on one core,
#: 512 x 512 a tenth of that. Larger sets are thinned evenly in raster order (every
#: k-th cell), which keeps their spatial spread and proportions.
MAX_DISTANCE_CELLS = 512

#: Network-simplex iterations allowed (POT's default, 100 000, can stop short of the
#: optimum for a few hundred cells per side, which P²SAM's code also raises).
_EMD_ITERATIONS = 10_000_000


def covered_cells(geometry: SamGeometry, mask: np.ndarray, coverage: float) -> np.ndarray:
    """The feature cells that stand for ``mask``.

    Parameters
    ----------
    geometry : SamGeometry
    mask : (H, W) bool
        In image pixels.
    coverage : float
        A cell counts when the mask covers at least this fraction of it; for a mask
        too small to cover any cell that much, its best-covered cell(s) count.

    Returns
    -------
    (gh, gw) bool
        All False for an empty mask.

    Notes
    -----
    P²SAM's code picks cells by resizing the mask (or the result's logits) to the
    grid bilinearly and thresholding: that samples points instead of measuring
    area, so a thin object can lose every cell, and its ``p2sam_perseg`` then
    compares an empty set. Coverage by area, with the best-covered fallback, keeps
    every non-empty mask represented.
    """
    fraction = geometry.mask_coverage(mask)
    best = float(fraction.max())
    if best <= 0.0:
        return np.zeros(fraction.shape, dtype=bool)
    cells = fraction >= coverage
    if not cells.any():
        cells = fraction >= best
    return cells


def covered_cells_of_part(geometry: SamGeometry, mask: np.ndarray, coverage: float) -> np.ndarray:
    """:func:`covered_cells` for a mask that covers a small part of the image, fast.

    SAM's resize and the cell pooling are separable linear maps, so the coverage
    is ``A @ mask @ B.T`` with one (gh, H) and one (gw, W) matrix per geometry; only
    the mask's bounding box enters the products. The values equal
    :meth:`SamGeometry.mask_coverage`'s up to float rounding (1e-6), so a cell
    exactly at the coverage threshold may fall either way; a full-image pass per
    mask would cost a hundred instances a fifth of an encoding (measured with
    ViT-B on a CPU, ``benchmarks/part_aware_cost.py``).
    """
    rows = np.flatnonzero(np.any(mask, axis=1))
    if rows.size == 0:
        return np.zeros(geometry.grid_hw, dtype=bool)
    cols = np.flatnonzero(np.any(mask, axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    down, across = _pooling_matrices(geometry)
    crop = np.asarray(mask[r0:r1, c0:c1], dtype=np.float64)
    fraction = down[:, r0:r1] @ crop @ across[:, c0:c1].T
    best = float(fraction.max())
    if best <= 0.0:
        return np.zeros(geometry.grid_hw, dtype=bool)
    cells = fraction >= coverage
    if not cells.any():
        cells = fraction >= best
    return cells


@functools.lru_cache(maxsize=8)
def _pooling_matrices(geometry: SamGeometry) -> tuple[np.ndarray, np.ndarray]:
    """(gh, H) and (gw, W) float64: each axis of :meth:`SamGeometry.mask_coverage`."""
    height, width = geometry.original_hw
    resized = geometry.resized_hw
    grid = geometry.grid_hw
    # The same choice of resize as mask_coverage: by the height, for both axes.
    mode = "nearest-exact" if resized[0] >= height else "area"
    matrices = []
    for size, target, cells in ((height, resized[0], grid[0]), (width, resized[1], grid[1])):
        columns = []
        for start in range(0, size, 256):  # one-hot pixels, a few at a time (memory)
            count = min(256, size - start)
            one_hot = torch.zeros(count, 1, size, dtype=torch.float64)
            one_hot[torch.arange(count), 0, torch.arange(start, start + count)] = 1.0
            moved = F.interpolate(one_hot, size=target, mode=mode)
            padded = F.pad(moved, (0, geometry.img_size - target))
            columns.append(F.avg_pool1d(padded, kernel_size=geometry.img_size // cells)[:, 0])
        matrices.append(torch.cat(columns).T.numpy())
    return matrices[0], matrices[1]


def cell_features(features: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """(N, C) float32 rows of ``features`` (C, gh, gw) at the True cells of ``cells`` (gh, gw)."""
    return np.ascontiguousarray(features[:, cells].T, dtype=np.float32)


def thinned(rows: np.ndarray, limit: int = MAX_DISTANCE_CELLS) -> np.ndarray:
    """At most ``limit`` of ``rows`` (N, C): every k-th row when there are more."""
    if len(rows) <= limit:
        return rows
    step = math.ceil(len(rows) / limit)
    return rows[::step]


def earth_movers_distance(first: np.ndarray, second: np.ndarray) -> float:
    """P²SAM's distance between two sets of cell features.

    Parameters
    ----------
    first, second : (N, C) and (M, C) float
        Raw (not normalised) SAM features, as P²SAM compares them; each set is
        thinned to :data:`MAX_DISTANCE_CELLS` rows.

    Returns
    -------
    float
        ``ot.emd2`` with uniform weights on the squared Euclidean cost
        ``ot.dist``; ``inf`` when either set is empty (P²SAM's code returns a
        large constant there, or fails on an empty mask).
    """
    if len(first) == 0 or len(second) == 0:
        return math.inf
    a = thinned(np.asarray(first, dtype=np.float64))
    b = thinned(np.asarray(second, dtype=np.float64))
    cost = ot.dist(a, b)
    return float(ot.emd2(ot.unif(len(a)), ot.unif(len(b)), cost, numItermax=_EMD_ITERATIONS))
