"""Bilinear mask upscaling computed only where it matters: SAM's two resizes as taps.

``Sam.postprocess_masks`` upscales 256 x 256 mask logits to SAM's 1024 px frame, crops
the padding and resizes to the image (``F.interpolate``, bilinear, corners not
aligned). Every upscaled value is a convex combination of a few neighbouring logits,
so the taps of both stages, per axis, say which image pixels a logit reaches and let
a crop, a single row or a single column be computed alone, with the same arithmetic
as the whole. :class:`~.geometry.SamGeometry` uses them for small masks, for whether
a mask is empty, and for a mask's box.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

# Margin, relative to the largest logit an upscaled value is made from, past which a
# value computed here is on the same side of the threshold in torch's kernel too (the
# two differ by a few float32 roundings of those logits: 2e-5 for logits up to 70;
# a kernel built without fused multiply-adds would differ by at most 6e-5 of them).
ROUNDING_MARGIN = 1e-4


def rounding_margin(logits: np.ndarray) -> float:
    """How near the threshold a value upscaled from ``logits`` may be and still be trusted."""
    return ROUNDING_MARGIN * max(1.0, float(np.abs(logits).max(initial=0.0)))


@dataclass(frozen=True)
class _Taps:
    """One axis of ``F.interpolate(mode="bilinear", align_corners=False)``'s sampling."""

    low: np.ndarray  # (out,) int64 first source index
    high: np.ndarray  # (out,) int64 second source index
    weight_low: np.ndarray  # (out,) float32
    weight_high: np.ndarray  # (out,) float32

    @classmethod
    def of(cls, in_size: int, out_size: int) -> _Taps:
        # torch's source index, max(scale (dst + 0.5) - 0.5, 0), in float32 as torch,
        # whose compiled kernel fuses the multiply and subtract (one rounding, not two:
        # exact in float64, then rounded). Two roundings move a weight by up to 6e-5
        # at indices near 1024, and upscaled logits by 1e-3.
        scale = np.float32(in_size) / np.float32(out_size)
        shifted = np.arange(out_size, dtype=np.float32) + np.float32(0.5)
        source = (np.float64(scale) * shifted.astype(np.float64) - 0.5).astype(np.float32)
        source = np.maximum(source, np.float32(0.0))
        low = np.minimum(source.astype(np.int64), in_size - 1)
        weight_high = np.clip(source - low.astype(np.float32), 0.0, 1.0).astype(np.float32)
        high = np.where(low < in_size - 1, low + 1, low)
        return cls(low, high, (np.float32(1.0) - weight_high).astype(np.float32), weight_high)

    def take(self, start: int, stop: int, base: int) -> _Taps:
        """Outputs ``start:stop``, with source indices relative to ``base``."""
        return _Taps(
            self.low[start:stop] - base,
            self.high[start:stop] - base,
            self.weight_low[start:stop],
            self.weight_high[start:stop],
        )


@dataclass(frozen=True)
class _Plan:
    grid_range: slice
    first: _Taps
    second: _Taps


@dataclass(frozen=True)
class AxisTaps:
    """Both upscaling stages along one axis: grid -> SAM's frame (cropped) -> image."""

    first: _Taps  # grid -> the resized image inside SAM's frame
    second: _Taps  # resized image -> original pixels

    @property
    def size(self) -> int:
        """Number of outputs (image pixels along this axis)."""
        return len(self.second.low)

    def plan(self, lowest: int, highest: int) -> tuple[int, int, _Plan]:
        """Output range that depends on grid indices ``lowest..highest``, and its taps."""
        reach_low = self.first.low[self.second.low]  # lowest grid index of each output
        reach_high = self.first.high[self.second.high]
        inside = np.flatnonzero((reach_high >= lowest) & (reach_low <= highest))
        if inside.size == 0:
            return 0, 0, _Plan(slice(0, 0), self.first, self.second)
        out0, out1 = int(inside[0]), int(inside[-1]) + 1
        return out0, out1, self.window(out0, out1)

    def window(self, out0: int, out1: int) -> _Plan:
        """The grid range and taps that outputs ``out0:out1`` are computed from."""
        mid0 = int(self.second.low[out0:out1].min())
        mid1 = int(self.second.high[out0:out1].max()) + 1
        grid0 = int(self.first.low[mid0:mid1].min())
        grid1 = int(self.first.high[mid0:mid1].max()) + 1
        return _Plan(
            slice(grid0, grid1),
            self.first.take(mid0, mid1, grid0),
            self.second.take(out0, out1, mid0),
        )


