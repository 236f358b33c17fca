"""Planning a batch run: one work item per image or stack slice, and the output folder.

Output layout in the output folder::

    <name>.tif | <name>.png        labels of an image (same name as the input)
    <name>.zarr                    labels of a stack, (Z, H, W), one chunk per slice
    report.json                    per item: status, score, area, time
    .napari-persam/records/        one JSON record per finished item (for resuming)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_persam.core.batch.report import failure_from
from napari_persam.core.errors import InputError, option
from napari_persam.core.io.labels import create_label_stack, label_suffix
from napari_persam.core.io.lazy import stack_shape
from napari_persam.core.io.targets import Target

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
            raise InputError(
                f"The output for {target.path!r} would overwrite the input {output!r}; "
                f"choose {option('out')} that holds no inputs."
            )
        if output in seen:
            raise InputError(
                f"{seen[output]!r} and {target.path!r} would both be written to {output!r}; "
                "rename one of them or segment them into different output folders."
            )
        seen[output] = target.path
        if not target.is_stack:
            record = str(records / f"{target.name}{suffix}.json")
            items.append(WorkItem(target, None, output, record))
            continue
        try:
            shape = stack_shape(target)
        except Exception as error:
            failures.append(failure_from(target.path, None, output, error))
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
            failures.append(failure_from(item.target.path, None, item.output, error))
    return [item for item in items if item.output not in blocked], failures


def remove_partial_files(out_dir: Path) -> None:
    """Delete temporary files a killed run left in ``out_dir`` (named ``.*.partial*``)."""
    # Not recursive in out_dir itself: label stacks there may hold millions of chunks.
    leftovers = [*out_dir.glob(".*.partial*"), *(out_dir / RECORDS_DIR).rglob(".*.partial*")]
    for leftover in leftovers:
        if leftover.is_file():
            leftover.unlink(missing_ok=True)


def skipped_record(item: WorkItem) -> dict[str, Any]:
    """The record of an item finished by an earlier run (its old numbers when known)."""
    previous: dict[str, Any] = {}
    if os.path.isfile(item.record):
        try:
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


def failure_record(item: WorkItem, error: BaseException) -> dict[str, Any]:
    """The record of an item whose task raised ``error``."""
    return failure_from(item.target.path, item.index, item.output, error)
