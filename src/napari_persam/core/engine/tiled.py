"""Segmenting a large image tile by tile at the concept's scale, with stitched results.

Each tile is read from the image (a numpy, zarr or dask array: only the window is
read), prepared with the whole image's contrast, encoded through the engine's
caches, and released before the next one, so peak memory is one tile's embedding
plus the (H, W) outputs. Per tile:

* its similarity map is blended into one (H, W) map (linear ramps across the
  overlaps), on which the location prior of one-object mode is taken;
* in every-instance mode, candidates are the similarity maxima inside the tile's
  core, decoded in that tile (the one that holds them best, never at its border),
  and each mask is merged into the image's labels: a mask repeating an object
  found from another tile is dropped, one that meets an object across a tile
  border is joined to it, so an object is counted once, whole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from napari_persam.core.engine.concepts import Concept
from napari_persam.core.engine.embeddings import ImageEmbedding
from napari_persam.core.engine.images import contrast_limits, prepare_image
from napari_persam.core.engine.instances import find_instances
from napari_persam.core.engine.prompting import Guidance, Prompter, PromptSet
from napari_persam.core.engine.results import Instances, Segmentation
from napari_persam.core.engine.retrieval import segment_object
from napari_persam.core.engine.steering import inner_point
from napari_persam.core.engine.tiles import TilePlan, Window
from napari_persam.core.progress import Progress, ProgressGenerator

#: ``embed_tile(rgb, frame_side) -> ImageEmbedding``: encode one prepared tile (cached).
EmbedTile = Callable[[np.ndarray, int], ImageEmbedding]
#: ``steering(previous_mask, similarity) -> PromptSet``: prompts from a neighbour's object.
Steering = Callable[[np.ndarray, np.ndarray], PromptSet]


class TiledImage:
    """A 2D image read window by window, every window prepared with the same contrast.

    Parameters
    ----------
    image : array-like, (H, W) or (H, W, C)
        numpy, zarr, dask or a memory-mapped array; slicing reads only the window.
    channels : tuple of int, optional
        As :func:`~napari_persam.core.engine.images.prepare_image` takes them.
    """

    def __init__(self, image, *, channels: tuple[int, ...] | None = None) -> None:
        self.image = image
        self.channels = channels
        self.limits = contrast_limits(image, channels=channels)

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])

    def rgb(self, window: Window) -> np.ndarray:
        """The (h, w, 3) uint8 tile at ``window`` (y0, x0, y1, x1)."""
        y0, x0, y1, x1 = window
        return prepare_image(
            np.asarray(self.image[y0:y1, x0:x1]), channels=self.channels, limits=self.limits
        )


@dataclass(frozen=True)
class _Tile:
    index: int
    window: Window
    core: Window
    embedding: ImageEmbedding
    guidance: Guidance


def _tiles(
    prompter: Prompter, embed_tile: EmbedTile, source: TiledImage, concept: Concept, plan: TilePlan
):
    """Each tile in turn, encoded and guided; the caller drops it before the next."""
    for index, (window, core) in enumerate(zip(plan.windows(), plan.cores())):
        embedding = embed_tile(source.rgb(window), plan.tile_side)
        yield _Tile(index, window, core, embedding, prompter.guidance(embedding, concept))


class _Stitcher:
    """Blends the tiles' similarity maps into one (H, W) map (one accumulator)."""

    def __init__(self, plan: TilePlan) -> None:
        self.plan = plan
        self.rows, self.cols = plan.blend_weights()
        self.total = np.zeros(plan.image_hw, np.float32)
        row_sum = np.zeros(plan.image_hw[0], np.float32)
        col_sum = np.zeros(plan.image_hw[1], np.float32)
        for start, weight in zip(plan.ys, self.rows):
            row_sum[start : start + len(weight)] += weight
        for start, weight in zip(plan.xs, self.cols):
            col_sum[start : start + len(weight)] += weight
        self.row_sum, self.col_sum = row_sum, col_sum

    def add(self, tile: _Tile) -> None:
        y0, x0, y1, x1 = tile.window
        row, col = divmod(tile.index, len(self.plan.xs))
        weight = self.rows[row][:, None] * self.cols[col][None, :]
        self.total[y0:y1, x0:x1] += tile.guidance.similarity * weight

    def result(self) -> np.ndarray:
        self.total /= self.row_sum[:, None]
        self.total /= self.col_sum[None, :]
        return self.total


def _local(window: Window, points: np.ndarray) -> np.ndarray:
    return np.asarray(points, np.float64) - np.array([window[0], window[1]], np.float64)


def _global_box(window: Window, box: np.ndarray | None) -> np.ndarray | None:
    if box is None:
        return None
    return np.asarray(box, np.float64) + np.array([window[0], window[1]] * 2, np.float64)