@functools.lru_cache(maxsize=16)
def upscaling_taps(
    grid_hw: tuple[int, int],
    input_side: int,
    resized_hw: tuple[int, int],
    original_hw: tuple[int, int],
) -> tuple[AxisTaps, AxisTaps]:
    """Row and column taps from a (grid_h, grid_w) logit grid on SAM's square frame of
    ``input_side`` px, through the image's resized place in it, to its original pixels."""
    rh, rw = resized_hw
    height, width = original_hw
    rows = AxisTaps(_Taps.of(grid_hw[0], input_side).take(0, rh, 0), _Taps.of(rh, height))
    cols = AxisTaps(_Taps.of(grid_hw[1], input_side).take(0, rw, 0), _Taps.of(rw, width))
    return rows, cols


def upscale(values: np.ndarray, rows: _Taps, cols: _Taps) -> np.ndarray:
    """Bilinear sampling of a 2D tensor at the given taps, along columns then rows."""
    across = values[:, cols.low] * cols.weight_low + values[:, cols.high] * cols.weight_high
    return (
        across[rows.low] * rows.weight_low[:, None] + across[rows.high] * rows.weight_high[:, None]
    )


def upscale_window(logits: np.ndarray, rows: _Plan, cols: _Plan) -> tuple[np.ndarray, float]:
    """The image pixels of a planned window of rows and columns, upscaled from ``logits``
    (SAM's frame first, then the image; columns first in each, as torch), and the
    :func:`rounding_margin` of the logits they come from."""
    crop = logits[rows.grid_range, cols.grid_range]
    stage = upscale(crop, rows.first, cols.first)
    return upscale(stage, rows.second, cols.second), rounding_margin(crop)


#: Image rows (or columns) computed at a time while looking for a box's edge.
_EDGE_BAND = 8


class TooClose(Exception):
    """A value that decides an edge is within float rounding of the threshold."""


@dataclass(frozen=True)
class EdgeScan:
    """The first image row or column of an upscaled mask that holds a pixel above."""

    values: np.ndarray
    rows: AxisTaps
    cols: AxisTaps
    threshold: float

    def block(self, rows: tuple[int, int], cols: tuple[int, int]) -> tuple[np.ndarray, float]:
        """Upscaled values of image rows ``rows[0]:rows[1]``, columns ``cols[0]:cols[1]``,
        and their :func:`rounding_margin`."""
        return upscale_window(self.values, self.rows.window(*rows), self.cols.window(*cols))

    def first(
        self, start: int, stop: int, across: tuple[int, int], *, rows: bool, forward: bool
    ) -> int | None:
        """The first line of ``start:stop`` (from ``start`` or, not ``forward``, from the
        end) with a value above the threshold, looking at ``across`` only; None if none."""
        edges = range(start, stop, _EDGE_BAND) if forward else range(stop, start, -_EDGE_BAND)
        for edge in edges:
            low, high = (
                (edge, min(edge + _EDGE_BAND, stop))
                if forward
                else (max(edge - _EDGE_BAND, start), edge)
            )
            if rows:
                block, margin = self.block((low, high), across)
            else:
                block, margin = self.block(across, (low, high))
                block = block.T
            clearly_above = (block > self.threshold + margin).any(axis=1)
            clearly_below = (block < self.threshold - margin).all(axis=1)
            lines = range(high - low) if forward else range(high - low - 1, -1, -1)
            for line in lines:
                if clearly_above[line]:
                    return low + line
                if not clearly_below[line]:
                    raise TooClose
        return None
