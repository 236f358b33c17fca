"""What PerSAM learns from references: one Concept, or one per label value."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    # Only an annotation: concepts (and reading concept files) need no torch.
    from napari_persam.core.engine.geometry import SamGeometry


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
    negatives : (H, W) bool or None
        Regions of this reference the user marked "not this" (never overlapping
        ``mask``), or None.
    """

    features: np.ndarray
    mask: np.ndarray
    geometry: SamGeometry
    foreground_cells: np.ndarray
    negatives: np.ndarray | None = None


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
        Mean painted area per reference in pixels (0 if unknown).
    object_diameter : float
        Median equivalent diameter of the painted pieces in pixels (0 if unknown):
        sets the default spacing of instance candidates and the tiles' overlap.
    pixels_per_cell : float or None
        The scale the concept was learned at, in image pixels per feature cell, when
        the object was too small for the whole-image scale: images larger than one
        SAM input at this scale are segmented in tiles. ``None``: the whole image
        (SAM's own geometry, as for objects big enough; also concept files written
        before this existed).
    part_cells : (N, C) float32 or None
        Raw features of the reference objects' cells, pooled over the references
        (the cells that made ``target_embedding``): what a result's cells are
        compared with (earth mover's distance) and what part prototypes are
        clustered from. ``None`` for concepts of format-1 files.
    part_prototypes : (P, C) float32 or None
        Unit-length part prototypes (k-means of ``part_cells``) for each part count
        learned, stacked; ``part_groups`` (P,) int32 gives each row's count.
    background_prototypes : (B, C) float32 or None
        Unit-length prototypes of the references' background cells for each count
        learned, stacked; ``background_groups`` (B,) int32 gives each row's count.
    negative_prototypes : (U, C) float32 or None
        Unit-length mean features of the regions the user marked "not this", one
        per region (a negatives layer, or objects deleted from a result).
    object_distance, background_distance : float
        Earth mover's distance between the references' object cells (0 for one
        reference: the mean distance of each reference to the others), and from the
        object cells to the background cells: the scale on which instances are
        judged (see :attr:`distance_threshold`). 0 if unknown.
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
    part_cells: np.ndarray | None = field(default=None, repr=False)
    part_prototypes: np.ndarray | None = field(default=None, repr=False)
    part_groups: np.ndarray | None = field(default=None, repr=False)
    background_prototypes: np.ndarray | None = field(default=None, repr=False)
    background_groups: np.ndarray | None = field(default=None, repr=False)
    negative_prototypes: np.ndarray | None = field(default=None, repr=False)
    object_distance: float = 0.0
    background_distance: float = 0.0
    object_diameter: float = 0.0
    pixels_per_cell: float | None = None

    def __post_init__(self) -> None:
        target = np.asarray(self.target_embedding, dtype=np.float32).reshape(-1)
        object.__setattr__(self, "target_embedding", target)
        shots = self.shot_embeddings
        shots = target[None] if shots is None else np.asarray(shots, dtype=np.float32)
        if shots.ndim != 2 or shots.shape[1] != target.shape[0]:
            raise ValueError(f"shot_embeddings must be (K, {target.shape[0]}), got {shots.shape}.")
        object.__setattr__(self, "shot_embeddings", shots)
        width = target.shape[0]
        for name in ("part_cells", "negative_prototypes"):
            self._check_rows(name, width)
        for name, groups in (
            ("part_prototypes", "part_groups"),
            ("background_prototypes", "background_groups"),
        ):
            rows = self._check_rows(name, width)
            counts = getattr(self, groups)
            if (rows is None) != (counts is None):
                raise ValueError(f"{name} and {groups} go together; got only one of them.")
            if counts is not None:
                counts = np.asarray(counts, dtype=np.int32).reshape(-1)
                if len(counts) != len(rows):
                    raise ValueError(f"{groups} needs one count per row of {name}.")
                object.__setattr__(self, groups, counts)

    def _check_rows(self, name: str, width: int) -> np.ndarray | None:
        rows = getattr(self, name)
        if rows is None:
            return None
        rows = np.asarray(rows, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != width or not np.isfinite(rows).all():
            raise ValueError(f"{name} must be finite (N, {width}), got shape {rows.shape}.")
        object.__setattr__(self, name, rows)
        return rows

    @property
    def is_finetuned(self) -> bool:
        return self.mask_weights is not None

    @property
    def similarity_threshold(self) -> float:
        """Halfway between object and background similarity: the default bar for
        instance candidates and for a propagated mask to still count as the object."""
        return (self.object_similarity + self.background_similarity) / 2

    @property
    def distance_threshold(self) -> float | None:
        """Halfway between the object's and the background's distance to the reference:
        the default bar above which an instance no longer looks like the reference
        (``None`` when the concept has no distances, e.g. from a format-1 file)."""
        if self.background_distance <= self.object_distance:
            return None
        return (self.object_distance + self.background_distance) / 2


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


def check_concept(concept: object, fingerprint: str) -> Concept:
    """``concept`` if it is a Concept learned with the model of ``fingerprint``.

    Raises
    ------
    TypeError
        If it is not a :class:`Concept`.
    ValueError
        If it was learned with another model (or other weights).
    """
    if not isinstance(concept, Concept):
        raise TypeError(f"Expected a Concept from PerSAM.learn, got {type(concept).__name__}.")
    if concept.model_fingerprint != fingerprint:
        raise ValueError(
            "This concept was learned with a different model (or other weights) than this "
            "engine's; learn it again with this model."
        )
    return concept


def combine_concepts(concepts: Mapping[int, Concept]) -> Concept | ClassConcepts:
    """What the engine segments with for concepts keyed by label value.

    One value gives its :class:`Concept` itself (the caller paints it with that
    value); several give :class:`ClassConcepts`, whose results hold the values.
    """
    if not concepts:
        raise ValueError("No concept given.")
    if len(concepts) == 1:
        return next(iter(concepts.values()))
    return ClassConcepts(dict(concepts))
