"""Downloading one checkpoint over HTTP, verified while it streams, as a progress generator.

``pooch``'s HTTP downloader writes into a temporary ``.part`` file in the cache
folder; the bytes are hashed as they arrive and the file is renamed to the
checkpoint's name only when size and SHA-256 match. The download runs in a worker
thread because pooch blocks until the file is complete, while the generator must
keep yielding progress and stay closable (closing it cancels the transfer).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING

from napari_persam.core.progress import Progress
from napari_persam.core.weights import (
    CACHE_ENV,
    FILE_MODE,
    ChecksumError,
    DownloadError,
    cache_folder,
    download_url,
    manual_install_hint,
    write_record,
)

if TYPE_CHECKING:  # pragma: no cover
    from napari_persam.core.models import ModelSpec

CONNECT_TIMEOUT_S = 15.0
READ_TIMEOUT_S = 60.0
STALE_PART_AGE_S = 24 * 3600
_CHUNK = 1 << 20


def iter_download(
    spec: ModelSpec,
    *,
    cache_dir: str | os.PathLike | None = None,
    url: str | None = None,
    message: str = "",
) -> Generator[Progress, None, Path]:
    """Download ``spec``'s checkpoint once into the cache folder, verified.

    Yields :class:`Progress` (bytes received of ``spec.size``, with ``message``,
    default ``"downloading <file name>"``). Closing the generator cancels the
    download; no partial file is left either way.

    Raises
    ------
    DownloadError
        No connection, an HTTP error, a broken transfer, or no space; ``retry``
        tells whether trying again may help.
    ChecksumError
        The received file has the wrong size or hash (it is deleted).
    """
    folder = cache_folder(cache_dir)
    source = download_url(spec, url=url)
    _prepare_folder(spec, folder, cache_dir=cache_dir, url=url)
    target = folder / spec.filename
    _remove_stale_parts(folder, spec.filename)
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=spec.filename + ".", suffix=".part")
    os.close(fd)
    transfer = _Transfer(source, Path(tmp_name))
    label = message or f"downloading {spec.filename}"
    finished = False
    try:
        yield Progress(0, spec.size, label)
        transfer.start()
        shown = 0
        while transfer.is_alive():
            transfer.join(0.1)
            if transfer.received != shown:
                shown = transfer.received
                yield Progress(min(shown, spec.size), spec.size, label)
        if transfer.error is not None:
            raise _as_download_error(transfer, spec, cache_dir=cache_dir, url=url)
        if transfer.received != spec.size:
            raise ChecksumError(
                f"received {transfer.received:,} bytes, but {spec.filename} has {spec.size:,}"
            )
        digest = transfer.digest.hexdigest()
        if digest != spec.sha256:
            raise ChecksumError(f"received SHA-256 {digest}, expected {spec.sha256}")
        os.chmod(tmp_name, FILE_MODE)
        os.replace(tmp_name, target)
        finished = True
        write_record(target, digest)
        yield Progress(spec.size, spec.size, label)
        return target
    finally:
        if not finished:
            transfer.cancel.set()
            if transfer.is_alive():
                transfer.join(timeout=5.0)
            Path(tmp_name).unlink(missing_ok=True)


def _prepare_folder(
    spec: ModelSpec, folder: Path, *, cache_dir: str | os.PathLike | None, url: str | None
) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DownloadError(
            f"Cannot create the cache folder {folder}: {error.strerror or error}. "
            f"Set {CACHE_ENV} to a folder you can write to."
        ) from error
    if not os.access(folder, os.W_OK):
        raise DownloadError(
            f"The cache folder {folder} is not writable. Set {CACHE_ENV} to a folder you "
            "can write to, or install the file by hand: "
            + manual_install_hint(spec, cache_dir=cache_dir, url=url)
        )
    free = shutil.disk_usage(folder).free
    if free < spec.size:
        raise DownloadError(
            f"Not enough space for {spec.filename}: it needs {spec.size / 1e6:,.0f} MB but "
            f"{folder} has {free / 1e6:,.0f} MB free. Free some space or set {CACHE_ENV} to "
            "a folder on another disk."
        )


def _remove_stale_parts(folder: Path, filename: str) -> None:
    """Delete ``.part`` files a killed process left behind (untouched for a day).

    A download in progress in another process writes its file all the time, so
    its modification time stays recent and it is left alone.
    """
    cutoff = time.time() - STALE_PART_AGE_S
    for part in folder.glob(f"{glob.escape(filename)}.*.part"):
        with contextlib.suppress(OSError):
            if part.stat().st_mtime < cutoff:
                part.unlink()


class _Cancelled(Exception):
    """Raised inside the download thread when the consumer closed the generator."""


class _Transfer(threading.Thread):
    """One HTTP download into a file, hashed while it streams, in a worker thread.

    A thread because pooch's downloader blocks until the file is complete, while
    the generator must keep yielding progress (and be closable) meanwhile.
    """

    def __init__(self, url: str, destination: Path) -> None:
        super().__init__(name="napari-persam-download", daemon=True)
        self.url = url
        self.destination = destination
        self.received = 0
        self.digest = hashlib.sha256()
        self.error: BaseException | None = None
        self.cancel = threading.Event()

    def run(self) -> None:
        import pooch

        downloader = pooch.HTTPDownloader(
            progressbar=False, chunk_size=_CHUNK, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
        )
        try:
            with self.destination.open("wb") as file:
                downloader(self.url, _HashingWriter(file, self), None)
        except BaseException as error:  # reported to the generator, which re-raises
            self.error = error
        finally:
            if self.cancel.is_set():
                self.destination.unlink(missing_ok=True)


class _HashingWriter:
    """The file object pooch writes to: hashes, counts, and stops on cancel."""

    def __init__(self, file, transfer: _Transfer) -> None:
        self._file = file
        self._transfer = transfer

    def write(self, data: bytes) -> int:
        if self._transfer.cancel.is_set():
            raise _Cancelled
        self._file.write(data)
        self._transfer.digest.update(data)
        self._transfer.received += len(data)
        return len(data)

    def flush(self) -> None:
        self._file.flush()


def _as_download_error(
    transfer: _Transfer,
    spec: ModelSpec,
    *,
    cache_dir: str | os.PathLike | None,
    url: str | None,
) -> DownloadError:
    import requests

    error = transfer.error
    hint = manual_install_hint(spec, cache_dir=cache_dir, url=url)
    if isinstance(error, requests.HTTPError) and error.response is not None:
        reason = f"the server answered HTTP {error.response.status_code} {error.response.reason}"
        retry = error.response.status_code >= 500
    elif transfer.received == 0 and isinstance(error, (requests.ConnectionError, requests.Timeout)):
        reason = f"no connection ({_short(error)}); this computer may be offline"
        retry = False
    else:
        reason = (
            f"the transfer broke after {transfer.received / 1e6:,.1f} of "
            f"{spec.size / 1e6:,.1f} MB ({_short(error)})"
        )
        retry = True
    return DownloadError(
        f"Could not download the {spec.name} weights from {transfer.url}: {reason}. {hint}",
        retry=retry,
    )


def _short(error: BaseException | None) -> str:
    text = str(error).strip().splitlines()[0] if error is not None and str(error).strip() else ""
    name = type(error).__name__
    return f"{name}: {text[:200]}" if text else name
