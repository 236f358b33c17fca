"""What PerSAM learns from a reference (Concept) and what it returns (Segmentation)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from napari_persam.core.geometry import SamGeometry


@dataclass(frozen=True, eq=False)
class Shot:
    """One reference (image, mask) as the engine saw it, kept for PerSAM-F fitting.

    Attributes
    ----------
    features : (C, gh, gw) float32
        The reference image's SAM embedding (on the CPU, so a concept does not pin
        GPU memory).
    mask : (H, W) bool
        The reference mask in image pixels.
    geometry : SamGeometry
        How the reference image maps onto the feature grid.
    foreground_cells : (gh, gw) bool
        Cells whose features made the target embedding.
    """

    features: np.ndarray
    mask: np.ndarray
    geometry: SamGeometry
    foreground_cells: np.ndarray


@dataclass(frozen=True, eq=False)
class Concept:
    """A learned object concept.

    Attributes
    ----------
    target_embedding : (C,) float32
        Mean SAM feature of the reference object's foreground cells (C = 256 for SAM).
    mask_weights : (3,) float32 or None
        PerSAM-F weights over SAM's three multimask logits (they sum to 1), or
        ``None`` for training-free PerSAM.
    model_fingerprint : str
        Identity of the model's architecture and weights the concept was learned with.
    model_name : str
        Registry name of that model, if the engine knew it ("" otherwise).
    shots : tuple of Shot
        The references, needed by :meth:`PerSAM.finetune`.
    finetune_losses : (steps,) float32 or None
        PerSAM-F training loss per step, for inspection.
    """

    target_embedding: np.ndarray
    model_fingerprint: str
    model_name: str = ""
    mask_weights: np.ndarray | None = None
    shots: tuple[Shot, ...] = field(default=(), repr=False)
    finetune_losses: np.ndarray | None = field(default=None, repr=False)

    @property
    def is_finetuned(self) -> bool:
        return self.mask_weights is not None


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
    """

    mask: np.ndarray
    similarity: np.ndarray
    score: float
    points: np.ndarray
    point_labels: np.ndarray
    box: np.ndarray | None = None

    @property
    def found(self) -> bool:
        return bool(self.mask.any())

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))
