"""Downloading one file over HTTP, hashed while it streams, as a progress generator.

A plain ``requests`` stream: each chunk read is written to a temporary ``.part``
file beside the destination, hashed, and reported as a :class:`Progress` step, so
the generator yields between chunks with no thread. Closing the generator (Cancel
in the widget, Ctrl-C in a terminal) closes the connection and deletes the partial
file. The file is renamed to its final name only when its size and SHA-256 match.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import tempfile
import time
from collections.abc import Generator
from pathlib import Path

from napari_persam.core.models.errors import ChecksumError, DownloadError
from napari_persam.core.progress import Progress

CONNECT_TIMEOUT_S = 15.0
READ_TIMEOUT_S = 60.0
STALE_PART_AGE_S = 24 * 3600
#: mkstemp makes owner-only files; a shared cache needs readable downloads.
FILE_MODE = 0o644
_CHUNK = 1 << 20


def iter_download(
    url: str,
    destination: str | os.PathLike,
    *,
    size: int,
    sha256: str,
    message: str = "",
) -> Generator[Progress, None, Path]:
    """Download ``url`` to ``destination``, verified against ``size`` and ``sha256``.

    Yields :class:`Progress` in bytes received of ``size`` (``message``, default
    ``"downloading <file name>"``) and returns the destination path. The folder
    must exist and be writable (the caller checks space and permissions, where it
    can say what to do).

    Raises
    ------
    DownloadError
        No connection, an HTTP error or a broken transfer; ``retry`` tells whether
        trying again may help. The message says what happened, not what to do.
    ChecksumError
        The received file has the wrong size or hash (it is deleted).
    """
    import requests

    target = Path(destination)
    remove_stale_parts(target.parent, target.name)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".part")
    partial = Path(tmp_name)
    label = message or f"downloading {target.name}"
    received = 0
    digest = hashlib.sha256()
    finished = False
    try:
        with os.fdopen(fd, "wb") as file:
            yield Progress(0, size, label)
            try:
                response = requests.get(
                    url, stream=True, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
                )
            except requests.RequestException as error:
                raise _connection_error(url, error, received=0, size=size) from error
            with response:
                if response.status_code != 200:
                    raise DownloadError(
                        f"the server answered HTTP {response.status_code} {response.reason}",
                        retry=response.status_code >= 500,
                    )
                try:
                    for chunk in response.iter_content(chunk_size=_CHUNK):
                        file.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        yield Progress(min(received, size), size, label)
                except requests.RequestException as error:
                    raise _connection_error(url, error, received=received, size=size) from error
        if received != size:
            raise ChecksumError(f"received {received:,} bytes, but {target.name} has {size:,}")
        found = digest.hexdigest()
        if found != sha256:
            raise ChecksumError(f"received SHA-256 {found}, expected {sha256}")
        os.chmod(partial, FILE_MODE)
        os.replace(partial, target)
        finished = True
        return target
    except OSError as error:  # the disk, not the network (requests' errors are handled above)
        raise DownloadError(
            f"writing {partial} failed after {received / 1e6:,.1f} MB: {error.strerror or error}",
            retry=False,
        ) from error
    finally:
        if not finished:
            partial.unlink(missing_ok=True)


def _connection_error(url: str, error: BaseException, *, received: int, size: int) -> DownloadError:
    import requests

    if received == 0 and isinstance(error, (requests.ConnectionError, requests.Timeout)):
        return DownloadError(
            f"no connection to {url} ({_short(error)}); this computer may be offline", retry=False
        )
    return DownloadError(
        f"the transfer broke after {received / 1e6:,.1f} of {size / 1e6:,.1f} MB ({_short(error)})",
        retry=True,
    )


def remove_stale_parts(folder: Path, filename: str) -> None:
    """Delete ``.part`` files a killed process left behind (untouched for a day).

    A download in progress in another process writes its file all the time, so
    its modification time stays recent and it is left alone.
    """
    cutoff = time.time() - STALE_PART_AGE_S
    for part in folder.glob(f"{glob.escape(filename)}.*.part"):
        with contextlib.suppress(OSError):
            if part.stat().st_mtime < cutoff:
                part.unlink()


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    name = type(error).__name__
    return f"{name}: {text[:200]}" if text else name
