"""Every instance: candidates from the similarity map, batched cascades, overlap rules.

PerSAM finds one object per image (the similarity maximum). Counting nuclei or
cells needs all of them: every local maximum of the similarity map that looks like
the reference is a candidate prompt. Candidates are decoded in batches, strongest
first; one already inside an accepted mask is skipped (it would find the same
object again), a mask that mostly repeats an accepted one is dropped, and so is a
mask that does not look like the concept on average (background grown from a
stray peak). With part-aware prompting each object gets its distance to the
reference (P²SAM's earth mover's distance), and objects far from the reference or
closer to a negative prototype than to the concept are dropped; the user's
negatives apply in both modes (:class:`~.retrieval.InstanceCheck`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from skimage.feature import peak_local_max

from napari_persam.core.engine.concepts import Concept
from napari_persam.core.engine.embeddings import ImageEmbedding
from napari_persam.core.engine.postprocess import remove_small_components
from napari_persam.core.engine.prompting import (
    BASIS_FROM,
    Guidance,
    Prompter,
    PromptSet,
    extreme_points,
)
from napari_persam.core.engine.results import Instances
from napari_persam.core.engine.retrieval import InstanceCheck


def candidate_spacing(concept: Concept, shape: tuple[int, int], spacing: float | None) -> float:
    """Minimum distance between candidates in pixels.

    ``spacing`` if given; otherwise the radius of the reference object (half its
    equivalent diameter), so two neighbouring objects of that size each get their
    own candidate.
    """
    if spacing is not None:
        return float(spacing)
    if concept.object_diameter > 0:
        return max(1.0, concept.object_diameter / 2)
    if concept.object_area > 0:
        return max(1.0, math.sqrt(concept.object_area / math.pi))
    return max(1.0, max(shape) / 32)


def candidate_points(
    similarity: np.ndarray,
    *,
    threshold: float,
    spacing: float,
    limit: int,
    region: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """Local maxima of the similarity map, strongest first.

    Parameters
    ----------
    similarity : (H, W) float32
    threshold : float
        Minimum similarity of a candidate.
    spacing : float
        At most one candidate within this many pixels.
    limit : int
        At most this many candidates.
    region : (y0, x0, y1, x1), optional
        Keep only maxima inside this window (a tile's core); maxima are still found
        on the whole map, so one near the region's edge is judged with its
        neighbours outside.

    Returns
    -------
    (N, 2) float, (y, x) in pixels, sorted by decreasing similarity.
    """
    peaks = peak_local_max(
        similarity,
        min_distance=max(1, round(spacing)),
        threshold_abs=threshold,
        exclude_border=False,
        num_peaks=limit if region is None else np.inf,
    )
    if region is not None and len(peaks):
        y0, x0, y1, x1 = region
        inside = (peaks[:, 0] >= y0) & (peaks[:, 0] < y1) & (peaks[:, 1] >= x0) & (peaks[:, 1] < x1)
        peaks = peaks[inside]
    if len(peaks) == 0:
        return np.zeros((0, 2), dtype=np.float64)
    order = np.argsort(-similarity[peaks[:, 0], peaks[:, 1]], kind="stable")
    return peaks[order][:limit].astype(np.float64)


def find_instances(
    prompter: Prompter,
    embedding: ImageEmbedding,
    concept: Concept,
    *,
    class_value: int = 1,
    seeds: Sequence[PromptSet] = (),
    guidance: Guidance | None = None,
    region: tuple[int, int, int, int] | None = None,
) -> Instances:
    """Every instance of ``concept`` in one encoded image.

    Parameters
    ----------
    prompter : Prompter
        Runs the cascade; its ``config`` holds the every-instance options.
    embedding : ImageEmbedding
    concept : Concept
    class_value : int
        Recorded in ``Instances.classes``.
    seeds : sequence of PromptSet
        Prompts tried before the similarity candidates (e.g. objects of the
        neighbouring slice in a stack), in the given order.
    guidance : Guidance, optional
        Reuse a guidance already computed for this image and concept.
    region : (y0, x0, y1, x1), optional
        Take similarity candidates only inside this window (a tile's core).
    """
    cfg = prompter.config
    if guidance is None:
        guidance = prompter.guidance(embedding, concept)
    similarity = guidance.similarity
    shape = embedding.geometry.original_hw
    threshold = (
        cfg.instance_threshold
        if cfg.instance_threshold is not None
        else concept.similarity_threshold
    )
    # A found mask must look like the concept on average: its mean similarity must
    # reach halfway from the background level to the candidate threshold.
    acceptance = concept.background_similarity + (threshold - concept.background_similarity) / 2
    spacing = candidate_spacing(concept, shape, cfg.instance_spacing)
    peaks = candidate_points(
        similarity, threshold=threshold, spacing=spacing, limit=cfg.max_instances, region=region
    )
    _, worst = extreme_points(similarity)
    check = InstanceCheck(prompter, embedding, concept, guidance)
    user = check.negative_points  # the user's "not this", where this image shows it
    prompts = list(seeds)
    for peak in peaks:
        points = [peak, worst] if cfg.negative_prior else [peak]
        points.extend(user)
        labels = np.array([1] + [0] * (len(points) - 1))
        prompts.append(PromptSet(points=np.stack(points), labels=labels))
    prompts = prompts[: cfg.max_instances + len(seeds)]

    labels = np.zeros(shape, dtype=np.int32)
    scores: list[float] = []
    points: list[np.ndarray] = []
    distances: list[float] = []
    areas: list[int] = [0]
    pending = list(prompts)
    # One image basis for every batch's cascade (each would otherwise form its own).
    basis = prompter.image_basis(embedding) if len(prompts) >= BASIS_FROM else None
    while pending:
        batch: list[PromptSet] = []
        while pending and len(batch) < cfg.decoder_batch_size:
            prompt = pending.pop(0)
            if not _covered(labels, prompt):
                batch.append(prompt)
        if not batch:
            break
        for prompt, outcome in zip(batch, prompter.cascade(embedding, batch, guidance, basis)):
            if _covered(labels, prompt):
                continue  # an object accepted earlier in this batch already holds it
            mask = remove_small_components(outcome.mask, min_area_fraction=cfg.min_area_fraction)
            area = int(mask.sum())
            if area == 0 or similarity[mask].mean() < acceptance:
                continue  # nothing, or a mask of background grown from a stray peak
            if _overlaps(labels, mask, area, areas, cfg.instance_iou_limit):
                continue
            unclaimed = mask & (labels == 0)  # stronger objects keep contested pixels
            if not unclaimed.any():
                continue  # covered entirely by objects accepted before
            accepted, distance = check.judge(mask)
            if not accepted:
                continue  # does not look like the reference, or looks like a negative
            labels[unclaimed] = len(scores) + 1
            scores.append(outcome.score)
            points.append(prompt.points[0])
            distances.append(distance)
            areas.append(area)
    return Instances(
        labels=labels,
        scores=np.asarray(scores, dtype=np.float32),
        similarity=similarity,
        classes=np.full(len(scores), class_value, dtype=np.int32),
        points=np.asarray(points, dtype=np.float64).reshape(-1, 2),
        distances=np.asarray(distances, dtype=np.float32),
    )


def _covered(labels: np.ndarray, prompt: PromptSet) -> bool:
    y, x = np.clip(np.round(prompt.points[0]).astype(int), 0, np.array(labels.shape) - 1)
    return bool(labels[y, x])


def _overlaps(
    labels: np.ndarray, mask: np.ndarray, area: int, areas: Sequence[int], limit: float
) -> bool:
    """Whether ``mask`` has IoU above ``limit`` with any object already in ``labels``."""
    touched, shared = np.unique(labels[mask], return_counts=True)
    for value, intersection in zip(touched, shared):
        if value == 0:
            continue
        union = area + areas[value] - intersection
        if intersection / union > limit:
            return True
    return False


def merge_class_instances(found: dict[int, Instances], *, iou_limit: float) -> Instances:
    """Instances of several classes in one label image, ids running across classes.

    Objects are taken by decreasing score; a pixel claimed by two objects goes to
    the higher score, and an object overlapping a stronger one of another class
    beyond ``iou_limit`` is dropped.
    """
    entries = []
    for value, instances in found.items():
        for index, object_id in enumerate(instances.ids):
            entries.append(
                (
                    float(instances.scores[index]),
                    value,
                    instances.labels == object_id,
                    instances.points[index],
                    float(instances.distances[index]),
                )
            )
    entries.sort(key=lambda entry: -entry[0])
    shape = next(iter(found.values())).labels.shape
    labels = np.zeros(shape, dtype=np.int32)
    scores, classes, points, distances, areas = [], [], [], [], [0]
    for score, value, mask, point, distance in entries:
        area = int(mask.sum())
        unclaimed = mask & (labels == 0)
        if not unclaimed.any() or _overlaps(labels, mask, area, areas, iou_limit):
            continue
        labels[unclaimed] = len(scores) + 1
        scores.append(score)
        classes.append(value)
        points.append(point)
        distances.append(distance)
        areas.append(area)
    similarity = np.max(np.stack([item.similarity for item in found.values()]), axis=0)
    return Instances(
        labels=labels,
        scores=np.asarray(scores, dtype=np.float32),
        similarity=similarity,
        classes=np.asarray(classes, dtype=np.int32),
        points=np.asarray(points, dtype=np.float64).reshape(-1, 2),
        distances=np.asarray(distances, dtype=np.float32),
    )
