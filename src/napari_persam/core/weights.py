"""Finding, downloading and verifying checkpoint files.

Checkpoints live in one cache folder (:func:`cache_folder`) under the publisher's
file name, so a file put there by hand is found. A file is used only after its
SHA-256 matched the registry's; the result is remembered in a small record beside
it (``<file>.verified.json`` with size, modification time and hash) so a 2.5 GB
file is not hashed again on every start, while a file that changed is.

Downloads go through ``pooch``'s HTTP downloader into a temporary ``.part`` file
in the same folder, hashed while it streams, and are renamed into place only when
size and hash match: an interrupted or corrupted download never looks like a
checkpoint. Every function that takes time is a generator yielding
:class:`~napari_persam.core.progress.Progress` (bytes) and returning its result;
nothing here prints.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING

from napari_persam.core.progress import Progress, run

if TYPE_CHECKING:  # pragma: no cover
    from napari_persam.core.models import ModelSpec

CACHE_ENV = "NAPARI_PERSAM_CACHE"
"""Environment variable naming the cache folder (overrides the platform default)."""

MIRROR_ENV = "NAPARI_PERSAM_MIRROR"
"""Environment variable with a base URL to download from instead of the publishers
(an institutional mirror); the registry's file name is appended to it."""

RECORD_SUFFIX = ".verified.json"
DOWNLOAD_ATTEMPTS = 2  # the first download and one more after a bad or broken one
CONNECT_TIMEOUT_S = 15.0
READ_TIMEOUT_S = 60.0
STALE_PART_AGE_S = 24 * 3600
_CHUNK = 1 << 20
_HASH_CHUNK = 8 << 20
# mkstemp makes owner-only files; a shared cache needs readable checkpoints.
_FILE_MODE = 0o644

# Hashes computed in this process, by (real path, size, mtime_ns).
_HASH_MEMO: dict[tuple[str, int, int], str] = {}
_HASH_MEMO_LOCK = threading.Lock()


class WeightsError(RuntimeError):
    """A checkpoint could not be found, downloaded or verified; the message says what to do."""


class DownloadError(WeightsError):
    """The download failed (no connection, HTTP error, broken transfer, no space)."""

    def __init__(self, message: str, *, retry: bool = False) -> None:
        super().__init__(message)
        self.retry = retry


class ChecksumError(WeightsError):
    """A file's size or SHA-256 differs from the registry's."""


# ---------------------------------------------------------------------- where files go
def cache_folder(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder checkpoints are downloaded into and looked for.

    Parameters
    ----------
    cache_dir : path, optional
        Used as is when given. Otherwise ``$NAPARI_PERSAM_CACHE`` if set, else the
        platform's user cache (``~/.cache/napari-persam`` on Linux,
        ``~/Library/Caches/napari-persam`` on macOS,
        ``%LOCALAPPDATA%\\napari-persam\\napari-persam\\Cache`` on Windows).
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from_env = os.environ.get(CACHE_ENV, "").strip()
    if from_env:
        return Path(from_env).expanduser()
    import pooch

    return Path(pooch.os_cache("napari-persam"))


