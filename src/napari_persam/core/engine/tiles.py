"""Small objects in large images: the learned scale and the tiles a run encodes.

SAM squeezes every image to its 1024-pixel input, so one feature cell covers
``longest side / 64`` image pixels: 64 px in a 4096 x 4096 image, where a 15-px
nucleus covers 5 % of one cell and cannot be told from background. PerSAM then
learns from the reference at the scale where the painted object spans
``object_cells`` cells across (:func:`learned_pixels_per_cell`), and every image
larger than one SAM input at that scale is cut into overlapping tiles of
``64 cells x pixels_per_cell`` pixels (:func:`plan_tiles`), each encoded at that
same scale (a tile at the image border is padded, as SAM pads, not stretched).
An object that is big enough at the whole-image scale (a polyp in an endoscopy
frame) keeps SAM's own whole-image geometry: exactly PerSAM as before.

Every pixel belongs to the *core* of one tile, the part nearer that tile's centre
than any other's: results for a pixel come from the tile that holds it best, not
from one where it sits at the border.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from napari_persam.core.config import PerSAMConfig
from napari_persam.core.errors import InputError, option

#: Overlap between tiles, in object diameters, when not given.
OVERLAP_DIAMETERS = 3.0
#: The smallest painted object that has a scale: 2 x 2 pixels.
MIN_OBJECT_PIXELS = 2.0

Window = tuple[int, int, int, int]


def piece_diameters(mask: np.ndarray) -> np.ndarray:
    """Equivalent diameters (of a disc of the same area) of the mask's pieces, in px.

    Parameters
    ----------
    mask : (H, W) bool
        The painted object(s); pieces are 8-connected components.
    """
    mask = np.asarray(mask, bool)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return np.zeros(0)
    # Only the painted box is labelled: an 8192 x 8192 label image would be 256 MiB.
    box = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    labels, _ = ndimage.label(box, structure=np.ones((3, 3), bool))
    areas = np.bincount(labels.ravel())[1:]
    return 2.0 * np.sqrt(areas / math.pi)


def object_diameter(masks: Sequence[np.ndarray]) -> float:
    """Median equivalent diameter of the pieces of all ``masks`` (0 when none)."""
    diameters = np.concatenate([piece_diameters(mask) for mask in masks] or [np.zeros(0)])
    return float(np.median(diameters)) if diameters.size else 0.0


def learned_pixels_per_cell(
    diameter: float, *, whole_image_pixels_per_cell: float, object_cells: float
) -> float | None:
    """The pixels per feature cell to learn and segment at; ``None`` for the whole image.

    The coarsest scale at which an object of ``diameter`` pixels spans at least
    ``object_cells`` cells: never finer than needed, and ``None`` when the
    whole-image scale is already fine enough.

    Raises
    ------
    InputError
        For an object smaller than 2 x 2 pixels.
    """
    if diameter < MIN_OBJECT_PIXELS:
        raise InputError(
            f"The painted object is {diameter:.1f} px across, smaller than "
            f"{MIN_OBJECT_PIXELS:g} x {MIN_OBJECT_PIXELS:g} pixels, so no scale can be learned "
            "from it; paint the whole object (at least a few pixels across)."
        )
    needed = diameter / object_cells
    if whole_image_pixels_per_cell <= needed:
        return None
    return float(needed)


@dataclass(frozen=True)
class TilePlan:
    """The windows one image is encoded in.

    Attributes
    ----------
    image_hw : (int, int)
        The image's height and width.
    tile_side : int or None
        Side of a tile in image pixels (the length SAM's input side stands for);
        ``None`` when the whole image is one encoding in SAM's own geometry.
    overlap : int
        Pixels shared by neighbouring tiles.
    ys, xs : tuple of int
        Top and left edges of the tile rows and columns.
    grid : int
        Feature cells along SAM's input side.
    """

    image_hw: tuple[int, int]
    tile_side: int | None
    overlap: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    grid: int = 64

    @property
    def tiled(self) -> bool:
        return self.tile_side is not None

    @property
    def shape(self) -> tuple[int, int]:
        """Tile rows and columns."""
        return len(self.ys), len(self.xs)

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)

    @property
    def pixels_per_cell(self) -> float | None:
        """Image pixels per feature cell of the tiles (``None``: the whole image)."""
        return None if self.tile_side is None else self.tile_side / self.grid

    def windows(self) -> list[Window]:
        """Every window ``(y0, x0, y1, x1)``, row by row; clipped to the image."""
        height, width = self.image_hw
        side = self.tile_side or max(height, width)
        return [
            (y, x, min(y + side, height), min(x + side, width)) for y in self.ys for x in self.xs
        ]

    def cores(self) -> list[Window]:
        """The core of each window (same order): the pixels it holds best; they tile the image."""
        row_cuts = _cuts(self.ys, self.tile_side, self.image_hw[0])
        col_cuts = _cuts(self.xs, self.tile_side, self.image_hw[1])
        return [
            (row_cuts[i], col_cuts[j], row_cuts[i + 1], col_cuts[j + 1])
            for i in range(len(self.ys))
            for j in range(len(self.xs))
        ]

    def index_at(self, y: float, x: float) -> int:
        """The window whose core holds pixel ``(y, x)``."""
        row_cuts = _cuts(self.ys, self.tile_side, self.image_hw[0])
        col_cuts = _cuts(self.xs, self.tile_side, self.image_hw[1])
        row = int(np.searchsorted(row_cuts, y, side="right")) - 1
        col = int(np.searchsorted(col_cuts, x, side="right")) - 1
        row = min(max(row, 0), len(self.ys) - 1)
        col = min(max(col, 0), len(self.xs) - 1)
        return row * len(self.xs) + col

    def blend_weights(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """1D weights per tile row and column for blending overlaps smoothly.

        A tile's weight at a pixel is ``rows[i][y] * cols[j][x]``: 1 inside, falling
        linearly to near 0 across the overlap towards a neighbouring tile (not at
        the image border). Their sums over tiles are separable too, so a blended
        map needs one (H, W) accumulator only.
        """
        side = self.tile_side or max(self.image_hw)
        rows = [
            _ramp(y, side, self.image_hw[0], self.overlap, first=i == 0, last=i == len(self.ys) - 1)
            for i, y in enumerate(self.ys)
        ]
        cols = [
            _ramp(x, side, self.image_hw[1], self.overlap, first=j == 0, last=j == len(self.xs) - 1)
            for j, x in enumerate(self.xs)
        ]
        return rows, cols

    def describe(self) -> str:
        """A few words for a status line: "12 x 12 tiles of 640 px" or "the whole image"."""
        if not self.tiled:
            return "the whole image"
        rows, cols = self.shape
        return f"{rows} x {cols} tiles of {self.tile_side} px"


def _positions(length: int, side: int, overlap: int) -> tuple[int, ...]:
    """Tile starts along one axis: evenly spread, the last one flush with the end."""
    if length <= side:
        return (0,)
    stride = max(1, side - overlap)
    count = math.ceil((length - side) / stride) + 1
    return tuple(round(i * (length - side) / (count - 1)) for i in range(count))


def _cuts(starts: Sequence[int], side: int | None, length: int) -> np.ndarray:
    """Core boundaries along one axis: halfway through each overlap."""
    if side is None or len(starts) == 1:
        return np.array([0, length])
    middles = [(starts[i + 1] + starts[i] + side) // 2 for i in range(len(starts) - 1)]
    return np.array([0, *middles, length])


def _ramp(
    start: int, side: int, length: int, overlap: int, *, first: bool, last: bool
) -> np.ndarray:
    size = min(side, length - start)
    position = np.arange(size, dtype=np.float32) + 0.5
    width = max(float(overlap), 1.0)
    weight = np.ones(size, np.float32)
    if not first:
        weight = np.minimum(weight, position / width)
    if not last:
        weight = np.minimum(weight, (size - position) / width)
    return np.clip(weight, 1e-3, 1.0)


def plan_tiles(
    image_shape: Sequence[int],
    *,
    pixels_per_cell: float | None,
    tiling: str | int = "auto",
    overlap: int | None = None,
    object_diameter: float = 0.0,
    max_tiles: int = 256,
    grid: int = 64,
) -> TilePlan:
    """The windows an image of ``image_shape`` is encoded in.

    Parameters
    ----------
    image_shape : (H, W[, C])
    pixels_per_cell : float or None
        The concept's learned scale (``None``: the whole image).
    tiling : "auto", "off" or int
        See :class:`~napari_persam.core.config.PerSAMConfig`.
    overlap : int, optional
        Pixels shared by neighbouring tiles; default three object diameters, at
        least two feature cells, at most half a tile.
    object_diameter : float
        The reference object's diameter in pixels (for the default overlap).
    max_tiles : int
        More tiles than this raise an :class:`InputError` saying how to coarsen.
    grid : int
        Feature cells along SAM's input side (64).

    Returns
    -------
    TilePlan
        One whole-image window when no tiling is needed.
    """
    height, width = int(image_shape[0]), int(image_shape[1])
    whole = TilePlan((height, width), None, 0, (0,), (0,), grid)
    if tiling == "off" or (tiling == "auto" and pixels_per_cell is None):
        return whole
    side = int(tiling) if not isinstance(tiling, str) else max(grid, round(grid * pixels_per_cell))
    if max(height, width) <= side:
        return whole
    cell = side / grid
    if overlap is None:
        overlap = round(max(OVERLAP_DIAMETERS * object_diameter, 2 * cell))
    overlap = int(min(max(overlap, 0), side // 2))
    plan = TilePlan(
        (height, width),
        side,
        overlap,
        _positions(height, side, overlap),
        _positions(width, side, overlap),
        grid,
    )
    if len(plan) > max_tiles:
        rows, cols = plan.shape
        raise InputError(
            f"The image ({height} x {width} px) needs {len(plan)} tiles ({rows} x {cols} of "
            f"{side} px, {cell:.1f} px per feature cell) to see the object at its painted "
            f"scale, more than the limit of {max_tiles}. Coarsen the scale with a lower "
            f"{option('object_cells')} or a larger tile side in {option('tiling')}, raise "
            f"{option('max_tiles')}, or crop the image to the region of interest."
        )
    return plan


def plan_for(
    image_shape: Sequence[int],
    *,
    pixels_per_cell: float | None,
    object_diameter: float,
    config: PerSAMConfig,
    grid: int = 64,
) -> TilePlan:
    """:func:`plan_tiles` with the options of ``config`` (for a concept's scale and size)."""
    return plan_tiles(
        image_shape,
        pixels_per_cell=pixels_per_cell,
        tiling=config.tiling,
        overlap=config.tile_overlap,
        object_diameter=object_diameter,
        max_tiles=config.max_tiles,
        grid=grid,
    )


def plans_for(
    image_shape: Sequence[int],
    concepts: Iterable,
    *,
    config: PerSAMConfig,
    grid: int = 64,
) -> list[TilePlan]:
    """The plans a run encodes an image in for several concepts (one per distinct scale).

    ``concepts``: objects with ``pixels_per_cell`` and ``object_diameter`` (Concepts).
    Plans of the same tile side share their encodings through the cache, so
    ``sum(len(plan) for plan in plans)`` is what the image costs.
    """
    plans: dict[int | None, TilePlan] = {}
    for concept in concepts:
        plan = plan_for(
            image_shape,
            pixels_per_cell=concept.pixels_per_cell,
            object_diameter=concept.object_diameter,
            config=config,
            grid=grid,
        )
        plans.setdefault(plan.tile_side, plan)
    return list(plans.values())
