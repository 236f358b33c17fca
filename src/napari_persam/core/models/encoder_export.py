"""Exporting a model's image encoder to ONNX once per checkpoint, kept in the cache folder.

Fast CPU runtimes (OpenVINO, ONNX Runtime) run SAM's image encoder from an ONNX
file. Exporting takes a minute for ViT-B, so it is done once per set of weights
and kept::

    <cache>/encoders/<weights id>/<model>-<img_size>px-v<EXPORT_FORMAT>/
        encoder.onnx          the graph: (1, 3, S, S) float32 pixels -> (1, C, gh, gw)
        encoder.onnx.data     its weights (ONNX external data; absent for small models)
        record.json           what was exported, and the SHA-256 of every file above

``<weights id>`` is the checkpoint's SHA-256 when known, else ``state-`` and the
SHA-256 of the encoder's weights as loaded. An export is written into
``encoders/.incoming/`` and renamed into place only when complete and checked, so a
killed export leaves nothing under a final name. Every use re-hashes the files
against the record: a corrupt or stale export
(another format version, a file changed or missing) is deleted and made again.

An export that fails (the exporter raised, or was stopped after
:data:`~.export_child.EXPORT_TIMEOUT_S`) leaves ``<model>-<img_size>px-v<format>.failed.json``
beside where it would have been: what failed, when (seconds since the epoch), and the
software that failed. The next run with the same software falls back to PyTorch at once
instead of failing the same way again (a stuck export would cost every run half an hour);
newer software, or deleting the file, tries again, and so does any run a week later. A
failure from the machine's state (a full disk, memory) is not recorded: it says nothing
about the next try.

The export itself runs in a short-lived child process (:mod:`.export_child`):
importing the exporter's onnx holds Python's GIL for 1.3 s in ml_dtypes'
initialisation, which froze napari's window when the widget exported in a
worker thread, and the exporter's memory stayed in napari's process. A model
the child cannot rebuild is exported here, as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_persam.core.models.export_child import (
    ONNX_OPSET,
    ExportError,
    ExportFailed,
    iter_export,
)
from napari_persam.core.paths import encoders_dir
from napari_persam.core.progress import Progress

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Bump when the exported graph changes (inputs, outputs, opset, layout): older exports are
#: rebuilt. 2: ViT blocks exported on (B, HW, C) tokens (:mod:`.export_layout`), 0.80x the
#: CPU time of format 1 in OpenVINO.
EXPORT_FORMAT = 2
MODEL_FILE = "encoder.onnx"
RECORD_FILE = "record.json"
FAILURE_SUFFIX = ".failed.json"
#: A failed export is tried again after this long anyway (a stopped one may have met a
#: machine busy for other reasons).
FAILURE_KEPT_S = 7 * 24 * 3600.0
_INCOMING = ".incoming"
_HASH_CHUNK = 8 << 20
# Leftovers of killed exports are removed after this long (an export takes minutes).
_STALE_INCOMING_S = 6 * 3600.0


def weights_id(encoder: torch.nn.Module, checkpoint_sha256: str | None) -> str:
    """The folder name of ``encoder``'s exports: the checkpoint's SHA-256 when known.

    Without it (random weights, a model of the user's) the SHA-256 of the
    encoder's tensors as they are, names and shapes included: a full hash, since a
    sampled one could give two sets of weights the same export.
    """
    if checkpoint_sha256:
        return checkpoint_sha256.lower()
    import torch

    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in encoder.state_dict().items():
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
            digest.update(tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy())
    return "state-" + digest.hexdigest()


def export_folder(
    *, model_name: str, img_size: int, weights: str, root: str | os.PathLike | None = None
) -> Path:
    """Where the export of ``model_name`` with weights ``weights`` is (or will be) kept."""
    return encoders_dir(root) / weights / f"{model_name}-{int(img_size)}px-v{EXPORT_FORMAT}"


def iter_exported_encoder(
    encoder: torch.nn.Module,
    *,
    model_name: str,
    img_size: int,
    weights: str,
    root: str | os.PathLike | None = None,
    check: Any = None,
) -> Generator[Progress, None, Path]:
    """The ONNX file of ``encoder``, exported now unless a valid export is kept.

    Parameters
    ----------
    encoder : torch.nn.Module
        SAM's image encoder (on the CPU, float32, eval mode); it is not modified.
    model_name, img_size : str, int
        Registry name and the encoder's input side.
    weights : str
        :func:`weights_id` of the encoder.
    root : path, optional
        The cache root (default :func:`napari_persam.core.paths.cache_root`).
    check : callable, optional
        ``check(onnx_path) -> dict`` runs the new export before it is kept (e.g.
        against PyTorch on one input) and raises to refuse it; what it returns is
        added to the record.

    Yields
    ------
    Progress
        Before and after an export (its one-time cost in the message), and every
        quarter second while a child process exports; closing the generator then
        kills the child and leaves nothing behind.

    Raises
    ------
    ExportError
        If exporting failed (nothing is left behind but its failure record), or failed
        before with the same software (:func:`earlier_failure`).
    """
    folder = export_folder(model_name=model_name, img_size=img_size, weights=weights, root=root)
    expected = {"format": EXPORT_FORMAT, "model": model_name, "img_size": int(img_size)}
    expected["weights"] = weights
    if verify_export(folder, expected):
        return folder / MODEL_FILE
    if folder.exists():  # corrupt, stale or unfinished by another version: made again
        shutil.rmtree(folder, ignore_errors=True)
    earlier = earlier_failure(folder)
    if earlier is not None:
        raise ExportFailed(earlier)
    message = (
        f"exporting the {model_name} image encoder for the fast CPU backend "
        "(once per checkpoint; about a minute for ViT-B)"
    )
    yield Progress(0, 1, message)
    start = time.perf_counter()
    incoming = encoders_dir(root) / _INCOMING
    incoming.mkdir(parents=True, exist_ok=True)
    _remove_stale(incoming)
    work = incoming / f"{folder.name}-{uuid.uuid4().hex}"
    work.mkdir()
    try:
        try:
            how = yield from iter_export(
                encoder,
                model_name=model_name,
                img_size=img_size,
                path=work / MODEL_FILE,
                message=message,
            )
        except ExportFailed as error:
            if not _from_machine_state(error):
                _record_failure(folder, error)
            raise
        checked = dict(check(work / MODEL_FILE)) if check is not None else {}
        record = {
            **expected,
            "files": {path.name: _sha256(path) for path in _payload(work)},
            "opset": ONNX_OPSET,
            "export_seconds": round(time.perf_counter() - start, 1),
            **how,
            **checked,
        }
        _write_json(work / RECORD_FILE, record)
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(work, folder)
        except OSError:
            # Another process (a Dask worker) kept the same export first: use that one.
            if not verify_export(folder, expected):
                raise
    except ExportError:
        raise
    except Exception as error:
        raise ExportError(f"exporting the image encoder to ONNX failed: {error}") from error
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    _remove_older_formats(folder, model_name)
    seconds = time.perf_counter() - start
    yield Progress(1, 1, f"exported the {model_name} image encoder in {seconds:.0f} s (once)")
    return folder / MODEL_FILE


def _remove_older_formats(folder: Path, model_name: str) -> None:
    """Delete the exports of earlier formats beside ``folder`` (a ViT-B export is 360 MB).

    Only what this module wrote goes: a folder whose record names the model and an older
    format, and a failure record of an older format. Anything else is left alone.
    """
    stem = folder.name.removesuffix(f"-v{EXPORT_FORMAT}")
    for older in range(1, EXPORT_FORMAT):
        candidate = folder.with_name(f"{stem}-v{older}")
        record = _read_json_object(candidate / RECORD_FILE)
        if record.get("format") == older and record.get("model") == model_name:
            # Moved aside first: a folder half-deleted in place (a file still open
            # elsewhere) would keep its weights with no record to recognise it by;
            # in .incoming, a later export's clean-up finishes the job.
            aside = folder.parent.parent / _INCOMING / f"{candidate.name}-old-{uuid.uuid4().hex}"
            try:
                aside.parent.mkdir(parents=True, exist_ok=True)
                os.replace(candidate, aside)
                shutil.rmtree(aside, ignore_errors=True)
            except OSError:
                pass  # still in use: tried again after the next export
        failure = failure_record(candidate)
        software = _read_json_object(failure).get("software")
        if isinstance(software, dict) and software.get("format") == str(older):
            with contextlib.suppress(OSError):
                failure.unlink(missing_ok=True)


def _read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``, or an empty dict when there is none to read."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def verify_export(folder: Path, expected: dict[str, Any]) -> bool:
    """Whether ``folder`` holds a complete export matching ``expected`` and its checksums."""
    try:
        record = json.loads((folder / RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or any(record.get(k) != v for k, v in expected.items()):
        return False
    files = record.get("files")
    if not isinstance(files, dict) or MODEL_FILE not in files:
        return False
    present = {path.name for path in _payload(folder)}
    if present != set(files):
        return False
    return all(_sha256(folder / name) == digest for name, digest in files.items())


def failure_record(folder: Path) -> Path:
    """The file recording that the export meant for ``folder`` failed."""
    return folder.with_name(folder.name + FAILURE_SUFFIX)


def earlier_failure(folder: Path) -> str | None:
    """Why the export for ``folder`` failed before with this software, or None.

    A record left by other software, older than :data:`FAILURE_KEPT_S` or unreadable is
    removed: that export is tried again.
    """
    path = failure_record(folder)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        record = None
    if (
        not isinstance(record, dict)
        or record.get("software") != _software()
        or not isinstance(record.get("time"), (int, float))
        or not 0 <= time.time() - record["time"] < FAILURE_KEPT_S
    ):
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass  # it stays; this run tries again all the same
        return None
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(record["time"]))
    again = time.strftime("%Y-%m-%d", time.localtime(record["time"] + FAILURE_KEPT_S))
    return (
        f"exporting it failed on {when} "
        f"({record.get('reason', 'no reason recorded')}), and it is not tried again with "
        f"the same software before {again}: delete {path} to try again now"
    )


def _record_failure(folder: Path, error: ExportError) -> None:
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        _write_json(
            failure_record(folder),
            {
                "reason": str(error)[:2000],
                "time": time.time(),
                "software": _software(),
            },
        )
    except OSError:
        pass  # unrecorded: the next run tries again, as before


def _from_machine_state(error: BaseException) -> bool:
    """Whether an ``OSError`` (a full disk, a read-only folder) or a ``MemoryError`` lies
    behind ``error``: the machine's state, which says nothing about the next try."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, (OSError, MemoryError)):
            return True
        seen = seen.__cause__  # what it was raised from, not what happened to be handled
    return False


def _software() -> dict[str, str]:
    """The versions an export's success depends on."""
    import platform
    from importlib import metadata

    versions = {"python": platform.python_version(), "format": str(EXPORT_FORMAT)}
    for package in ("napari-persam", "torch", "onnx", "onnxscript"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "none"
    return versions


def _payload(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name != RECORD_FILE)


def _sha256(path: Path) -> str:
    # Hashed on every use, not memoised by size and time: a file rewritten within the
    # file system's timestamp resolution would otherwise pass. An engine loads its
    # encoder once (about 0.3 s for ViT-B's 360 MB).
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _write_json(path: Path, values: dict[str, Any]) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(values, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(partial, path)


def _remove_stale(incoming: Path) -> None:
    now = time.time()
    for leftover in incoming.iterdir():
        try:
            if now - leftover.stat().st_mtime > _STALE_INCOMING_S:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            continue
