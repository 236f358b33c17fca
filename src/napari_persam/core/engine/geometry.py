"""SAM's resize-and-pad geometry, and the one place where (y, x) becomes SAM's (x, y).

SAM resizes an image so its longest side is ``img_size`` (1024), pads bottom and
right to a square, and encodes it to a ``grid`` x ``grid`` feature map (64 x 64),
one cell per 16 x 16 padded pixels. Everything that moves between image pixels,
feature cells and SAM prompts goes through :class:`SamGeometry`, so non-square
images stay aligned (the official PerSAM code stretches its attention map over the
padding instead).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from napari_persam.core.engine.postprocess import tight_box
from napari_persam.core.engine.upscaling import (
    AxisTaps,
    EdgeScan,
    TooClose,
    upscale_window,
    upscaling_taps,
)


def resized_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """Shape after resizing so the longest side is ``long_side`` (SAM's rounding)."""
    scale = long_side / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


@dataclass(frozen=True)
class SamGeometry:
    """Where an image of ``original_hw`` lands in SAM's input and feature grid.

    Attributes
    ----------
    original_hw : (int, int)
        Image height and width in pixels.
    img_size : int
        Side of SAM's square input (1024 for the published models).
    grid_hw : (int, int)
        Feature grid (64, 64 for the published models).
    frame_side : int or None
        The length in image pixels that SAM's input side stands for. ``None`` is
        SAM's own rule, the image's longest side (a whole image). A tile of a large
        image sets the tile side, so every tile, a partial one at the image border
        too, is encoded at the same pixels per feature cell (and padded like SAM pads).
    """

    original_hw: tuple[int, int]
    img_size: int = 1024
    grid_hw: tuple[int, int] = (64, 64)
    frame_side: int | None = None

    def __post_init__(self) -> None:
        height, width = self.original_hw
        if height < 1 or width < 1:
            raise ValueError(f"Image of shape {self.original_hw} has no pixels.")
        if self.frame_side is not None and self.frame_side < max(height, width):
            raise ValueError(
                f"frame_side {self.frame_side} is shorter than the image {self.original_hw}."
            )
        short = min(self.resized_hw)
        if short < self.cell_size:
            raise ValueError(
                f"Image of shape {self.original_hw} is too thin: SAM resizes its longest side "
                f"to {self.img_size} px, which leaves its short side {short} px, less than one "
                f"feature cell ({self.cell_size:g} px). Crop it to a less elongated region."
            )

    @property
    def resized_hw(self) -> tuple[int, int]:
        """Image shape inside SAM's input, before padding."""
        if self.frame_side is None:
            return resized_shape(*self.original_hw, self.img_size)
        scale = self.img_size / self.frame_side
        height, width = self.original_hw
        return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))

    @property
    def pixels_per_cell(self) -> float:
        """Image pixels per feature cell along the longest side (16 x side / 1024 for SAM)."""
        frame = self.frame_side if self.frame_side is not None else max(self.original_hw)
        return frame / self.grid_hw[1]

    @property
    def cell_size(self) -> float:
        """Side of one feature cell in SAM input pixels (16 for the published models)."""
        return self.img_size / self.grid_hw[1]

    @property
    def valid_grid_hw(self) -> tuple[int, int]:
        """Feature cells that hold any image (the rest cover padding only)."""
        rh, rw = self.resized_hw
        return math.ceil(rh / self.cell_size), math.ceil(rw / self.cell_size)

    def valid_cells(self) -> np.ndarray:
        """(gh, gw) bool: cells that overlap the image rather than only padding."""
        valid = np.zeros(self.grid_hw, dtype=bool)
        vh, vw = self.valid_grid_hw
        valid[:vh, :vw] = True
        return valid

    # ---------------------------------------------------------------- masks -> grid
    def mask_coverage(self, mask: np.ndarray) -> np.ndarray:
        """Fraction of each feature cell covered by ``mask``.

        Parameters
        ----------
        mask : (H, W) bool or float in [0, 1]
            In original image pixels.

        Returns
        -------
        (gh, gw) float32 in [0, 1]
            Computed in SAM's geometry: the mask is resized to the image's place in
            SAM's input (each pixel's area kept), padded with zeros, and averaged per
            cell.
        """
        if tuple(mask.shape) != tuple(self.original_hw):
            raise ValueError(f"Mask shape {mask.shape} != image shape {self.original_hw}.")
        values = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]
        # Area fractions, not a smooth resize: each original pixel keeps its square
        # footprint when enlarged (nearest) and is averaged by area when shrunk.
        upsampling = self.resized_hw[0] >= self.original_hw[0]
        resized = F.interpolate(
            values, size=self.resized_hw, mode="nearest-exact" if upsampling else "area"
        ).clamp_(0.0, 1.0)
        padded = F.pad(
            resized, (0, self.img_size - self.resized_hw[1], 0, self.img_size - self.resized_hw[0])
        )
        cell_h = self.img_size // self.grid_hw[0]
        cell_w = self.img_size // self.grid_hw[1]
        coverage = F.avg_pool2d(padded, kernel_size=(cell_h, cell_w))
        return coverage[0, 0].numpy().astype(np.float32)

    # ---------------------------------------------------------------- grid -> image
    def grid_to_image(self, grid: torch.Tensor) -> torch.Tensor:
        """Bring values on the feature grid back to original image pixels.

        Parameters
        ----------
        grid : (..., gh, gw) float tensor
            Values on the padded feature grid (e.g. similarity, mask logits of any
            square resolution in SAM's padded frame).

        Returns
        -------
        (..., H, W) float tensor
            Upsampled to SAM's input, padding cropped off, resized to the original
            shape: the inverse of the image's resize-and-pad (what
            ``Sam.postprocess_masks`` does with mask logits).
        """
        return self.grid_to_shape(grid, self.original_hw)

    def grid_to_shape(self, grid: torch.Tensor, shape_hw: tuple[int, int]) -> torch.Tensor:
        """Like :meth:`grid_to_image` but resized to ``shape_hw`` (a smaller copy of the image)."""
        lead = grid.shape[:-2]
        values = grid.reshape(-1, 1, *grid.shape[-2:]).float()
        full = F.interpolate(
            values, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False
        )
        rh, rw = self.resized_hw
        out = F.interpolate(
            full[..., :rh, :rw], size=tuple(shape_hw), mode="bilinear", align_corners=False
        )
        return out.reshape(*lead, *shape_hw)

    def mask_from_logits(self, logits: torch.Tensor, threshold: float = 0.0) -> np.ndarray:
        """``grid_to_image(logits) > threshold``, computed only where it can be True.

        Parameters
        ----------
        logits : (s, s) float tensor
            Mask logits on SAM's padded frame (256 x 256 for SAM's decoder).
        threshold : float

        Returns
        -------
        (H, W) bool
            The same mask as upscaling everything (to float rounding): each
            upscaled value is a convex combination of a few neighbouring logits, so
            only output pixels whose neighbourhood holds a logit above the threshold
            are computed, with the taps of ``F.interpolate`` (bilinear, corners not
            aligned), columns then rows. An object of 30 px in a 1280 x 1280 image
            costs a few thousand pixels instead of 2.6 million.
        """
        height, width = self.original_hw
        mask = np.zeros((height, width), dtype=bool)
        # numpy, one thread: these are small arrays, where torch's thread pool costs
        # more than the arithmetic.
        values = logits.detach().float().cpu().numpy()
        reach = self._reach(values, threshold)
        if reach is None:
            return mask
        (r0, r1, row_plan), (c0, c1, col_plan), _ = reach
        if (r1 - r0) * (c1 - c0) > height * width // 4:
            # A large object: torch's own kernel beats gathering.
            return (self.grid_to_image(logits.detach().float().cpu()) > threshold).numpy()
        upscaled, _ = upscale_window(values, row_plan, col_plan)
        mask[r0:r1, c0:c1] = upscaled > threshold
        return mask

    def mask_from_logits_any(self, logits: torch.Tensor, threshold: float = 0.0) -> bool:
        """``mask_from_logits(logits, threshold).any()``, mostly without forming the mask.

        No logit above the threshold: empty (every upscaled value is a convex
        combination of logits). Otherwise the few output pixels that sample the
        highest logit are computed; one of them clearly above the threshold (by more
        than float rounding could move it) answers True. Only when neither settles it
        is the mask formed. PerSAM's cascade needs just this of its first mask.
        """
        values = logits.detach().float().cpu().numpy()
        if not (values > threshold).any():
            return False
        row, col = np.unravel_index(int(np.argmax(values)), values.shape)
        row_taps, col_taps = self._taps(values.shape)
        r0, r1, row_plan = row_taps.plan(int(row), int(row))
        c0, c1, col_plan = col_taps.plan(int(col), int(col))
        if r1 > r0 and c1 > c0:
            around, margin = upscale_window(values, row_plan, col_plan)
            if float(around.max()) > threshold + margin:
                return True
        return bool(self.mask_from_logits(logits, threshold).any())

    def box_from_logits(self, logits: torch.Tensor, threshold: float = 0.0) -> np.ndarray | None:
        """The tight box (y0, x0, y1, x1) of ``mask_from_logits(logits, threshold)``, or None.

        The cascade needs only the box of its intermediate masks. Image rows are
        computed inward from both ends of the rows the logits reach, a band at a
        time, until one holds a pixel above the threshold; then columns, within
        those rows. A deciding value nearer the threshold than float rounding (these
        taps against torch's kernel) has the mask formed instead, so the box is
        always the formed mask's.
        """
        values = logits.detach().float().cpu().numpy()
        reach = self._reach(values, threshold)
        if reach is None:
            return None
        (r0, r1, _), (c0, c1, _), (row_taps, col_taps) = reach
        scan = EdgeScan(values, row_taps, col_taps, threshold)
        try:
            top = scan.first(r0, r1, (c0, c1), rows=True, forward=True)
            if top is None:
                return None
            bottom = scan.first(r0, r1, (c0, c1), rows=True, forward=False)
            left = scan.first(c0, c1, (top, bottom + 1), rows=False, forward=True)
            right = scan.first(c0, c1, (top, bottom + 1), rows=False, forward=False)
        except TooClose:
            return tight_box(self.mask_from_logits(logits, threshold))
        return np.array([top, left, bottom, right], dtype=np.float64)

    def _reach(self, values: np.ndarray, threshold: float):
        """The image rows and columns the logits above ``threshold`` can reach, each as
        ``(start, stop, plan)``, and the taps; None if they reach no pixel."""
        above = values > threshold
        rows = np.flatnonzero(above.any(axis=1))
        if rows.size == 0:
            return None
        cols = np.flatnonzero(above.any(axis=0))
        row_taps, col_taps = self._taps(values.shape)
        row_reach = row_taps.plan(int(rows[0]), int(rows[-1]))
        col_reach = col_taps.plan(int(cols[0]), int(cols[-1]))
        if row_reach[1] <= row_reach[0] or col_reach[1] <= col_reach[0]:
            return None
        return row_reach, col_reach, (row_taps, col_taps)

    def _taps(self, logits_hw: tuple[int, ...]) -> tuple[AxisTaps, AxisTaps]:
        return upscaling_taps(
            (int(logits_hw[-2]), int(logits_hw[-1])),
            self.img_size,
            self.resized_hw,
            self.original_hw,
        )

    # ------------------------------------------------------- prompts: (y, x) -> (x, y)
    def points_to_sam(self, points_yx: np.ndarray) -> np.ndarray:
        """Image points to SAM prompt coordinates.

        Parameters
        ----------
        points_yx : (..., 2) float, (y, x) in original pixels

        Returns
        -------
        (..., 2) float32, (x, y) in SAM input pixels
            The only place in the package where (y, x) is swapped to (x, y).
        """
        points = np.asarray(points_yx, dtype=np.float64)
        rh, rw = self.resized_hw
        height, width = self.original_hw
        sam_xy = np.empty_like(points)
        sam_xy[..., 0] = points[..., 1] * (rw / width)
        sam_xy[..., 1] = points[..., 0] * (rh / height)
        return sam_xy.astype(np.float32)

    def box_to_sam(self, box_yxyx: np.ndarray) -> np.ndarray:
        """A (..., 4) box (y0, x0, y1, x1) in image pixels to SAM's (x0, y0, x1, y1)."""
        box = np.asarray(box_yxyx, dtype=np.float64)
        corners = np.stack([box[..., 0:2], box[..., 2:4]], axis=-2)  # (..., 2, 2) yx
        return self.points_to_sam(corners).reshape(*box.shape[:-1], 4)
