"""From painted references to concepts, at the scale the painting asks for.

The reference object's size (the median equivalent diameter of its painted pieces)
decides the scale: the whole image in SAM's own geometry when the object spans
``config.object_cells`` feature cells there, otherwise the pixels per cell at which
it does (:mod:`.tiles`). At that scale the reference is cut into tiles and only
the tiles whose core holds painted pixels are encoded; each such tile is one
:class:`Shot` whose foreground cells are the covered cells of its core, so no
painted pixel counts twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from napari_persam.core.config import PerSAMConfig
from napari_persam.core.engine.concepts import ClassConcepts, Concept, Shot
from napari_persam.core.engine.embeddings import ImageEmbedding
from napari_persam.core.engine.images import prepare_mask
from napari_persam.core.engine.prompting import cosine_similarity_grid
from napari_persam.core.engine.tiled import EmbedTile, TiledImage
from napari_persam.core.engine.tiles import learned_pixels_per_cell, object_diameter, plan_for

Embed = Callable[[np.ndarray], ImageEmbedding]
_WHOLE = PerSAMConfig(tiling="off")  # references whose object needs no tiles


class Learner:
    """Learns concepts for one engine (its model, caches and options).

    Parameters
    ----------
    embed, embed_tile : callables
        The engine's cached whole-image and tile encoders.
    config : PerSAMConfig
    fingerprint, model_name : str
        Recorded in every concept.
    grid : int
        Feature cells along SAM's input side (64).
    """

    def __init__(
        self,
        *,
        embed: Embed,
        embed_tile: EmbedTile,
        config: PerSAMConfig,
        fingerprint: str,
        model_name: str,
        grid: int,
    ) -> None:
        self.embed = embed
        self.embed_tile = embed_tile
        self.config = config
        self.fingerprint = fingerprint
        self.model_name = model_name
        self.grid = grid

    # -------------------------------------------------------------------- public
    def learn(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> Concept:
        """One concept from (image, mask) pairs; masks are checked before any encoding."""
        if not pairs:
            raise ValueError("learn() needs at least one (image, mask) pair.")
        masks = [prepare_mask(mask, np.shape(image)) for image, mask in pairs]
        images = [_checked_image(image) for image, _ in pairs]
        return self._concept(images, masks, ids=list(range(len(images))), encoded={})

    def learn_classes(
        self, pairs: Sequence[tuple[np.ndarray, np.ndarray]], values: Sequence[int] | None
    ) -> ClassConcepts:
        """One concept per label value; a reference encoded whole is shared by its classes."""
        if not pairs:
            raise ValueError("learn_classes() needs at least one (image, labels) pair.")
        present = sorted({int(v) for _, lab in pairs for v in np.unique(np.asarray(lab)) if v != 0})
        wanted = present if values is None else [int(v) for v in values]
        missing = [v for v in wanted if v not in present]
        if not wanted or missing:
            raise ValueError(
                f"Label value(s) {missing or wanted} are not painted in the reference "
                f"(painted values: {present or 'none'}); paint them or choose others."
            )
        # Masks are checked before any image is encoded (seconds each with ViT-B).
        masks = [
            {
                value: prepare_mask(np.asarray(lab) == value, np.shape(ref))
                for value in wanted
                if (np.asarray(lab) == value).any()
            }
            for ref, lab in pairs
        ]
        images = [_checked_image(ref) for ref, _ in pairs]
        encoded: dict[int, tuple[ImageEmbedding, np.ndarray]] = {}  # shared by the classes
        concepts = {}
        for value in wanted:
            holding = [i for i, by_value in enumerate(masks) if value in by_value]
            concepts[value] = self._concept(
                [images[i] for i in holding],
                [masks[i][value] for i in holding],
                ids=holding,
                encoded=encoded,
            )
        return ClassConcepts(concepts)

    # ------------------------------------------------------------------ internals
    def pixels_per_cell(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]):
        """(object diameter, learned pixels per cell or None) for these references."""
        diameter = object_diameter(masks)
        tiling = self.config.tiling
        if tiling == "off":
            return diameter, None
        if not isinstance(tiling, str):
            return diameter, float(tiling) / self.grid
        whole = max(max(np.shape(image)[:2]) for image in images) / self.grid
        scale = learned_pixels_per_cell(
            diameter, whole_image_pixels_per_cell=whole, object_cells=self.config.object_cells
        )
        return diameter, scale

    def _concept(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        *,
        ids: Sequence[int],
        encoded: dict[int, tuple[ImageEmbedding, np.ndarray]],
    ) -> Concept:
        """A concept from references ``images`` (known as ``ids`` in ``encoded``, where
        whole-image embeddings are kept for other classes of the same references)."""
        diameter, scale = self.pixels_per_cell(images, masks)
        groups: list[list[Shot]] = []
        for reference, image, mask in zip(ids, images, masks):
            plan = plan_for(
                np.shape(image),
                pixels_per_cell=scale,
                object_diameter=diameter,
                config=self.config if scale is not None else _WHOLE,
                grid=self.grid,
            )
            if plan.tiled:
                groups.append(self._tiled_shots(image, mask, plan))
                continue
            if reference not in encoded:
                embedding = self.embed(image)
                encoded[reference] = (embedding, embedding.features[0].cpu().numpy())
            groups.append([self._shot(*encoded[reference], mask)])
        return self._from_shots(groups, masks, diameter=diameter, scale=scale)

    def _tiled_shots(self, image: np.ndarray, mask: np.ndarray, plan) -> list[Shot]:
        source = TiledImage(image, channels=self.config.channels)
        shots = []
        for window, core in zip(plan.windows(), plan.cores()):
            y0, x0, y1, x1 = window
            cy0, cx0, cy1, cx1 = core
            if not mask[cy0:cy1, cx0:cx1].any():
                continue
            embedding = self.embed_tile(source.rgb(window), plan.tile_side)
            cell = embedding.geometry.pixels_per_cell
            rows = (np.arange(embedding.geometry.grid_hw[0]) + 0.5) * cell + y0
            cols = (np.arange(embedding.geometry.grid_hw[1]) + 0.5) * cell + x0
            in_core = ((rows >= cy0) & (rows < cy1))[:, None] & ((cols >= cx0) & (cols < cx1))
            features = embedding.features[0].cpu().numpy()
            shots.append(self._shot(embedding, features, mask[y0:y1, x0:x1], restrict=in_core))
        return shots

    def _shot(
        self,
        embedding: ImageEmbedding,
        features: np.ndarray,
        mask: np.ndarray,
        *,
        restrict: np.ndarray | None = None,
    ) -> Shot:
        """One reference object; ``mask`` (h, w) bool in the embedding's pixels."""
        coverage = embedding.geometry.mask_coverage(mask)
        allowed = np.ones_like(coverage, bool) if restrict is None else restrict
        foreground = (coverage >= self.config.foreground_coverage) & allowed
        if not foreground.any():
            # A small object covers no cell by half: use the best-covered cell(s).
            best = coverage[allowed].max() if allowed.any() else coverage.max()
            foreground = (coverage >= best) & allowed if best > 0 else coverage >= coverage.max()
        return Shot(
            features=features, mask=mask, geometry=embedding.geometry, foreground_cells=foreground
        )

    def _from_shots(self, groups, masks, *, diameter: float, scale: float | None) -> Concept:
        shots = [shot for group in groups for shot in group]
        pooled = np.concatenate([shot.features[:, shot.foreground_cells].T for shot in shots])
        target = pooled.mean(axis=0).astype(np.float32)
        # One direction per reference (all its tiles together): every look counts once.
        per_reference = np.stack(
            [
                np.concatenate([s.features[:, s.foreground_cells].T for s in group]).mean(axis=0)
                for group in groups
            ]
        ).astype(np.float32)
        inside, outside = _reference_levels(shots, per_reference)
        return Concept(
            target_embedding=target,
            model_fingerprint=self.fingerprint,
            model_name=self.model_name,
            shots=tuple(shots),
            shot_embeddings=per_reference,
            object_similarity=inside,
            background_similarity=outside,
            object_area=float(np.mean([mask.sum() for mask in masks])),
            object_diameter=diameter,
            pixels_per_cell=scale,
        )


def _reference_levels(shots: Sequence[Shot], embeddings: np.ndarray) -> tuple[float, float]:
    """Mean similarity of the references' object cells and of their background cells."""
    directions = torch.from_numpy(embeddings)
    inside, outside = [], []
    for shot in shots:
        grid = cosine_similarity_grid(torch.from_numpy(shot.features)[None], directions).numpy()
        coverage = shot.geometry.mask_coverage(shot.mask)
        background = (coverage == 0) & shot.geometry.valid_cells()
        inside.append(float(grid[shot.foreground_cells].mean()))
        # A mask covering the whole image leaves no background: assume a margin.
        outside.append(float(grid[background].mean()) if background.any() else inside[-1] - 0.4)
    return float(np.mean(inside)), float(np.mean(outside))


def _checked_image(image: np.ndarray) -> np.ndarray:
    if np.ndim(image) not in (2, 3):
        raise ValueError(
            f"Each reference must be an (image, mask) pair of 2D arrays; got an image "
            f"of shape {np.shape(image)}."
        )
    return image
