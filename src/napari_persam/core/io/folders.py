"""Where outputs go: checking a folder can be written before any work is done.

A run that fails after minutes of encoding because its output folder is read-only,
or names a path under a file, wastes the user's time; so every front end checks
its output folder first with :func:`check_writable_folder`. Nothing is created by
the check: the folder is made when the first output is written.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from napari_persam.core.errors import InputError, option


def check_writable_folder(path: str | os.PathLike, *, what: str = "The output folder") -> Path:
    """``path`` as a Path if files can be written in it (or it can be created there).

    Parameters
    ----------
    path : path
        A folder that may not exist yet.
    what : str
        How messages name it.

    Raises
    ------
    InputError
        If ``path`` is a file, lies under a file, or neither it nor the nearest
        folder above it accepts a new file; naming :func:`option` ``"out"``.
    """
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{what} {folder} is a file, not a folder; choose {option('out')}.")
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise InputError(
            f"{what} {folder} cannot be created: {existing} is a file, not a folder. "
            f"Choose {option('out')}."
        )
    problem = writable_problem(existing)
    if problem:
        where = "" if existing == folder else f" ({existing}, where it would be created)"
        raise InputError(
            f"{what} {folder} is not writable{where}: {problem}. Choose {option('out')} "
            "that you can write to."
        )
    return folder


def writable_problem(folder: str | os.PathLike) -> str:
    """Why no file can be created in the existing ``folder`` ("" when one can).

    Tries for real (a temporary file, removed at once): permission bits, read-only
    mounts, ACLs and quotas all answer the same way.
    """
    try:
        handle, name = tempfile.mkstemp(prefix=".napari-persam-write-test-", dir=folder)
    except OSError as error:
        return error.strerror or str(error)
    os.close(handle)
    try:
        os.unlink(name)
    except OSError:  # pragma: no cover - created but not removable: still writable
        pass
    return ""
