"""What PerSAM learns from a reference (Concept) and what it returns (Segmentation)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_persam.core.geometry import SamGeometry

if TYPE_CHECKING:  # pragma: no cover
    from napari_persam.core.config import PerSAMConfig


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
    shot_embeddings : (K, C) float32
        Mean foreground feature of each reference; the similarity map is the
        maximum over them, so every look of the object counts. Defaults to
        ``target_embedding[None]``.
    object_similarity, background_similarity : float
        Mean similarity of the references' object cells and of their background
        cells: the scale on which instance candidates and propagated masks are
        judged (see :attr:`similarity_threshold`).
    object_area : float
        Mean area of the reference objects in pixels (0 if unknown): sets the default
        spacing of instance candidates.
    """

    target_embedding: np.ndarray
    model_fingerprint: str
    model_name: str = ""
    mask_weights: np.ndarray | None = None
    shots: tuple[Shot, ...] = field(default=(), repr=False)
    finetune_losses: np.ndarray | None = field(default=None, repr=False)
    shot_embeddings: np.ndarray | None = field(default=None, repr=False)
    object_similarity: float = 1.0
    background_similarity: float = 0.0
    object_area: float = 0.0

    def __post_init__(self) -> None:
        target = np.asarray(self.target_embedding, dtype=np.float32).reshape(-1)
        object.__setattr__(self, "target_embedding", target)
        shots = self.shot_embeddings
        shots = target[None] if shots is None else np.asarray(shots, dtype=np.float32)
        if shots.ndim != 2 or shots.shape[1] != target.shape[0]:
            raise ValueError(f"shot_embeddings must be (K, {target.shape[0]}), got {shots.shape}.")
        object.__setattr__(self, "shot_embeddings", shots)

    @property
    def is_finetuned(self) -> bool:
        return self.mask_weights is not None

    def save(
        self,
        path: str | os.PathLike,
        *,
        config: PerSAMConfig | None = None,
        checkpoint_sha256: str | None = None,
        label_value: int = 1,
    ) -> Path:
        """Write this concept to a concept file (.npz arrays + JSON, never pickle).

        The references (``shots``) are not saved: a loaded concept segments but
        cannot be fine-tuned again. See :mod:`napari_persam.core.concept_io`.
        """
        from napari_persam.core.concept_io import save_concept

        return save_concept(
            self,
            path,
            config=config,
            checkpoint_sha256=checkpoint_sha256,
            label_value=label_value,
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> Concept:
        """Read a concept file holding one concept (no code is ever run from it)."""
        from napari_persam.core.concept_io import load_concept

        return load_concept(path)

    @property
    def similarity_threshold(self) -> float:
        """Halfway between object and background similarity: the default bar for
        instance candidates and for a propagated mask to still count as the object."""
        return (self.object_similarity + self.background_similarity) / 2


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


@dataclass(frozen=True, eq=False)
class ClassConcepts:
    """One concept per label value of a multi-class reference.

    Attributes
    ----------
    concepts : dict of int -> Concept
        Keyed by the reference's label values, in ascending order.
    """

    concepts: dict[int, Concept]

    def __post_init__(self) -> None:
        if not self.concepts:
            raise ValueError("ClassConcepts needs at least one labelled class.")
        ordered = {int(value): self.concepts[value] for value in sorted(self.concepts)}
        object.__setattr__(self, "concepts", ordered)

    @property
    def values(self) -> list[int]:
        return list(self.concepts)

    def __getitem__(self, value: int) -> Concept:
        return self.concepts[value]

    def __len__(self) -> int:
        return len(self.concepts)


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
    """

    labels: np.ndarray
    scores: np.ndarray
    similarity: np.ndarray
    classes: np.ndarray
    points: np.ndarray
    ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.ids is None:
            object.__setattr__(self, "ids", np.arange(1, len(self.scores) + 1, dtype=np.int32))

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
