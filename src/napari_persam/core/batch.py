"""Batch segmentation: one task per image or stack slice, resumable, with a JSON report.

The same :func:`run_item` runs in the command line's own process and on Dask
workers, so both give identical files. Each task reads its own input (one image
or one slice), writes its own output and then a small record; a task whose
output (images) or record (slices) exists is skipped when a run is repeated, so
an interrupted run resumes where it stopped.

Output layout in the ``--out`` folder::

    <name>.tif | <name>.png        labels of an image (same name as the input)
    <name>.zarr                    labels of a stack, (Z, H, W), one chunk per slice
    report.json                    per item: status, score, area, time
    .napari-persam/records/        one JSON record per finished item (for resuming)
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_persam.core.batch_io import (
    Target,
    create_label_stack,
    label_suffix,
    read_image,
    read_slice,
    stack_shape,
    write_json,
    write_label_slice,
    write_labels,
)
from napari_persam.core.concept import Concept
from napari_persam.core.progress import Progress, ProgressGenerator

if TYPE_CHECKING:  # pragma: no cover
    from napari_persam.core.persam import PerSAM

REPORT_NAME = "report.json"
RECORDS_DIR = os.path.join(".napari-persam", "records")


@dataclass(frozen=True)
class WorkItem:
    """One task: an image, or one slice of a stack (plain data, sent to Dask workers).

    Attributes
    ----------
    target : Target
        The input.
    index : int or None
        Slice index for a stack; ``None`` for an image (or a whole stack when
        propagating through it).
    output : str
        Label file (image) or zarr array (stack).
    record : str
        JSON record written after the output; it marks the item finished.
    """

    target: Target
    index: int | None
    output: str
    record: str

    @property
    def label(self) -> str:
        """How reports and messages name the item."""
        if self.index is None:
            return self.target.path
        return f"{self.target.path}[{self.index}]"

    def is_finished(self) -> bool:
        """Finished by an earlier run: its record and its output both exist.

        The record is written after the output, so an output without one is either
        a file this tool did not write or the leftover of an interrupted write;
        :func:`run_item` refuses to overwrite it.
        """
        return os.path.isfile(self.record) and os.path.exists(self.output)


@dataclass(frozen=True)
class SegmentOptions:
    """What each task does besides PerSAM's own options.

    Attributes
    ----------
    instances : bool
        Separate objects into instance labels (``PerSAM.segment_instances``).
    propagate : bool
        Segment stacks as a whole with ``PerSAM.segment_stack`` (one task per stack).
    start_slice : int, optional
        Where propagation starts in each stack (default: the middle slice).
    """

    instances: bool = False
    start_slice: int | None = None
    propagate: bool = False


def output_dtype(label_values: Iterable[int], options: SegmentOptions) -> np.dtype:
    """Label dtype: int32 for instances, else the smallest unsigned type for the label values."""
    if options.instances:
        return np.dtype(np.int32)
    return np.dtype(np.uint8 if max(label_values) <= 255 else np.uint16)


def plan_items(
    targets: Sequence[Target],
    out_dir: str | os.PathLike,
    *,
    options: SegmentOptions,
) -> tuple[list[WorkItem], list[dict[str, Any]]]:
    """Work items for ``targets`` and failure records for inputs that cannot be planned.

    Writes nothing (see :func:`prepare_outputs`). Output names must be unique and
    must not be an input: both raise ValueError (a bad argument).
    """
    out = Path(out_dir)
    records = out / RECORDS_DIR
    inputs = {os.path.abspath(target.path) for target in targets}
    seen: dict[str, str] = {}
    items: list[WorkItem] = []
    failures: list[dict[str, Any]] = []
    for target in targets:
        suffix = ".zarr" if target.is_stack else label_suffix(target.path)
        output = str(out / f"{target.name}{suffix}")
        if os.path.abspath(output) in inputs:
            raise ValueError(
                f"The output for {target.path!r} would overwrite the input {output!r}; "
                "choose an --out folder that holds no inputs."
            )
        if output in seen:
            raise ValueError(
                f"{seen[output]!r} and {target.path!r} would both be written to {output!r}; "
                "rename one of them or segment them into different --out folders."
            )
        seen[output] = target.path
        if not target.is_stack:
            record = str(records / f"{target.name}{suffix}.json")
            items.append(WorkItem(target, None, output, record))
            continue
        try:
            shape = stack_shape(target)
        except Exception as error:
            failures.append(_failure_record(target.path, None, output, error))
            continue
        if options.propagate:
            record = str(records / f"{target.name}.zarr.json")
            items.append(WorkItem(target, None, output, record))
            continue
        for index in range(shape[0]):
            record = str(records / f"{target.name}.zarr" / f"{index}.json")
            items.append(WorkItem(target, index, output, record))
    return items, failures


def prepare_outputs(
    items: Sequence[WorkItem], out_dir: str | os.PathLike, *, dtype: np.dtype
) -> tuple[list[WorkItem], list[dict[str, Any]]]:
    """Create (or check, when resuming) the zarr array of every stack; clean up leftovers.

    Returns the items that can run and one failure record per stack whose output
    path holds something else (it is left untouched, and its items are dropped).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_partial_files(out)
    blocked: set[str] = set()
    failures: list[dict[str, Any]] = []
    prepared: set[str] = set()
    for item in items:
        if not item.target.is_stack or item.output in prepared or item.output in blocked:
            continue
        try:
            shape = stack_shape(item.target)
            existed = os.path.exists(item.output)
            create_label_stack(
                item.output, shape=tuple(shape[:3]), dtype=dtype, source=item.target.path
            )
            if not existed:
                # A new, empty array: records of slices written into a deleted one
                # must not mark its slices finished.
                for other in items:
                    if other.output == item.output:
                        Path(other.record).unlink(missing_ok=True)
            prepared.add(item.output)
        except Exception as error:
            blocked.add(item.output)
            failures.append(_failure_record(item.target.path, None, item.output, error))
    return [item for item in items if item.output not in blocked], failures


