"""Part-aware prompts and distribution-guided retrieval (P²SAM), and the reference check.

P²SAM (Zhao & Shen 2024, arXiv 2403.05433; code ``testing/test_utils/utils.py`` of
Zch0414/P2SAM, ``p2sam_perseg`` and ``p2sam_medical``) keeps PerSAM's cascade and
changes the prompts. For every part count n and background count n_neg:

* positive points at the similarity maxima of the n part prototypes (n = 1:
  PerSAM's mean embedding and its maximum);
* negative points at the maxima of the n_neg background prototypes (n_neg = 0:
  PerSAM's point of least similarity, to the mean of the part maps);
* target-guided attention from the mean of the part similarity maps.

Every (n, n_neg) runs the cascade; the mask kept is the one whose cell features are
closest to the reference object's (earth mover's distance, :mod:`.cells`). The
cascades of one n are decoded as one batch.

Fixed here, unlike the reference code: the attention map is standardised over the
image's own cells and not stretched over SAM's padding (PerSAM's bug, kept by
P²SAM); an empty mask is a candidate with infinite distance instead of a crash
(``p2sam_perseg`` takes ``x.min()`` of an empty mask); a part count with fewer
distinct cells than parts is skipped instead of failing in k-means or leaving an
empty cluster; padding cells are never background (see :mod:`.learning`).

Regions the user marked "not this" add a negative point where the image looks more
like them than like the concept, in both prompt modes.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F

from napari_persam.core.config import PerSAMConfig
from napari_persam.core.engine.cells import (
    cell_features,
    covered_cells_of_part,
    earth_movers_distance,
)
from napari_persam.core.engine.concepts import Concept
from napari_persam.core.engine.decoder import attention_bias
from napari_persam.core.engine.embeddings import ImageEmbedding
from napari_persam.core.engine.parts import (
    background_prototypes,
    negative_directions,
    part_prototypes,
)
from napari_persam.core.engine.postprocess import remove_small_components
from napari_persam.core.engine.prompting import Guidance, Prompter, PromptSet, extreme_points
from napari_persam.core.engine.results import Segmentation

Pair = tuple[int, int]


def prompt_pairs(config: PerSAMConfig) -> list[Pair]:
    """The (parts, negative parts) tried, in order; ``"persam"`` tries (1, 0) only."""
    if config.prompt_mode == "persam":
        return [(1, 0)]
    return [
        (parts, negatives)
        for parts in range(config.min_parts, config.max_parts + 1)
        for negatives in range(config.min_negative_parts, config.max_negative_parts + 1)
    ]


class ImageCells:
    """One encoded image's features on the CPU, the similarity maps and cells of its masks.

    Parameters
    ----------
    embedding : ImageEmbedding
    coverage : float
        The coverage rule of :func:`~.cells.covered_cells`.
    """

    def __init__(self, embedding: ImageEmbedding, coverage: float) -> None:
        self.embedding = embedding
        self.coverage = coverage
        self._features: np.ndarray | None = None
        self._unit: torch.Tensor | None = None

    @property
    def features(self) -> np.ndarray:
        """(C, gh, gw) float32 on the CPU."""
        if self._features is None:
            self._features = self.embedding.features[0].detach().cpu().numpy()
        return self._features

    def similarity_grids(self, directions: np.ndarray) -> torch.Tensor:
        """(K, gh, gw) cosine similarity of every cell to each of ``directions`` (K, C)."""
        if self._unit is None:
            self._unit = F.normalize(self.embedding.features[0].flatten(1), dim=0)
        rows = torch.as_tensor(directions, device=self._unit.device, dtype=self._unit.dtype)
        grids = F.normalize(rows, dim=1) @ self._unit
        return grids.reshape(-1, *self.embedding.features.shape[-2:]).clamp(-1.0, 1.0)

    def similarity_image(self, grid: torch.Tensor) -> np.ndarray:
        """(gh, gw) grid -> (H, W) float32 in image pixels (as the concept's map)."""
        image = self.embedding.geometry.grid_to_image(grid).clamp(-1.0, 1.0)
        return image.cpu().numpy().astype(np.float32, copy=False)

    def maxima(self, directions: np.ndarray) -> np.ndarray:
        """(K, 2) float, (y, x) of each direction's similarity maximum in image pixels."""
        grids = self.similarity_grids(directions)
        return np.stack([extreme_points(self.similarity_image(grid))[0] for grid in grids])

    def rows(self, mask: np.ndarray) -> np.ndarray:
        """(N, C) raw features of the cells that stand for ``mask`` (0 rows if empty)."""
        cells = covered_cells_of_part(self.embedding.geometry, mask, self.coverage)
        return cell_features(self.features, cells)


def user_negative_points(cells: ImageCells, concept: Concept, guidance: Guidance) -> np.ndarray:
    """(U, 2) (y, x): where the image looks most like each "not this" region.

    A point is kept only if the image there is more similar to that region than
    to the concept: in an image without such a thing, the maximum would otherwise
    fall on whatever is least unlike it, the object itself included.
    """
    if concept.negative_prototypes is None or not len(concept.negative_prototypes):
        return np.zeros((0, 2))
    points = []
    for grid in cells.similarity_grids(concept.negative_prototypes):
        image = cells.similarity_image(grid)
        best = extreme_points(image)[0]
        y, x = best.astype(int)
        if image[y, x] > guidance.similarity[y, x]:
            points.append(best)
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)


