"""Failure records of batch inputs, and the run's report.json."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from napari_persam.core.errors import InputError, option
from napari_persam.core.io.labels import write_json
from napari_persam.core.models.errors import CheckpointError, WeightsError

REPORT_NAME = "report.json"
#: The ``format`` entry that marks a report.json as written by napari-persam.
REPORT_FORMAT = "napari-persam segment report"


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


def report_is_ours(path: str | os.PathLike) -> bool:
    """Whether ``path`` is missing or a report written by napari-persam (so it may be replaced).

    Reports carry ``"format": REPORT_FORMAT``; those of earlier versions are known
    by their three entries ``run``, ``summary`` and ``items``.
    """
    report = Path(path)
    if not report.exists():
        return True
    try:
        content = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(content, dict):
        return False
    return content.get("format") == REPORT_FORMAT or set(content) == {"run", "summary", "items"}


def check_report_path(out_dir: str | os.PathLike) -> None:
    """Refuse an output folder whose ``report.json`` is not napari-persam's (before any work).

    Raises
    ------
    InputError
        Naming the file, which is kept.
    """
    path = Path(out_dir) / REPORT_NAME
    if not report_is_ours(path):
        raise InputError(
            f"{path} exists and was not written by napari-persam; it is not replaced. Move "
            f"it away or choose {option('out')}."
        )


def write_report(
    out_dir: str | os.PathLike, records: Sequence[dict[str, Any]], *, run: dict[str, Any]
) -> Path:
    """Write ``report.json`` (atomically) into ``out_dir``; returns its path.

    A ``report.json`` that napari-persam did not write is never replaced: should
    one appear during the run, the report goes to ``report-<n>.json`` instead.

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
    number = 1
    while not report_is_ours(path):
        path = path.with_name(f"report-{number}.json")
        number += 1
    content = {"format": REPORT_FORMAT, "run": run, "summary": counts, "items": list(records)}
    write_json(path, content)
    return path