def remove_partial_files(out_dir: Path) -> None:
    """Delete temporary files a killed run left in ``out_dir`` (named ``.*.partial*``)."""
    # Not recursive in out_dir itself: label stacks there may hold millions of chunks.
    leftovers = [*out_dir.glob(".*.partial*"), *(out_dir / RECORDS_DIR).rglob(".*.partial*")]
    for leftover in leftovers:
        if leftover.is_file():
            leftover.unlink(missing_ok=True)


def run_item(
    engine: PerSAM,
    concepts: Mapping[int, Concept],
    item: WorkItem,
    *,
    options: SegmentOptions,
    dtype: np.dtype,
) -> dict[str, Any]:
    """Segment one item, write its labels and its record; return the record.

    Several concepts paint their label values in the order given (later ones
    win where masks overlap). Exceptions propagate (the caller reports them).
    """
    start = time.perf_counter()
    if options.propagate and item.target.is_stack:
        return _run_stack(engine, concepts, item, options=options, dtype=dtype, start=start)
    if not item.target.is_stack and os.path.exists(item.output):
        raise ValueError(
            f"{item.output!r} already exists and no record says this tool wrote it (or its run "
            "was interrupted); it is not overwritten. Move it away or choose another --out."
        )
    if item.index is None:
        image = read_image(item.target.path)
    else:
        image = read_slice(item.target, item.index)
    labels, score, area = _labels_for(engine, concepts, image, options=options, dtype=dtype)
    if item.index is None:
        write_labels(item.output, labels)
    else:
        write_label_slice(item.output, item.index, labels)
    record = {
        "input": item.target.path,
        "slice": item.index,
        "output": item.output,
        "status": "ok",
        "score": score,
        "area": area,
        "time_s": round(time.perf_counter() - start, 4),
    }
    if options.instances:
        record["instances"] = int(labels.max(initial=0))
    write_json(item.record, record)
    return record


