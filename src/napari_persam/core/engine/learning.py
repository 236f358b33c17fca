"""From painted references to concepts, at the scale the painting asks for.

What :meth:`PerSAM.learn` computes once per concept, so that segmenting an image
costs no clustering and no pass over the references:

* the scale: the reference object's size (the median equivalent diameter of its
  painted pieces) decides it. The whole image in SAM's own geometry when the
  object spans ``config.object_cells`` feature cells there, otherwise the pixels
  per cell at which it does (:mod:`.tiles`). At that scale the reference is cut
  into tiles and only the tiles whose core holds painted pixels (or negatives) are
  encoded; each tile holding the object is one :class:`Shot` whose foreground
  cells are the covered cells of its core, so no painted pixel counts twice;
* the target embedding and one embedding per reference (PerSAM);
* the similarity levels of object and background (the instance threshold);
* the object's cells, their part prototypes and the background prototypes
  (P²SAM), and the earth mover's distances that judge instances;
* one negative prototype per region the user marked "not this" (:mod:`.negatives`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from napari_persam.core.config import PerSAMConfig
from napari_persam.core.engine.cells import (
    cell_features,
    covered_cells,
    earth_movers_distance,
    thinned,
)
from napari_persam.core.engine.concepts import ClassConcepts, Concept, Shot
from napari_persam.core.engine.embeddings import ImageEmbedding
from napari_persam.core.engine.images import prepare_mask
from napari_persam.core.engine.negatives import check_negatives, negative_rows, per_reference
from napari_persam.core.engine.parts import prototype_table, region_prototypes
from napari_persam.core.engine.prompting import cosine_similarity_grid
from napari_persam.core.engine.results import MAX_LABEL_VALUE
from napari_persam.core.engine.tiled import EmbedTile, TiledImage
from napari_persam.core.engine.tiles import learned_pixels_per_cell, object_diameter, plan_for

Embed = Callable[[np.ndarray], ImageEmbedding]
Negatives = np.ndarray | Sequence[np.ndarray | None] | None
_WHOLE = PerSAMConfig(tiling="off")  # references whose object needs no tiles

#: At most this many background cells are clustered into background prototypes
#: (a 64 x 64 grid has 4096; several references are thinned evenly to this).
MAX_BACKGROUND_CELLS = 4096


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
    def learn(
        self, pairs: Sequence[tuple[np.ndarray, np.ndarray]], *, negatives: Negatives = None
    ) -> Concept:
        """One concept from (image, mask) pairs; masks and negatives are checked before
        any encoding (seconds each with ViT-B)."""
        if not pairs:
            raise ValueError("learn() needs at least one (image, mask) pair.")
        marked = per_reference(negatives, len(pairs))
        masks = [prepare_mask(mask, np.shape(image)) for image, mask in pairs]
        several = len(pairs) > 1
        checked = [
            check_negatives(neg, mask, reference=i if several else None)
            for i, (neg, mask) in enumerate(zip(marked, masks))
        ]
        images = [_checked_image(image) for image, _ in pairs]
        ids = list(range(len(images)))
        return self._concept(images, masks, checked, ids=ids, encoded={})

    def learn_classes(
        self,
        pairs: Sequence[tuple[np.ndarray, np.ndarray]],
        values: Sequence[int] | None,
        *,
        negatives: Negatives = None,
    ) -> ClassConcepts:
        """One concept per label value; a reference encoded whole is shared by its classes."""
        if not pairs:
            raise ValueError("learn_classes() needs at least one (image, labels) pair.")
        marked = per_reference(negatives, len(pairs))
        present = sorted({int(v) for _, lab in pairs for v in np.unique(np.asarray(lab)) if v != 0})
        wanted = present if values is None else [int(v) for v in values]
        unusable = [v for v in wanted if not 1 <= v <= MAX_LABEL_VALUE]
        if unusable:
            # Checked here, not when segmenting: results are int32 label images.
            raise ValueError(
                f"Label value(s) {unusable} cannot be learned: label values are 1 to "
                f"{MAX_LABEL_VALUE} (0 is background; label images are 32-bit)."
            )
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
        several = len(pairs) > 1
        checked = [
            check_negatives(neg, np.isin(np.asarray(lab), wanted), reference=i if several else None)
            for i, (neg, (_, lab)) in enumerate(zip(marked, pairs))
        ]
        images = [_checked_image(ref) for ref, _ in pairs]
        encoded: dict[int, tuple[ImageEmbedding, np.ndarray]] = {}  # shared by the classes
        concepts = {}
        for value in wanted:
            holding = [i for i, by_value in enumerate(masks) if value in by_value]
            concepts[value] = self._concept(
                [images[i] for i in holding],
                [masks[i][value] for i in holding],
                [checked[i] for i in holding],
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
        negatives: Sequence[np.ndarray | None],
        *,
        ids: Sequence[int],
        encoded: dict[int, tuple[ImageEmbedding, np.ndarray]],
    ) -> Concept:
        """A concept from references ``images`` (known as ``ids`` in ``encoded``, where
        whole-image embeddings are kept for other classes of the same references)."""
        diameter, scale = self.pixels_per_cell(images, masks)
        groups: list[list[Shot]] = []
        loose: list[np.ndarray] = []  # negative prototypes of tiles without the object
        for reference, image, mask, marked in zip(ids, images, masks, negatives):
            plan = plan_for(
                np.shape(image),
                pixels_per_cell=scale,
                object_diameter=diameter,
                config=self.config if scale is not None else _WHOLE,
                grid=self.grid,
            )
            if plan.tiled:
                shots, rows = self._tiled_shots(image, mask, marked, plan)
                groups.append(shots)
                loose.extend(rows)
                continue
            if reference not in encoded:
                embedding = self.embed(image)
                encoded[reference] = (embedding, embedding.features[0].cpu().numpy())
            groups.append([self._shot(*encoded[reference], mask, negatives=marked)])
        return self._from_shots(groups, masks, loose, diameter=diameter, scale=scale)

    def _tiled_shots(
        self, image: np.ndarray, mask: np.ndarray, negatives: np.ndarray | None, plan
    ) -> tuple[list[Shot], list[np.ndarray]]:
        """The shots of the tiles whose core holds the object, and the negative
        prototypes of tiles whose core holds only negatives."""
        source = TiledImage(image, channels=self.config.channels)
        shots, rows = [], []
        for window, core in zip(plan.windows(), plan.cores()):
            y0, x0, y1, x1 = window
            cy0, cx0, cy1, cx1 = core
            holds_object = mask[cy0:cy1, cx0:cx1].any()
            local_negatives = None
            if negatives is not None and negatives[cy0:cy1, cx0:cx1].any():
                # Only the core's negatives: a region in an overlap counts once.
                local_negatives = np.zeros((y1 - y0, x1 - x0), bool)
                local_negatives[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = negatives[
                    cy0:cy1, cx0:cx1
                ]
            if not holds_object and local_negatives is None:
                continue
            embedding = self.embed_tile(source.rgb(window), plan.tile_side)
            features = embedding.features[0].cpu().numpy()
            local_mask = mask[y0:y1, x0:x1]
            if not holds_object:
                coverage = self.config.foreground_coverage
                rows.append(
                    region_prototypes(
                        features,
                        embedding.geometry,
                        local_negatives,
                        coverage=coverage,
                        exclude=covered_cells(embedding.geometry, local_mask, coverage),
                    )
                )
                continue
            cell = embedding.geometry.pixels_per_cell
            ys = (np.arange(embedding.geometry.grid_hw[0]) + 0.5) * cell + y0
            xs = (np.arange(embedding.geometry.grid_hw[1]) + 0.5) * cell + x0
            in_core = ((ys >= cy0) & (ys < cy1))[:, None] & ((xs >= cx0) & (xs < cx1))
            shots.append(
                self._shot(
                    embedding, features, local_mask, restrict=in_core, negatives=local_negatives
                )
            )
        return shots, rows

    def _shot(
        self,
        embedding: ImageEmbedding,
        features: np.ndarray,
        mask: np.ndarray,
        *,
        restrict: np.ndarray | None = None,
        negatives: np.ndarray | None = None,
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
            features=features,
            mask=mask,
            geometry=embedding.geometry,
            foreground_cells=foreground,
            negatives=negatives,
        )

    def _from_shots(
        self,
        groups: Sequence[Sequence[Shot]],
        masks: Sequence[np.ndarray],
        loose_negatives: Sequence[np.ndarray],
        *,
        diameter: float,
        scale: float | None,
    ) -> Concept:
        config = self.config
        shots = [shot for group in groups for shot in group]
        # One set of object cells per reference (all its tiles together): every look
        # counts once in the per-reference directions and distances.
        object_cells = [
            np.concatenate([cell_features(s.features, s.foreground_cells) for s in group])
            for group in groups
        ]
        pooled = np.concatenate(object_cells)
        target = pooled.mean(axis=0).astype(np.float32)
        per_reference = np.stack([cells.mean(axis=0) for cells in object_cells]).astype(np.float32)
        inside, outside = _similarity_levels(shots, per_reference)
        background = np.concatenate([_background_cells(shot) for shot in shots])
        background = thinned(background, MAX_BACKGROUND_CELLS)
        parts, part_groups = prototype_table(pooled, range(2, config.max_parts + 1))
        back, back_groups = prototype_table(background, range(1, config.max_negative_parts + 1))
        negative = [
            rows
            for rows in (negative_rows(shots, config.foreground_coverage), *loose_negatives)
            if rows is not None and len(rows)
        ]
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
            part_cells=pooled,
            part_prototypes=parts,
            part_groups=part_groups,
            background_prototypes=back,
            background_groups=back_groups,
            negative_prototypes=np.concatenate(negative) if negative else None,
            object_distance=_object_distance(object_cells),
            background_distance=(
                earth_movers_distance(pooled, background) if len(background) else 0.0
            ),
        )


def _similarity_levels(shots: Sequence[Shot], embeddings: np.ndarray) -> tuple[float, float]:
    """Mean similarity of the references' object cells and of their background cells."""
    directions = torch.from_numpy(embeddings)
    inside, outside = [], []
    for shot in shots:
        grid = cosine_similarity_grid(torch.from_numpy(shot.features)[None], directions)
        grid = grid.numpy()
        background = _background(shot)
        inside.append(float(grid[shot.foreground_cells].mean()))
        # A mask covering the whole image leaves no background: assume a margin.
        outside.append(float(grid[background].mean()) if background.any() else inside[-1] - 0.4)
    return float(np.mean(inside)), float(np.mean(outside))


def _background(shot: Shot) -> np.ndarray:
    """(gh, gw) bool: image cells the object does not touch at all.

    Cells of pure padding are not background: P²SAM's code clusters them with the
    rest (``ref_mask <= 0`` over the padded grid), so one background prototype can
    be the padding's, whose similarity maximum then lands on any dark image border.
    """
    return (shot.geometry.mask_coverage(shot.mask) == 0) & shot.geometry.valid_cells()


def _background_cells(shot: Shot) -> np.ndarray:
    return cell_features(shot.features, _background(shot))


def _object_distance(object_cells: Sequence[np.ndarray]) -> float:
    """Mean distance of each reference's cells to the other references' (0 for one)."""
    if len(object_cells) < 2:
        return 0.0
    distances = [
        earth_movers_distance(
            cells, np.concatenate([other for j, other in enumerate(object_cells) if j != i])
        )
        for i, cells in enumerate(object_cells)
    ]
    return float(np.mean(distances))


def _checked_image(image: np.ndarray) -> np.ndarray:
    if np.ndim(image) not in (2, 3):
        raise ValueError(
            f"Each reference must be an (image, mask) pair of 2D arrays; got an image "
            f"of shape {np.shape(image)}."
        )
    return image