def checkpoint_path(spec: ModelSpec, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ``spec``'s checkpoint is (or will be) in the cache folder."""
    if not spec.filename:
        raise WeightsError(f"Model {spec.name!r} has no published checkpoint.")
    return cache_folder(cache_dir) / spec.filename


def download_url(spec: ModelSpec, *, url: str | None = None) -> str:
    """The address to download ``spec`` from: ``url``, else the mirror, else the publisher."""
    if url:
        return url
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if mirror:
        return mirror.rstrip("/") + "/" + spec.filename
    return spec.url


# ------------------------------------------------------------------------- hashing
def iter_sha256(path: str | os.PathLike, *, message: str = "") -> Generator[Progress, None, str]:
    """SHA-256 of a file as lowercase hex, yielding bytes read so far."""
    path = Path(path)
    total = path.stat().st_size
    label = message or f"verifying {path.name}"
    digest = hashlib.sha256()
    done = 0
    yield Progress(0, total, label)
    with path.open("rb") as file:
        while chunk := file.read(_HASH_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            yield Progress(done, total, label)
    return digest.hexdigest()


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a checkpoint file (lowercase hex), computed once per file version.

    Reuses the verification record beside the file, or a hash computed earlier in
    this process, while the file's size and modification time are unchanged; so
    recording which checkpoint made a result is cheap even for 2.5 GB files.
    """
    path = Path(path)
    recorded = read_record(path)
    if recorded is not None:
        return recorded
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _HASH_MEMO_LOCK:
        known = _HASH_MEMO.get(key)
    if known is not None:
        return known
    digest = run(iter_sha256(path))
    with _HASH_MEMO_LOCK:
        _HASH_MEMO[key] = digest
    return digest


def record_path(path: str | os.PathLike) -> Path:
    """The verification record of checkpoint ``path``."""
    path = Path(path)
    return path.with_name(path.name + RECORD_SUFFIX)


def read_record(path: str | os.PathLike) -> str | None:
    """The hash in ``path``'s record if the record describes the file as it is now."""
    path = Path(path)
    try:
        stat = path.stat()
        record = json.loads(record_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (
        isinstance(record, dict)
        and record.get("size") == stat.st_size
        and record.get("mtime_ns") == stat.st_mtime_ns
        and isinstance(record.get("sha256"), str)
    ):
        return record["sha256"]
    return None


def write_record(path: str | os.PathLike, sha256: str) -> None:
    """Remember that ``path`` (as it is now) has hash ``sha256``; silent if not writable."""
    path = Path(path)
    try:
        stat = path.stat()
        record = {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(record, file)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, record_path(path))
    except OSError:
        # A read-only cache still works; the file is just hashed again next time.
        pass


def remove_checkpoint(path: str | os.PathLike) -> None:
    """Delete a checkpoint and its record (missing files are fine)."""
    Path(path).unlink(missing_ok=True)
    record_path(path).unlink(missing_ok=True)


# --------------------------------------------------------------------- verification
VERIFIED = "verified"
NOT_VERIFIED = "not verified"
WRONG_SIZE = "wrong size"
MISSING = "missing"


def cache_status(spec: ModelSpec, *, cache_dir: str | os.PathLike | None = None) -> str:
    """What the cache holds for ``spec``, without hashing: one of
    ``"verified"``, ``"not verified"`` (present, hash not checked yet),
    ``"wrong size"`` or ``"missing"``."""
    path = checkpoint_path(spec, cache_dir=cache_dir)
    if not path.is_file():
        return MISSING
    if path.stat().st_size != spec.size:
        return WRONG_SIZE
    return VERIFIED if read_record(path) == spec.sha256 else NOT_VERIFIED


def iter_verify(
    spec: ModelSpec, path: str | os.PathLike, *, recheck: bool = False
) -> Generator[Progress, None, None]:
    """Check ``path`` against ``spec``'s size and SHA-256, yielding bytes hashed.

    A file whose record says it was verified as it is now is not hashed again
    unless ``recheck``. On success a record is written beside the file.

    Raises
    ------
    ChecksumError
        If size or hash differ (the message gives both values).
    """
    path = Path(path)
    size = path.stat().st_size
    if size != spec.size:
        raise ChecksumError(
            f"{path} has {size:,} bytes but {spec.filename} has {spec.size:,} "
            f"({'incomplete' if size < spec.size else 'not the published file'})"
        )
    if not recheck and read_record(path) == spec.sha256:
        return
    digest = yield from iter_sha256(path, message=f"verifying {spec.filename}")
    if digest != spec.sha256:
        raise ChecksumError(f"{path} has SHA-256 {digest}, but {spec.filename} has {spec.sha256}")
    write_record(path, digest)


# ------------------------------------------------------------------------ downloads
def iter_ensure_checkpoint(
    spec: ModelSpec,
    *,
    cache_dir: str | os.PathLike | None = None,
    url: str | None = None,
) -> Generator[Progress, None, Path]:
    """The verified checkpoint of ``spec``: from the cache, or downloaded into it.

    A cached file that fails verification (partial, corrupted) is deleted and
    downloaded again. A download that is broken or fails verification is tried
    once more; then a :class:`WeightsError` explains how to install the file by
    hand. No connection at all fails at once with the same explanation.

    Yields :class:`Progress` in bytes (hashing, downloading); returns the path.
    """
    path = checkpoint_path(spec, cache_dir=cache_dir)
    problem = ""
    if path.is_file():
        try:
            yield from iter_verify(spec, path)
            return path
        except ChecksumError as error:
            problem = f"The cached file {path} failed verification ({error}) and was deleted. "
            remove_checkpoint(path)
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        try:
            label = f"downloading {spec.filename}" + (f" (try {attempt})" if attempt > 1 else "")
            return (yield from iter_download(spec, cache_dir=cache_dir, url=url, message=label))
        except ChecksumError as error:
            if attempt == DOWNLOAD_ATTEMPTS:
                raise ChecksumError(
                    problem
                    + f"The {spec.name} weights downloaded from {download_url(spec, url=url)} "
                    f"failed verification {attempt} times ({error}); the bad file was deleted. "
                    + manual_install_hint(spec, cache_dir=cache_dir, url=url)
                ) from error
        except DownloadError as error:
            if not error.retry or attempt == DOWNLOAD_ATTEMPTS:
                raise DownloadError(problem + str(error)) from error
    raise AssertionError("unreachable")  # pragma: no cover


def ensure_checkpoint(
    spec: ModelSpec,
    *,
    cache_dir: str | os.PathLike | None = None,
    url: str | None = None,
) -> Path:
    """:func:`iter_ensure_checkpoint` without progress."""
    return run(iter_ensure_checkpoint(spec, cache_dir=cache_dir, url=url))


def manual_install_hint(
    spec: ModelSpec, *, cache_dir: str | os.PathLike | None = None, url: str | None = None
) -> str:
    """How to install ``spec``'s checkpoint without this program downloading it."""
    folder = cache_folder(cache_dir)
    return (
        f"To install it by hand, download {download_url(spec, url=url)} "
        f"({spec.size / 1e6:,.0f} MB) on a computer with internet access and put it in "
        f"{folder} named {spec.filename}; it is found there and checked against SHA-256 "
        f"{spec.sha256}. Or set {CACHE_ENV} to a folder that holds the file."
    )


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
        os.chmod(tmp_name, _FILE_MODE)
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