def segment_object(prompter: Prompter, embedding: ImageEmbedding, concept: Concept) -> Segmentation:
    """One object, prompted as ``prompter.config.prompt_mode`` says.

    Returns
    -------
    Segmentation
        With ``parts`` the (n, n_neg) kept and ``retrieval_distances`` the distance of
        every pair tried (``inf`` for an empty mask; empty when the concept has no
        reference cells). ``"persam"`` without user negatives gives exactly
        :meth:`Prompter.segment`'s result.
    """
    config = prompter.config
    guidance = prompter.guidance(embedding, concept)
    cells = ImageCells(embedding, config.foreground_coverage)
    user = user_negative_points(cells, concept, guidance)
    if config.prompt_mode == "persam" and not len(user):
        segmentation = prompter.segment(embedding, concept, guidance=guidance)
        distances = {}
        if concept.part_cells is not None:
            distances[(1, 0)] = _distance(cells, concept, segmentation.mask)
        return dataclasses.replace(segmentation, parts=(1, 0), retrieval_distances=distances)

    pairs = prompt_pairs(config)
    background = {
        count: cells.maxima(prototypes)
        for count in sorted({negatives for _, negatives in pairs if negatives > 0})
        if (prototypes := background_prototypes(concept, count)) is not None
    }
    tried: list[tuple[Pair, PromptSet, np.ndarray, float, np.ndarray | None]] = []
    for parts in sorted({parts for parts, _ in pairs}):
        prepared = _part_guidance(prompter, cells, concept, guidance, parts)
        if prepared is None:
            continue  # fewer reference cells than parts
        part_guidance, positives = prepared
        prompts: list[tuple[Pair, PromptSet]] = []
        for pair in (pair for pair in pairs if pair[0] == parts):
            negatives = _negatives(config, part_guidance, background, pair[1])
            if negatives is None:
                continue  # the concept has no background prototypes of this count
            points = np.concatenate([positives, negatives, user]).reshape(-1, 2)
            labels = np.array([1] * len(positives) + [0] * (len(negatives) + len(user)))
            prompts.append((pair, PromptSet(points=points, labels=labels)))
        if not prompts:
            continue
        outcomes = prompter.cascade(embedding, [prompt for _, prompt in prompts], part_guidance)
        for (pair, prompt), outcome in zip(prompts, outcomes):
            mask = remove_small_components(outcome.mask, min_area_fraction=config.min_area_fraction)
            found = bool(mask.any())
            tried.append(
                (
                    pair,
                    prompt,
                    mask,
                    float(outcome.score) if found else 0.0,
                    outcome.box if found else None,
                )
            )
    if not tried:
        # Every pair was skipped (a reference with fewer cells than min_parts, or no
        # background prototypes of the counts asked for): P²SAM's code would end with
        # no mask at all; PerSAM's prompts still apply.
        fallback = dataclasses.replace(
            config, min_parts=1, max_parts=1, min_negative_parts=0, max_negative_parts=0
        )
        return segment_object(Prompter(prompter.sam, prompter.device, fallback), embedding, concept)
    distances = {}
    if concept.part_cells is not None:
        distances = {pair: _distance(cells, concept, mask) for pair, _, mask, _, _ in tried}
    # The first pair (fewest parts) wins ties, and is kept when every mask is empty.
    best = min(range(len(tried)), key=lambda i: distances.get(tried[i][0], 0.0))
    pair, prompt, mask, score, box = tried[best]
    return Segmentation(
        mask=mask,
        similarity=guidance.similarity,
        score=score,
        points=prompt.points.copy(),
        point_labels=prompt.labels.copy(),
        box=box,
        parts=pair,
        retrieval_distances=distances,
    )