def iter_segment_tiled(
    prompter: Prompter,
    embed_tile: EmbedTile,
    source: TiledImage,
    concept: Concept,
    plan: TilePlan,
    *,
    steer: np.ndarray | None = None,
    steering: Steering | None = None,
) -> ProgressGenerator[Segmentation]:
    """One object in a tiled image (a progress generator counting tiles).

    Parameters
    ----------
    steer : (H, W) bool, optional
        The object in a neighbouring slice (propagation): ``steering`` turns it and
        the blended similarity into prompts, and the object is decoded in the tile
        whose core holds the point deep inside it.

    Returns
    -------
    Segmentation
        ``mask`` (H, W) bool, ``similarity`` the blended (H, W) map, ``points`` and
        ``box`` in image pixels.
    """
    stitcher = _Stitcher(plan)
    kept: dict[int, _Tile] = {}  # the two tiles with the highest core maxima
    best: list[tuple[float, int]] = []
    total = len(plan)
    for tile in _tiles(prompter, embed_tile, source, concept, plan):
        stitcher.add(tile)
        cy0, cx0, cy1, cx1 = tile.core
        y0, x0, _, _ = tile.window
        core = tile.guidance.similarity[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
        best = sorted([*best, (float(core.max()), tile.index)], reverse=True)[:2]
        kept = {index: kept.get(index, tile) for _, index in best}
        yield Progress(tile.index + 1, total, f"tile {tile.index + 1} of {total}")
    similarity = stitcher.result()
    steered = None
    if steer is not None and steering is not None:
        steered = steering(steer, similarity)
        anchor = steered.points[0]
    else:
        anchor = np.array(np.unravel_index(np.argmax(similarity), similarity.shape), np.float64)
    index = plan.index_at(*anchor)
    tile = kept.get(index)
    if tile is None:  # the blended maximum lies in a tile not kept: encode it again (cached)
        window, core = plan.windows()[index], plan.cores()[index]
        embedding = embed_tile(source.rgb(window), plan.tile_side)
        tile = _Tile(index, window, core, embedding, prompter.guidance(embedding, concept))
    prior = prompter.prior_prompt(tile.guidance)  # its negative point lies in this tile
    if steered is None and (
        prompter.config.prompt_mode != "persam" or concept.negative_prototypes is not None
    ):
        # Part-aware prompts or the user's negatives: chosen and judged in the tile
        # that holds the maximum, as in a whole image.
        found = segment_object(prompter, tile.embedding, concept)
        prompt = PromptSet(found.points, found.point_labels)
    else:
        if steered is not None:
            prompt = _localised(tile.window, steered, prior)
        else:
            points = np.concatenate([_local(tile.window, anchor[None]), prior.points[1:]])
            prompt = PromptSet(points, prior.labels)
        found = prompter.segment(tile.embedding, concept, prompt=prompt, guidance=tile.guidance)
    mask = np.zeros(plan.image_hw, bool)
    y0, x0, y1, x1 = tile.window
    mask[y0:y1, x0:x1] = found.mask
    return Segmentation(
        mask=mask,
        similarity=similarity,
        score=found.score,
        points=prompt.points + np.array([y0, x0], np.float64),
        point_labels=found.point_labels,
        box=_global_box(tile.window, found.box),
        parts=found.parts,
        retrieval_distances=found.retrieval_distances,
    )


def _localised(window: Window, prompt: PromptSet, prior: PromptSet) -> PromptSet:
    """``prompt`` (image pixels) in ``window``'s pixels: positive points inside it, the
    window's own negative prior point, the box clipped to the window."""
    y0, x0, y1, x1 = window
    local = _local(window, prompt.points)
    height, width = y1 - y0, x1 - x0
    inside = (
        (local[:, 0] >= 0) & (local[:, 0] < height) & (local[:, 1] >= 0) & (local[:, 1] < width)
    )
    keep = (prompt.labels == 1) & inside
    points, labels = [local[keep]], [prompt.labels[keep]]
    if (prompt.labels == 0).any():
        points.append(prior.points[prior.labels == 0])
        labels.append(prior.labels[prior.labels == 0])
    box = None
    if prompt.box is not None:
        corners = _local(window, prompt.box.reshape(2, 2))
        corners[:, 0] = np.clip(corners[:, 0], 0, height - 1)
        corners[:, 1] = np.clip(corners[:, 1], 0, width - 1)
        box = corners.reshape(4)
    return PromptSet(np.concatenate(points), np.concatenate(labels), box)


def iter_instances_tiled(
    prompter: Prompter,
    embed_tile: EmbedTile,
    source: TiledImage,
    concept: Concept,
    plan: TilePlan,
    *,
    class_value: int = 1,
    previous: Sequence[np.ndarray] = (),
    steering: Steering | None = None,
) -> ProgressGenerator[Instances]:
    """Every instance in a tiled image (a progress generator counting tiles).

    ``previous``: (H, W) bool masks of objects in a neighbouring slice; each is
    prompted (by ``steering``) in the tile whose core holds a point deep inside it,
    before that tile's similarity candidates. ``config.max_instances`` bounds the
    candidates of each tile.
    """
    stitcher = _Stitcher(plan)
    merged = _MergedInstances(plan.image_hw, iou_limit=prompter.config.instance_iou_limit)
    by_tile: dict[int, list[np.ndarray]] = {}
    if steering is not None:
        for mask in previous:
            by_tile.setdefault(plan.index_at(*inner_point(mask)), []).append(mask)
    total = len(plan)
    for tile in _tiles(prompter, embed_tile, source, concept, plan):
        stitcher.add(tile)
        y0, x0, y1, x1 = tile.window
        cy0, cx0, cy1, cx1 = tile.core
        local_seeds = [
            steering(mask[y0:y1, x0:x1], tile.guidance.similarity)
            for mask in by_tile.get(tile.index, [])
            if mask[y0:y1, x0:x1].any()
        ]
        found = find_instances(
            prompter,
            tile.embedding,
            concept,
            class_value=class_value,
            seeds=local_seeds,
            guidance=tile.guidance,
            region=(cy0 - y0, cx0 - x0, cy1 - y0, cx1 - x0),
        )
        interior = _interior_edges(tile.window, plan.image_hw)
        for position, object_id in enumerate(found.ids):
            merged.add(
                found.labels == object_id,
                tile.window,
                interior,
                score=float(found.scores[position]),
                point=found.points[position] + np.array([y0, x0], np.float64),
                distance=float(found.distances[position]),
            )
        yield Progress(tile.index + 1, total, f"tile {tile.index + 1} of {total}")
    return merged.instances(stitcher.result(), class_value)


def _interior_edges(window: Window, image_hw: tuple[int, int]) -> tuple[bool, bool, bool, bool]:
    """Which sides of a tile (top, left, bottom, right) face another tile, not the border."""
    y0, x0, y1, x1 = window
    return y0 > 0, x0 > 0, y1 < image_hw[0], x1 < image_hw[1]


class _MergedInstances:
    """Instances of the whole image, merged from tiles: no doubles, no halves."""

    def __init__(self, image_hw: tuple[int, int], *, iou_limit: float) -> None:
        self.labels = np.zeros(image_hw, np.int32)
        self.iou_limit = iou_limit
        self.scores: list[float] = []
        self.points: list[np.ndarray] = []
        self.distances: list[float] = []  # to the reference (part-aware; NaN otherwise)
        self.areas: list[int] = [0]
        self.cut: list[bool] = [False]  # whether an object touches a tile's inner edge

    def add(
        self,
        mask: np.ndarray,
        window: Window,
        interior: tuple[bool, bool, bool, bool],
        *,
        score: float,
        point: np.ndarray,
        distance: float = float("nan"),
    ) -> None:
        """Merge one tile's object (``mask`` in window pixels) into the image's labels."""
        y0, x0, y1, x1 = window
        region = self.labels[y0:y1, x0:x1]
        area = int(mask.sum())
        if area == 0:
            return
        cut = _touches(mask, interior)
        touched, shared = np.unique(region[mask], return_counts=True)
        neighbours = {}
        for value, count in zip(touched, shared):
            if value == 0:
                continue
            union = area + self.areas[value] - count
            if count / union > self.iou_limit:
                return  # the same object, found from a neighbouring tile
            neighbours[int(value)] = int(count)
        if cut or any(self.cut[value] for value in neighbours):
            # A half: an object cut by a tile border meets its other part.
            adjoining = neighbours or self._adjacent(mask, region)
            joined = [value for value in adjoining if cut or self.cut[value]]
            if joined:
                target = max(joined, key=lambda value: self.areas[value])
                gained = mask & (region == 0)
                region[gained] = target
                self.areas[target] += int(gained.sum())
                self.scores[target - 1] = max(self.scores[target - 1], score)
                self.distances[target - 1] = float(np.fmin(self.distances[target - 1], distance))
                self.cut[target] = self.cut[target] and cut
                return
        unclaimed = mask & (region == 0)  # stronger objects keep contested pixels
        if not unclaimed.any():
            return
        value = len(self.scores) + 1
        region[unclaimed] = value
        self.scores.append(score)
        self.points.append(point)
        self.distances.append(distance)
        self.areas.append(int(unclaimed.sum()))
        self.cut.append(cut)

    @staticmethod
    def _adjacent(mask: np.ndarray, region: np.ndarray) -> dict[int, int]:
        from scipy import ndimage

        ring = ndimage.binary_dilation(mask) & ~mask
        values, counts = np.unique(region[ring], return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts) if v != 0}

    def instances(self, similarity: np.ndarray, class_value: int) -> Instances:
        count = len(self.scores)
        return Instances(
            labels=self.labels,
            scores=np.asarray(self.scores, np.float32),
            similarity=similarity,
            classes=np.full(count, class_value, np.int32),
            points=np.asarray(self.points, np.float64).reshape(-1, 2),
            distances=np.asarray(self.distances, np.float32),
        )


def _touches(mask: np.ndarray, interior: tuple[bool, bool, bool, bool]) -> bool:
    top, left, bottom, right = interior
    return bool(
        (top and mask[0].any())
        or (left and mask[:, 0].any())
        or (bottom and mask[-1].any())
        or (right and mask[:, -1].any())
    )
