"""Planning a batch run: one work item per image or stack slice, and the output folder.

Output layout in the output folder::

    <name>.tif | <name>.png        labels of an image (same name as the input)
    <name>.zarr                    labels of a stack, (Z, H, W), one chunk per slice
    report.json                    per item: status, score, area, time
    .napari-persam/records/        one JSON record per item (for resuming)

An image's record is written *before* its label file, saying the output is being
written, and replaced by the finished record after it: so a label file in the
folder is always either napari-persam's (with a record) or the user's (never
replaced), even when a run is killed between the two writes.
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
from napari_persam.core.engine.results import MAX_LABEL_VALUE
from napari_persam.core.errors import InputError, option
from napari_persam.core.io.labels import PNG_MAX_LABEL, create_label_stack, label_suffix
from napari_persam.core.io.lazy import stack_shape
from napari_persam.core.io.targets import Target

RECORDS_DIR = os.path.join(".napari-persam", "records")
#: Record status of an output being written (the record comes first, see above).
WRITING = "writing"


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
        JSON record of the item: written before an image's output (status
        ``"writing"``) and after it (``"ok"``); only the latter marks it finished.
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
        """Finished by an earlier run: its output exists and its record says it is done."""
        return os.path.exists(self.output) and read_record(self.record).get("status") == "ok"

    def output_is_ours(self) -> bool:
        """Whether an existing image output was written by this tool (it has a record).

        An output without a record is a file of the user's: it is never replaced.
        """
        return os.path.isfile(self.record)


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON record at ``path``, or ``{}`` when it is missing or unreadable."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


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
    """Label dtype: int32 for instances, else the smallest type that holds the label values.

    uint8 up to 255, uint16 up to 65535, int32 above (up to
    :data:`~napari_persam.core.engine.results.MAX_LABEL_VALUE`).

    Raises
    ------
    InputError
        For a label value outside 1 .. MAX_LABEL_VALUE.
    """
    values = [int(value) for value in label_values]
    bad = [value for value in values if not 1 <= value <= MAX_LABEL_VALUE]
    if bad:
        raise InputError(
            f"Label value(s) {bad} cannot be painted: label values are 1 to {MAX_LABEL_VALUE} "
            f"(0 is background). Choose {option('label_value')}."
        )
    if options.instances:
        return np.dtype(np.int32)
    top = max(values)
    return np.dtype(np.uint8 if top <= 255 else np.uint16 if top <= PNG_MAX_LABEL else np.int32)


def check_output_formats(
    items: Sequence[WorkItem], dtype: np.dtype, *, options: SegmentOptions
) -> None:
    """Refuse, before any work, label values that an item's output format cannot hold.

    PNG holds 16 bits: label values above 65535 need TIFF (or zarr) outputs.
    Instance ids go into PNGs as uint16 (see
    :func:`~napari_persam.core.io.labels.write_labels`).
    """
    if options.instances or np.dtype(dtype).itemsize <= 2:
        return
    pngs = [item.target.path for item in items if item.output.lower().endswith(".png")]
    if pngs:
        raise InputError(
            f"Label values above {PNG_MAX_LABEL} need 32-bit label images, but the outputs of "
            f"{len(pngs)} input(s) (e.g. {pngs[0]!r}) are PNGs, which hold 16 bits. Choose "
            f"{option('label_value')} of at most {PNG_MAX_LABEL}, or give those images as TIFFs."
        )


def plan_items(
    targets: Sequence[Target],
    out_dir: str | os.PathLike,
    *,
    options: SegmentOptions,
) -> tuple[list[WorkItem], list[dict[str, Any]]]:
    """Work items for ``targets`` and failure records for inputs that cannot be planned.

    Writes nothing (see :func:`prepare_outputs`). Output names must be unique, and
    the output folder must hold no inputs (outputs would lie beside them and be
    taken for inputs by the next run); both raise an InputError (a bad argument).
    Outputs of an earlier run into the same folder, found again by a folder or a
    glob target, are not inputs: they are left out.
    """
    out = Path(out_dir)
    records = out / RECORDS_DIR
    seen: dict[str, str] = {}
    items: list[WorkItem] = []
    failures: list[dict[str, Any]] = []
    for target in targets:
        if _in_folder(target.path, out):
            if _is_our_output(target.path, records):
                continue
            raise InputError(
                f"The input {target.path!r} is in the output folder {str(out)!r}: the labels "
                "would be written beside the inputs and taken for inputs by the next run. "
                f"Choose {option('out')} (a folder that holds no inputs)."
            )
        suffix = ".zarr" if target.is_stack else label_suffix(target.path)
        output = str(out / f"{target.name}{suffix}")
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


def _in_folder(path: str, folder: Path) -> bool:
    """Whether ``path`` lies directly in ``folder`` (links resolved)."""
    parent = Path(os.path.realpath(path.rstrip("/\\"))).parent
    return parent == Path(os.path.realpath(folder))


def _is_our_output(path: str, records: Path) -> bool:
    """Whether ``path`` (in the output folder) is an output this tool recorded."""
    name = Path(path.rstrip("/\\")).name
    return (records / f"{name}.json").is_file() or (records / name).is_dir()


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
    previous = read_record(item.record)
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
