"""Segmenting every slice of a stack, consistently.

``independent`` segments each slice from the concept alone. ``propagate`` starts at
the reference slice and walks outward in both directions; each slice is also
prompted with its neighbour's result (the box, enlarged a little, and a point deep
inside the mask) together with the similarity prior, so a structure is followed
through the stack instead of jumping to a look-alike. An object that vanishes
(empty mask or low score) stops steering, and the concept's prior can pick it up
again later. Instances keep their ids from slice to slice by mask overlap.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from napari_persam.core.engine.concepts import ClassConcepts, Concept
from napari_persam.core.engine.instances import merge_class_instances
from napari_persam.core.engine.prefetch import prefetched
from napari_persam.core.engine.results import (
    Instances,
    LabelSegmentation,
    Segmentation,
    merge_class_segmentations,
)
from napari_persam.core.engine.segmenter import ImageSegmenter
from napari_persam.core.progress import Progress, ProgressGenerator, run

#: Slices up to this many pixels are read whole in the helper thread while the one
#: before is encoded; larger ones stay lazy (their tiles read only their windows).
READ_AHEAD_PIXELS = 4096 * 4096

#: Overlap (IoU) above which two masks of neighbouring slices are the same object.
MATCH_IOU = 0.2


def slice_order(indices: Sequence[int], reference: int) -> list[tuple[int, int | None]]:
    """(slice, neighbour towards the reference) pairs, outward from the reference.

    The first slice is the one nearest the reference (it has no neighbour); then
    the slices above it in increasing order, then those below in decreasing order.
    """
    ordered = sorted({int(i) for i in indices})
    if not ordered:
        return []
    start = min(ordered, key=lambda z: (abs(z - reference), z))
    position = ordered.index(start)
    pairs: list[tuple[int, int | None]] = [(start, None)]
    for i in range(position + 1, len(ordered)):
        pairs.append((ordered[i], ordered[i - 1]))
    for i in range(position - 1, -1, -1):
        pairs.append((ordered[i], ordered[i + 1]))
    return pairs


def iter_segment_stack(
    stack,
    concept: Concept | ClassConcepts,
    *,
    segmenter: ImageSegmenter,
    reference_index: int,
    slices: Sequence[int] | None = None,
    instances: bool = False,
    mode: str | None = None,
    keep_results: bool = True,
) -> ProgressGenerator[dict]:
    """Segment the slices of ``stack``, yielding each result as it is ready.

    Parameters
    ----------
    stack : array-like, (Z, H, W) or (Z, H, W, C)
        Anything indexable by slice (numpy, dask, zarr); one slice is read at a time.
    concept : Concept or ClassConcepts
        Already checked against the model (see :func:`~.concepts.check_concept`).
    segmenter : ImageSegmenter
        Segments one slice (whole or in tiles, at the concept's scale); its
        ``config`` holds the stack and instance options.
    reference_index : int
        The slice the reference was painted on; propagation starts there.
    slices : sequence of int, optional
        Which slices (default: all).
    instances : bool
        Every instance (``Instances`` per slice, ids kept through the stack) instead
        of one object per class.
    mode : {"propagate", "independent"}, optional
        Default: ``segmenter.config.stack_mode``.
    keep_results : bool
        Return every slice's result at the end. ``False`` (callers that store each
        result as it is yielded) keeps only the neighbours propagation still needs:
        a 2048 x 2048 slice's result holds 20 MiB.

    Yields
    ------
    Progress
        ``index`` = slice, ``result`` = that slice's Segmentation,
        LabelSegmentation or Instances.

    Returns
    -------
    dict of int -> result
        Every finished slice (empty with ``keep_results=False``).

    Notes
    -----
    The next slice is read in a helper thread while this one is encoded, so a
    stack on disk is encoded back to back.
    """
    config = segmenter.config
    mode = mode or config.stack_mode
    if mode not in ("propagate", "independent"):
        raise ValueError(f"Unknown stack mode {mode!r}; use 'propagate' or 'independent'.")
    depth = int(stack.shape[0]) if hasattr(stack, "shape") else len(stack)
    indices = list(range(depth)) if slices is None else [int(z) for z in slices]
    bad = [z for z in indices if not 0 <= z < depth]
    if bad:
        raise ValueError(f"Slice(s) {bad} are outside the stack (0..{depth - 1}).")
    members = concept.concepts if isinstance(concept, ClassConcepts) else {1: concept}

    tracker = _IdTracker()
    results: dict[int, object] = {}
    order = slice_order(indices, reference_index)
    # How many later slices still take each slice as their neighbour.
    wanted: dict[int, int] = {}
    if mode == "propagate":
        for _, neighbour in order:
            if neighbour is not None:
                wanted[neighbour] = wanted.get(neighbour, 0) + 1
    neighbours: dict[int, object] = {}

    def read(pair: tuple[int, int | None]):
        image = stack[pair[0]]
        if int(np.prod(np.shape(image)[:2])) <= READ_AHEAD_PIXELS:
            return np.asarray(image)
        return image  # lazy where the stack is: tiles read only their windows

    for done, ((z, neighbour), image) in enumerate(prefetched(order, read), start=1):
        previous = None
        if mode == "propagate" and neighbour is not None:
            previous = neighbours.get(neighbour)
            wanted[neighbour] -= 1
            if wanted[neighbour] == 0:
                neighbours.pop(neighbour, None)  # no later slice steers from it
        if instances:
            result = _slice_instances(segmenter, image, members, previous, tracker, concept)
        else:
            per_class = {}
            for value, member in members.items():
                before = _steering_mask(previous, value, member, config.propagation_min_score)
                per_class[value] = run(segmenter.iter_object(image, member, previous=before))
            if isinstance(concept, ClassConcepts):
                result = merge_class_segmentations(per_class, image.shape[:2])
            else:
                result = per_class[1]
        previous = None  # released here, not when the next slice is done
        if wanted.get(z, 0) > 0:
            neighbours[z] = result
        if keep_results:
            results[z] = result
        yield Progress(
            done, len(order), f"slice {z} ({done} of {len(order)})", index=z, result=result
        )
    return results


def _steering_mask(previous, value: int, concept: Concept, min_score: float) -> np.ndarray | None:
    """The neighbour's mask of class ``value`` if it should steer this slice.

    It must exist, have a predicted IoU of at least ``min_score`` and still look
    like the concept (mean similarity above the concept's threshold): a mask on
    background after the object vanished must not drag the next slices along.
    """
    if previous is None:
        return None
    if isinstance(previous, Segmentation):
        mask, score, similarity = previous.mask, previous.score, previous.similarity
    elif isinstance(previous, LabelSegmentation):
        mask = previous.labels == value
        score = previous.scores.get(value, 0.0)
        similarity = previous.similarity[previous.values.index(value)]
    else:
        return None
    if not mask.any() or score < min_score:
        return None
    if float(similarity[mask].mean()) < concept.similarity_threshold:
        return None
    return mask


def _slice_instances(
    segmenter: ImageSegmenter,
    image: np.ndarray,
    members: dict[int, Concept],
    previous: object,
    tracker: _IdTracker,
    concept: Concept | ClassConcepts,
) -> Instances:
    config = segmenter.config
    found = {}
    for value, member in members.items():
        followed = []
        if isinstance(previous, Instances):
            for index, object_id in enumerate(previous.ids):
                if previous.classes[index] != value:
                    continue
                if previous.scores[index] < config.propagation_min_score:
                    continue
                mask = previous.labels == object_id
                if mask.any() and previous.similarity[mask].mean() >= member.similarity_threshold:
                    followed.append(mask)
        found[value] = run(
            segmenter.iter_instances(image, member, previous=followed, class_value=value)
        )
    if isinstance(concept, ClassConcepts):
        merged = merge_class_instances(found, iou_limit=config.instance_iou_limit)
    else:
        merged = found[1]
    return tracker.relabel(merged, previous if isinstance(previous, Instances) else None)


class _IdTracker:
    """Gives objects the id of the overlapping object of the neighbouring slice."""

    def __init__(self) -> None:
        self.next_id = 1

    def relabel(self, current: Instances, previous: Instances | None) -> Instances:
        new_ids = np.zeros(len(current.ids), dtype=np.int32)
        if previous is not None and len(previous.ids) and len(current.ids):
            pairs = []
            for i, cid in enumerate(current.ids):
                mask = current.labels == cid
                area = mask.sum()
                touched, shared = np.unique(previous.labels[mask], return_counts=True)
                for pid, inter in zip(touched, shared):
                    if pid == 0:
                        continue
                    union = area + (previous.labels == pid).sum() - inter
                    pairs.append((inter / union, i, int(pid)))
            used = set()
            for iou, i, pid in sorted(pairs, reverse=True):
                if iou < MATCH_IOU or new_ids[i] or pid in used:
                    continue
                new_ids[i] = pid
                used.add(pid)
            self.next_id = max(self.next_id, int(previous.labels.max(initial=0)) + 1)
        for i in range(len(new_ids)):
            if not new_ids[i]:
                new_ids[i] = self.next_id
                self.next_id += 1
        size = max(int(current.labels.max(initial=0)), int(current.ids.max(initial=0))) + 1
        lookup = np.zeros(size, dtype=np.int32)
        lookup[current.ids] = new_ids
        return Instances(
            labels=lookup[current.labels],
            scores=current.scores,
            similarity=current.similarity,
            classes=current.classes,
            points=current.points,
            ids=new_ids,
            distances=current.distances,
        )
