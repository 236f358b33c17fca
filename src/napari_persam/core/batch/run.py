"""Running batch work items: segment, write the labels, then the record.

The same :func:`run_item` runs in the command line's own process and on Dask
workers, so both give identical files. Each task reads its own input (one image
or one slice), writes its own output and then a small record; a task whose
output (images) or record (slices) exists is skipped when a run is repeated, so
an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_persam.core.batch.plan import SegmentOptions, WorkItem, failure_record, skipped_record
from napari_persam.core.engine.concepts import Concept, combine_concepts
from napari_persam.core.engine.results import label_image, result_score
from napari_persam.core.errors import InputError, option
from napari_persam.core.io.labels import write_json, write_label_slice, write_labels
from napari_persam.core.io.lazy import open_image, open_stack
from napari_persam.core.progress import Progress, ProgressGenerator

if TYPE_CHECKING:  # pragma: no cover
    from napari_persam.core.engine.persam import PerSAM


def run_item(
    engine: PerSAM,
    concepts: Mapping[int, Concept],
    item: WorkItem,
    *,
    options: SegmentOptions,
    dtype: np.dtype,
) -> dict[str, Any]:
    """Segment one item, write its labels and its record; return the record.

    Several concepts are segmented as classes: where two claim a pixel, the higher
    score wins (as in the widget and in stacks). Exceptions propagate (the caller
    reports them).
    """
    start = time.perf_counter()
    if options.propagate and item.target.is_stack:
        return _run_stack(engine, concepts, item, options=options, dtype=dtype, start=start)
    if not item.target.is_stack and os.path.exists(item.output):
        raise InputError(
            f"{item.output!r} already exists and no record says this tool wrote it (or its run "
            f"was interrupted); it is not overwritten. Move it away or choose {option('out')}."
        )
    if item.index is None:
        image = open_image(item.target)  # large images stay on disk, read tile by tile
    else:
        image = open_stack(item.target)[item.index]
    value, concept = next(iter(concepts)), combine_concepts(concepts)
    if options.instances:
        result = engine.segment_instances(image, concept)
    else:
        result = engine.segment(image, concept)
    labels = label_image(result, value=value).astype(dtype, copy=False)
    if item.index is None:
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

    Yields ``Progress(done, total, message, index=i, result=record)`` per item
    and returns the records in item order. An item that raises is recorded as
    failed and the run goes on.
    """
    records: list[dict[str, Any]] = []
    for position, item in enumerate(items):
        if item.is_finished():
            record = skipped_record(item)
        else:
            try:
                record = run_item(engine, concepts, item, options=options, dtype=dtype)
            except Exception as error:
                record = failure_record(item, error)
        records.append(record)
        yield Progress(
            done=position + 1,
            total=len(items),
            message=f"{record['status']}: {item.label}",
            index=position,
            result=record,
        )
    return records
