"""From reference shots to a Concept: embeddings, levels, prototypes and negatives.

What :meth:`PerSAM.learn` computes once per concept, so that segmenting an image
costs no clustering and no pass over the references:

* the target embedding and one embedding per reference (PerSAM);
* the similarity levels of object and background (the instance threshold);
* the object's cells, their part prototypes and the background prototypes
  (P²SAM), and the earth mover's distances that judge instances;
* one negative prototype per region the user marked "not this".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from napari_persam.core.config import PerSAMConfig
from napari_persam.core.engine.cells import (
    cell_features,
    covered_cells,
    earth_movers_distance,
    thinned,
)
from napari_persam.core.engine.concepts import Concept, Shot
from napari_persam.core.engine.embeddings import ImageEmbedding
from napari_persam.core.engine.parts import prototype_table, region_prototypes
from napari_persam.core.engine.prompting import cosine_similarity_grid
from napari_persam.core.errors import InputError, option

#: At most this many background cells are clustered into background prototypes
#: (a 64 x 64 grid has 4096; several references are thinned evenly to this).
MAX_BACKGROUND_CELLS = 4096


def per_reference(
    negatives: np.ndarray | Sequence[np.ndarray | None] | None, count: int
) -> list[np.ndarray | None]:
    """``negatives`` as one entry (array or None) per reference."""
    if negatives is None:
        return [None] * count
    if isinstance(negatives, np.ndarray):
        if count == 1:
            return [negatives]
        raise ValueError(
            f"With {count} references, give negatives as a list with one mask (or None) "
            "per reference."
        )
    listed = list(negatives)
    if len(listed) != count:
        raise ValueError(
            f"{len(listed)} negatives for {count} references; give one mask (or None) each."
        )
    return listed


def check_negatives(
    negatives: np.ndarray | None, mask: np.ndarray, *, reference: int | None = None
) -> np.ndarray | None:
    """A reference's "not this" regions as a bool mask, or None when there are none.

    Parameters
    ----------
    negatives : (H, W) array or None
        Nonzero pixels are not the object. Empty (all zero) counts as none.
    mask : (H, W) bool
        The reference object (already checked).
    reference : int, optional
        Which reference of several, for the message.

    Raises
    ------
    InputError
        If the shapes differ, or the negatives overlap the object (a pixel cannot be
        both); the message says what to change.
    """
    if negatives is None:
        return None
    array = np.asarray(negatives)
    which = "" if reference is None else f" of reference {reference + 1}"
    if array.shape != mask.shape:
        raise InputError(
            f"The negatives{which} have shape {array.shape} but the reference mask has "
            f"{mask.shape}; paint {option('negatives')} on the reference image."
        )
    if array.dtype.kind == "f" and np.isnan(array).any():
        raise InputError(f"The negatives{which} contain NaN; use 0 where nothing is marked.")
    marked = array != 0
    if not marked.any():
        return None  # an empty negatives layer means "no negatives"
    overlap = int(np.count_nonzero(marked & mask))
    if overlap:
        raise InputError(
            f"The negatives{which} overlap the reference object in {overlap} pixel(s); a "
            f"place cannot be both the object and 'not this'. Erase the overlap from "
            f"{option('negatives')} or from the reference."
        )
    return marked


def make_shot(
    embedding: ImageEmbedding,
    features: np.ndarray,
    mask: np.ndarray,
    *,
    coverage: float,
    negatives: np.ndarray | None = None,
) -> Shot:
    """One reference object; ``mask`` (H, W) bool and ``negatives`` already checked."""
    return Shot(
        features=features,
        mask=mask,
        geometry=embedding.geometry,
        foreground_cells=covered_cells(embedding.geometry, mask, coverage),
        negatives=negatives,
    )


def concept_from_shots(
    shots: Sequence[Shot], *, config: PerSAMConfig, fingerprint: str, model_name: str
) -> Concept:
    """The concept of one or more references of the same object."""
    object_cells = [cell_features(shot.features, shot.foreground_cells) for shot in shots]
    pooled = np.concatenate(object_cells)
    target = pooled.mean(axis=0).astype(np.float32)
    per_shot = np.stack([cells.mean(axis=0) for cells in object_cells]).astype(np.float32)
    inside, outside = _similarity_levels(shots, per_shot)
    background = np.concatenate([_background_cells(shot) for shot in shots])
    background = thinned(background, MAX_BACKGROUND_CELLS)
    parts, part_groups = prototype_table(pooled, range(2, config.max_parts + 1))
    back, back_groups = prototype_table(background, range(1, config.max_negative_parts + 1))
    return Concept(
        target_embedding=target,
        model_fingerprint=fingerprint,
        model_name=model_name,
        shots=tuple(shots),
        shot_embeddings=per_shot,
        object_similarity=inside,
        background_similarity=outside,
        object_area=float(np.mean([shot.mask.sum() for shot in shots])),
        part_cells=pooled,
        part_prototypes=parts,
        part_groups=part_groups,
        background_prototypes=back,
        background_groups=back_groups,
        negative_prototypes=_negative_prototypes(shots, config.foreground_coverage),
        object_distance=_object_distance(object_cells),
        background_distance=earth_movers_distance(pooled, background) if len(background) else 0.0,
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


def _negative_prototypes(shots: Sequence[Shot], coverage: float) -> np.ndarray | None:
    rows = [
        region_prototypes(
            shot.features,
            shot.geometry,
            shot.negatives,
            coverage=coverage,
            exclude=shot.foreground_cells,
        )
        for shot in shots
        if shot.negatives is not None
    ]
    rows = [row for row in rows if len(row)]
    return np.concatenate(rows) if rows else None


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
