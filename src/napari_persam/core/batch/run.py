"""Running batch work items: segment, write the labels, then the record.

The same :func:`run_item` runs in the command line's own process and on Dask
workers, so both give identical files. Each task reads its own input (one image
or one slice), writes its own output and a small record (for an image, one saying
the output is being written before it and the finished one after it); a task
whose finished record and output exist is skipped when a run is repeated, so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_persam.core.batch.plan import (
    WRITING,
    SegmentOptions,
    WorkItem,
    failure_record,
    skipped_record,
)
from napari_persam.core.engine.concepts import Concept, combine_concepts
from napari_persam.core.engine.prefetch import prefetched
from napari_persam.core.engine.results import label_image, result_score
from napari_persam.core.errors import InputError, option
from napari_persam.core.io.labels import write_json, write_label_slice, write_labels
from napari_persam.core.io.lazy import open_image, open_stack
from napari_persam.core.progress import Progress, ProgressGenerator

if TYPE_CHECKING:  # pragma: no cover
    from napari_persam.core.engine.persam import PerSAM


def read_input(item: WorkItem):
    """The image (or stack slice) of one independent item.

    An image read in full, or, when it is large, a lazy view the tiled engine reads
    window by window (an 8192 x 8192 field never needs a full copy beside its tiles).
    """
    if item.index is None:
        return open_image(item.target)
    return open_stack(item.target)[item.index]


def run_item(
    engine: PerSAM,
    concepts: Mapping[int, Concept],
    item: WorkItem,
    *,
    options: SegmentOptions,
    dtype: np.dtype,
    image: np.ndarray | None = None,
) -> dict[str, Any]:
    """Segment one item, write its labels and its record; return the record.

    Several concepts are segmented as classes: where two claim a pixel, the higher
    score wins (as in the widget and in stacks). ``image`` is the item's input when
    it was read already (:func:`read_input`). Exceptions propagate (the caller
    reports them).
    """
    start = time.perf_counter()
    if options.propagate and item.target.is_stack:
        return _run_stack(engine, concepts, item, options=options, dtype=dtype, start=start)
    if not item.target.is_stack and os.path.exists(item.output) and not item.output_is_ours():
        raise InputError(
            f"{item.output!r} already exists and no record says this tool wrote it; it is not "
            f"overwritten. Move it away or choose {option('out')}."
        )
    if image is None:
        image = read_input(item)
    value, concept = next(iter(concepts)), combine_concepts(concepts)
    if options.instances:
        result = engine.segment_instances(image, concept)
    else:
        result = engine.segment(image, concept)
    labels = label_image(result, value=value).astype(dtype, copy=False)
    if item.index is None:
        # The record first: a kill after the label file is renamed into place, before
        # the finished record, leaves a file the next run knows to be its own.
        write_json(item.record, {"input": item.target.path, "output": item.output,
                                 "status": WRITING})  # fmt: skip
        write_labels(item.output, labels)
    else:
        write_label_slice(item.output, item.index, labels)
    record = _ok_record(item, result_score(result), int(np.count_nonzero(labels)), start)
    record.update(_scale_record(engine, concept, np.shape(image)))
    if options.instances:
        record["instances"] = int(labels.max(initial=0))
    write_json(item.record, record)
    return record


def _scale_record(engine: PerSAM, concept, shape) -> dict[str, Any]:
    """The scale an image was segmented at and the encodings it took (for the report)."""
    plans = engine.plan_tiles(shape, concept)
    scales = [plan.pixels_per_cell for plan in plans if plan.tiled]
    return {
        "pixels_per_cell": min(scales) if scales else None,
        "tiles": sum(len(plan) for plan in plans),
    }


def _run_stack(
    engine: PerSAM,
    concepts: Mapping[int, Concept],
    item: WorkItem,
    *,
    options: SegmentOptions,
    dtype: np.dtype,
    start: float,
) -> dict[str, Any]:
    """Propagation through a whole stack: one task, slices written as they come."""
    value, concept = next(iter(concepts)), combine_concepts(concepts)
    stack = open_stack(item.target)
    depth = len(stack)
    start_slice = depth // 2 if options.start_slice is None else options.start_slice
    if not 0 <= start_slice < depth:
        raise InputError(f"The start slice {start_slice} is outside the stack (0..{depth - 1}).")
    work = engine.segment_stack(
        stack,
        concept,
        reference_index=start_slice,
        instances=options.instances,
        mode="propagate",
        keep_results=False,  # each slice is written as it comes
    )
    scores, area = [], 0
    scale = _scale_record(engine, concept, stack.shape[1:])
    for step in work:  # slices arrive outward from the start slice; each is written at once
        labels = label_image(step.result, value=value).astype(dtype, copy=False)
        write_label_slice(item.output, step.index, labels)
        scores.append(result_score(step.result))
        area += int(np.count_nonzero(labels))
    record = _ok_record(item, float(np.mean(scores)) if scores else 0.0, area, start)
    record.update(scale, tiles=scale["tiles"] * depth)
    write_json(item.record, record)
    return record


def _ok_record(item: WorkItem, score: float, area: int, start: float) -> dict[str, Any]:
    return {
        "input": item.target.path,
        "slice": item.index,
        "output": item.output,
        "status": "ok",
        "score": score,
        "area": area,
        "time_s": round(time.perf_counter() - start, 4),
    }


def iter_run_local(
    engine: PerSAM,
    concepts: Mapping[int, Concept],
    items: Sequence[WorkItem],
    *,
    options: SegmentOptions,
    dtype: np.dtype,
) -> ProgressGenerator[list[dict[str, Any]]]:
    """Run ``items`` one after the other in this process.

    The next item's input is read in a helper thread while this one is segmented.
    Yields ``Progress(done, total, message, index=i, result=record)`` per item
    and returns the records in item order. An item that raises is recorded as
    failed and the run goes on.
    """
    records: list[dict[str, Any]] = []

    def read_ahead(item: WorkItem) -> tuple[np.ndarray | None, BaseException | None]:
        # The next input is read while this one is encoded; a read that fails is
        # reported with its own item, in order.
        if item.is_finished() or (options.propagate and item.target.is_stack):
            return None, None
        try:
            return read_input(item), None
        except Exception as error:
            return None, error

    for position, (item, (image, read_error)) in enumerate(prefetched(items, read_ahead)):
        if item.is_finished():
            record = skipped_record(item)
        elif read_error is not None:
            record = failure_record(item, read_error)
        else:
            try:
                record = run_item(engine, concepts, item, options=options, dtype=dtype, image=image)
            except Exception as error:
                record = failure_record(item, error)
        image = None
        records.append(record)
        yield Progress(
            done=position + 1,
            total=len(items),
            message=f"{record['status']}: {item.label}",
            index=position,
            result=record,
        )
    return records