def _labels_for(
    engine: PerSAM,
    concepts: Mapping[int, Concept],
    image: np.ndarray,
    *,
    options: SegmentOptions,
    dtype: np.dtype,
) -> tuple[np.ndarray, float, int]:
    if options.instances:
        (concept,) = concepts.values()
        result = engine.segment_instances(image, concept)
        labels = np.asarray(result.labels, dtype=dtype)
        score = float(result.scores.mean()) if result.count else 0.0
        return labels, score, int(np.count_nonzero(labels))
    labels = np.zeros(np.shape(image)[:2], dtype=dtype)
    scores = []
    for value, concept in concepts.items():
        segmentation = engine.segment(image, concept)
        labels[segmentation.mask] = value
        scores.append(segmentation.score)
    return labels, float(max(scores)), int(np.count_nonzero(labels))


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
    from napari_persam.core.batch_io import open_stack
    from napari_persam.core.concept import ClassConcepts, Instances, LabelSegmentation

    if len(concepts) == 1:
        ((value, concept),) = concepts.items()
    else:
        value, concept = 0, ClassConcepts(dict(concepts))
    stack = open_stack(item.target)
    depth = int(stack.shape[0])
    start_slice = depth // 2 if options.start_slice is None else options.start_slice
    if not 0 <= start_slice < depth:
        raise ValueError(f"--start-slice {start_slice} is outside the stack (0..{depth - 1}).")
    work = engine.segment_stack(
        stack,
        concept,
        reference_index=start_slice,
        instances=options.instances,
        mode="propagate",
    )
    scores, area = [], 0
    for step in work:  # slices arrive outward from the start slice; each is written at once
        result = step.result
        if isinstance(result, Instances):
            labels = result.labels.astype(dtype)
            scores.append(float(result.scores.mean()) if result.count else 0.0)
        elif isinstance(result, LabelSegmentation):
            labels = result.labels.astype(dtype)
            scores.append(max(result.scores.values(), default=0.0))
        else:
            labels = np.where(result.mask, value, 0).astype(dtype)
            scores.append(float(result.score))
        write_label_slice(item.output, step.index, labels)
        area += int(np.count_nonzero(labels))
    record = {
        "input": item.target.path,
        "slice": None,
        "output": item.output,
        "status": "ok",
        "score": float(np.mean(scores)) if scores else 0.0,
        "area": area,
        "time_s": round(time.perf_counter() - start, 4),
    }
    write_json(item.record, record)
    return record


def skipped_record(item: WorkItem) -> dict[str, Any]:
    """The record of an item finished by an earlier run (its old numbers when known)."""
    previous: dict[str, Any] = {}
    if os.path.isfile(item.record):
        try:
            import json

            previous = json.loads(Path(item.record).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = {}
    record = {
        "input": item.target.path,
        "slice": item.index,
        "output": item.output,
        "score": previous.get("score"),
        "area": previous.get("area"),
        "time_s": previous.get("time_s"),
    }
    record["status"] = "skipped"
    return record


def _failure_record(
    source: str, index: int | None, output: str, error: BaseException
) -> dict[str, Any]:
    return {
        "input": source,
        "slice": index,
        "output": output,
        "status": "failed",
        "error": f"{type(error).__name__}: {error}",
    }


def failure_record(item: WorkItem, error: BaseException) -> dict[str, Any]:
    """The record of an item whose task raised ``error``."""
    return _failure_record(item.target.path, item.index, item.output, error)


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


def write_report(
    out_dir: str | os.PathLike, records: Sequence[dict[str, Any]], *, run: dict[str, Any]
) -> Path:
    """Write ``report.json`` (atomically) into ``out_dir``; returns its path.

    Parameters
    ----------
    records : sequence of dict
        One per item: ``input``, ``slice``, ``output``, ``status`` ("ok",
        "skipped", "failed"), ``score``, ``area``, ``time_s`` or ``error``.
    run : dict
        What the run was (model, concept, options), recorded as is.
    """
    counts = dict.fromkeys(("ok", "skipped", "failed"), 0)
    for record in records:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    path = Path(out_dir) / REPORT_NAME
    write_json(path, {"run": run, "summary": counts, "items": list(records)})
    return path
