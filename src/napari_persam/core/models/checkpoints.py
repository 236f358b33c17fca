"""Finding, downloading and verifying checkpoint files.

Checkpoints live in one folder (:func:`napari_persam.core.paths.checkpoints_dir`)
under the publisher's file name, so a file put there by hand is found. A file is used only after its
SHA-256 matched the registry's; the result is remembered in a small record beside
it (``<file>.verified.json`` with size, modification time and hash) so a 2.5 GB
file is not hashed again on every start, while a file that changed is.

Downloads themselves are in :mod:`.download`; a download is
renamed into place only when size and hash match, so an interrupted or corrupted
download never looks like a checkpoint. Every function that takes time is a generator yielding
:class:`~napari_persam.core.progress.Progress` (bytes) and returning its result;
nothing here prints.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Generator
from pathlib import Path

from napari_persam.core.models.download import FILE_MODE, iter_download
from napari_persam.core.models.errors import ChecksumError, DownloadError, WeightsError
from napari_persam.core.models.registry import MODEL_REGISTRY, ModelSpec
from napari_persam.core.paths import CACHE_ENV, checkpoints_dir
from napari_persam.core.progress import Progress

MIRROR_ENV = "NAPARI_PERSAM_MIRROR"
"""Environment variable with a base URL to download from instead of the publishers
(an institutional mirror); the registry's file name is appended to it."""

RECORD_SUFFIX = ".verified.json"
DOWNLOAD_ATTEMPTS = 2  # the first download and one more after a bad or broken one
_HASH_CHUNK = 8 << 20

# Hashes computed in this process, by (real path, size, mtime_ns).
_HASH_MEMO: dict[tuple[str, int, int], str] = {}
_HASH_MEMO_LOCK = threading.Lock()


# ---------------------------------------------------------------------- where files go
def checkpoint_path(spec: ModelSpec, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ``spec``'s checkpoint is (or will be) in the cache folder."""
    if not spec.filename:
        raise WeightsError(f"Model {spec.name!r} has no published checkpoint.")
    return checkpoints_dir(cache_dir) / spec.filename


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


def iter_checkpoint_sha256(path: str | os.PathLike) -> Generator[Progress, None, str]:
    """SHA-256 of a checkpoint file (lowercase hex), computed once per file version.

    Reuses the verification record beside the file, or a hash computed earlier in
    this process, while the file's size and modification time are unchanged; so
    recording which checkpoint made a result is cheap even for 2.5 GB files. A
    progress generator (bytes hashed), for workers.
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
    digest = yield from iter_sha256(path, message=f"hashing {path.name}")
    with _HASH_MEMO_LOCK:
        _HASH_MEMO[key] = digest
    return digest


def iter_model_sha256(
    name: str, checkpoint: str | os.PathLike | None
) -> Generator[Progress, None, str | None]:
    """SHA-256 of the weights ``iter_load_model(name, checkpoint=...)`` loads, or None.

    Without a checkpoint file the registry's published, verified hash is the answer
    (None for models without published weights); with one, its memoised hash.
    """
    if checkpoint is None:
        spec = MODEL_REGISTRY.get(name)
        return (spec.sha256 or None) if spec is not None else None
    return (yield from iter_checkpoint_sha256(checkpoint))


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
        os.chmod(tmp, FILE_MODE)
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
    source = download_url(spec, url=url)
    hint = manual_install_hint(spec, cache_dir=cache_dir, url=url)
    _prepare_folder(spec, path.parent, hint=hint)
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        label = f"downloading {spec.filename}" + (f" (try {attempt})" if attempt > 1 else "")
        try:
            found = yield from iter_download(
                source, path, size=spec.size, sha256=spec.sha256, message=label
            )
        except ChecksumError as error:
            if attempt == DOWNLOAD_ATTEMPTS:
                raise ChecksumError(
                    problem + f"The {spec.name} weights downloaded from {source} failed "
                    f"verification {attempt} times ({error}); the bad file was deleted. " + hint
                ) from error
            continue
        except DownloadError as error:
            if not error.retry or attempt == DOWNLOAD_ATTEMPTS:
                raise DownloadError(
                    problem + f"Could not download the {spec.name} weights from {source}: "
                    f"{error}. {hint}"
                ) from error
            continue
        write_record(found, spec.sha256)
        yield Progress(spec.size, spec.size, label)
        return found
    raise AssertionError("unreachable")  # pragma: no cover


def _prepare_folder(spec: ModelSpec, folder: Path, *, hint: str) -> None:
    """Create ``folder`` and check it can take the file, before any byte is fetched."""
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
            "can write to, or install the file by hand: " + hint
        )
    free = shutil.disk_usage(folder).free
    if free < spec.size:
        raise DownloadError(
            f"Not enough space for {spec.filename}: it needs {spec.size / 1e6:,.0f} MB but "
            f"{folder} has {free / 1e6:,.0f} MB free. Free some space or set {CACHE_ENV} to "
            "a folder on another disk."
        )


def manual_install_hint(
    spec: ModelSpec, *, cache_dir: str | os.PathLike | None = None, url: str | None = None
) -> str:
    """How to install ``spec``'s checkpoint without this program downloading it."""
    folder = checkpoints_dir(cache_dir)
    return (
        f"To install it by hand, download {download_url(spec, url=url)} "
        f"({spec.size / 1e6:,.0f} MB) on a computer with internet access and put it in "
        f"{folder} named {spec.filename}; it is found there and checked against SHA-256 "
        f"{spec.sha256}. Or set {CACHE_ENV} to a folder that holds the file."
    )


__all__ = [
    "MIRROR_ENV",
    "ChecksumError",
    "DownloadError",
    "WeightsError",
    "cache_status",
    "checkpoint_path",
    "iter_checkpoint_sha256",
    "iter_ensure_checkpoint",
    "iter_model_sha256",
    "iter_verify",
    "manual_install_hint",
    "read_record",
]
