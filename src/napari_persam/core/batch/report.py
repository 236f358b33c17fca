"""Failure records of batch inputs, and the run's report.json."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from napari_persam.core.errors import InputError
from napari_persam.core.io.labels import write_json
from napari_persam.core.models.errors import CheckpointError, WeightsError

REPORT_NAME = "report.json"


def failure_from(
    source: str, index: int | None, output: str, error: BaseException
) -> dict[str, Any]:
    """The record of a failed input.

    ``error`` is the message in the core's words; for an
    :class:`~napari_persam.core.errors.InputError`, ``error_template`` keeps its
    option markers so a front end can name its own options (the command line
    rewrites ``error`` with its flags before writing the report).
    """
    record = {
        "input": source,
        "slice": index,
        "output": output,
        "status": "failed",
        "error": _describe(error),
    }
    if isinstance(error, InputError):
        record["error_template"] = error.template
    return record


def _describe(error: BaseException) -> str:
    # Our own errors say what is wrong; others (torch, zarr) are named by their type.
    if isinstance(error, (InputError, WeightsError, CheckpointError)):
        return str(error)
    return f"{type(error).__name__}: {error}"


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