def _part_guidance(
    prompter: Prompter, cells: ImageCells, concept: Concept, guidance: Guidance, parts: int
) -> tuple[Guidance, np.ndarray] | None:
    """The guidance of ``parts`` prototypes and their positive points ((parts, 2) (y, x))."""
    if parts == 1:
        return guidance, extreme_points(guidance.similarity)[0][None]
    prototypes = part_prototypes(concept, parts)
    if prototypes is None:
        return None
    grids = cells.similarity_grids(prototypes)
    images = [cells.similarity_image(grid) for grid in grids]
    positives = np.stack([extreme_points(image)[0] for image in images])
    mean_grid = grids.mean(dim=0)
    bias = None
    if prompter.config.target_guided_attention:
        valid = torch.from_numpy(cells.embedding.geometry.valid_cells()).to(mean_grid.device)
        bias = attention_bias(mean_grid, valid)
    part_guidance = Guidance(
        similarity_grid=mean_grid,
        # Bilinear resizing is linear: the mean of the maps is the map of the mean.
        similarity=np.mean(images, axis=0).astype(np.float32),
        attn_bias=bias,
        target=guidance.target,  # the semantic prompt stays the mean embedding
        mask_weights=guidance.mask_weights,
    )
    return part_guidance, positives


def _negatives(
    config: PerSAMConfig, guidance: Guidance, background: dict[int, np.ndarray], count: int
) -> np.ndarray | None:
    """(K, 2) negative points of ``count`` background prototypes; None if not learned."""
    if count == 0:
        if not config.negative_prior:
            return np.zeros((0, 2))
        return extreme_points(guidance.similarity)[1][None]
    return background.get(count)


def _distance(cells: ImageCells, concept: Concept, mask: np.ndarray) -> float:
    if not mask.any():
        return math.inf
    return earth_movers_distance(concept.part_cells, cells.rows(mask))


class InstanceCheck:
    """Whether an instance looks like the reference, and its distance to it.

    Parameters
    ----------
    prompter : Prompter
    embedding : ImageEmbedding
    concept : Concept
    guidance : Guidance
        The concept's guidance on this image.

    Attributes
    ----------
    negative_points : (U, 2) float
        (y, x) of the user's negatives in this image (see :func:`user_negative_points`),
        added to every candidate's prompts.
    limit : float or None
        Part-aware: candidates farther than this from the reference are dropped.
    """

    def __init__(
        self, prompter: Prompter, embedding: ImageEmbedding, concept: Concept, guidance: Guidance
    ) -> None:
        config = prompter.config
        part_aware = config.prompt_mode == "part-aware"
        self.part_aware = part_aware
        self.concept = concept
        self.cells = ImageCells(embedding, config.foreground_coverage)
        self.negative_points = user_negative_points(self.cells, concept, guidance)
        self.limit = None
        if part_aware:
            self.limit = (
                config.instance_max_distance
                if config.instance_max_distance is not None
                else concept.distance_threshold
            )
        counts = range(config.min_negative_parts, config.max_negative_parts + 1)
        self.negatives = negative_directions(concept, counts if part_aware else ())
        positives = [concept.shot_embeddings, concept.target_embedding[None]]
        if part_aware:
            for parts in range(max(2, config.min_parts), config.max_parts + 1):
                prototypes = part_prototypes(concept, parts)
                if prototypes is not None:
                    positives.append(prototypes)
        self.positives = _unit_rows(np.concatenate(positives))

    def judge(self, mask: np.ndarray) -> tuple[bool, float]:
        """(accepted, distance to the reference) of a non-empty candidate mask.

        Dropped: farther than :attr:`limit`, or its mean feature closer (cosine) to
        a negative prototype (the user's, or part-aware background prototypes) than
        to any of the concept's. The distance is part-aware's (NaN with PerSAM's
        prompts): finding a mask's cells costs a pass over the full-resolution mask,
        which for a hundred objects would be a tenth of an encoding.
        """
        if not self.part_aware and not len(self.negatives):
            return True, math.nan  # PerSAM: nothing to check, nothing added to its cost
        rows = self.cells.rows(mask)
        distance = math.nan
        if self.part_aware and self.concept.part_cells is not None:
            distance = earth_movers_distance(self.concept.part_cells, rows)
        if self.limit is not None and distance > self.limit:
            return False, distance
        if len(self.negatives) and len(rows):
            mean = _unit_rows(rows.mean(axis=0, keepdims=True))[0]
            if float((self.negatives @ mean).max()) > float((self.positives @ mean).max()):
                return False, distance
        return True, distance


def _unit_rows(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
