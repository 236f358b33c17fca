"""An on-disk embedding cache: one zarr array per encoded image or slice.

Encoding dominates PerSAM's cost, so a second run over the same images (another
concept, other options, a resumed job, the widget and the command line on the
same data) reads the features instead of encoding again.

Layout under the cache folder::

    <root>/<signature[:2]>/<signature>/   zarr array (1, C, gh, gw) float32, one chunk;
                                          attributes: the signature's parts, the
                                          geometry, a checksum of all of it
    <root>/.incoming/                     entries being written (never read)
    <root>/.evicted/                      entries being deleted (never read)

An entry's name is the SHA-256 of its signature: the engine's key (model
fingerprint, content hash of the prepared RGB image, encoder dtype, encoder
backend), the checkpoint hash when known, and the package version. The prepared image already
reflects the channel choice and the model fingerprint the architecture
(``img_size``), so a changed image, model or preprocessing never reuses an entry;
the stored signature is compared again on every read.

A cache must never serve wrong data. Each entry stores a BLAKE2b checksum of its
signature, geometry and feature bytes, verified on every read; an entry that
fails (a flipped byte, edited attributes, a missing chunk that zarr would fill
with zeros) is reported once as a :class:`CacheWarning`, deleted, and the image is
encoded again. Writes go to ``.incoming/`` and are renamed into place when
complete, and eviction renames an entry out to ``.evicted/`` before deleting it,
so a killed run never leaves a half-written or half-deleted entry under a
readable name. The folder is kept under ``max_bytes`` by evicting the least
recently used entries (an entry's directory modification time is its last use).

A folder that cannot be written raises :class:`CacheUnavailable` when the cache is
made (the engine builder then warns once and runs without the disk cache); a
write that fails later (disk full) is warned about once and writing stops, while
the run goes on.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_persam import __version__
from napari_persam.core.engine.embeddings import EmbeddingCache, ImageEmbedding
from napari_persam.core.engine.geometry import SamGeometry
from napari_persam.core.errors import PerSAMWarning
from napari_persam.core.io.folders import writable_problem
from napari_persam.core.paths import CACHE_ENV, embeddings_dir

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: 2: entries carry a checksum (version 1 entries have another name and are never read).
CACHE_FORMAT_VERSION = 2
DEFAULT_MAX_BYTES = 4 * 1024**3
_INCOMING = ".incoming"
_EVICTED = ".evicted"


class CacheWarning(PerSAMWarning):
    """Something about the disk cache the user should know; the run goes on."""


class CacheUnavailable(ValueError):
    """The cache folder cannot be used (not writable, not a folder); the message says why."""


# Leftovers of killed writers are removed after this long (a live writer needs seconds).
_STALE_INCOMING_S = 3600.0


class DiskEmbeddingCache:
    """Embedding cache in a folder, with the ``get``/``put`` interface of
    :class:`~napari_persam.core.engine.embeddings.EmbeddingCache` (``PerSAM(cache=...)``).

    Parameters
    ----------
    root : path, optional
        Cache folder; default :func:`napari_persam.core.paths.embeddings_dir`. Several
        processes may share it (each entry is written once, atomically).
    max_bytes : int
        Size cap of the folder; least recently used entries are deleted past it.
    device : str or torch.device
        Where features read from disk are placed (the engine's device).
    checkpoint_sha256 : str, optional
        Hash of the model's checkpoint file, added to every signature.
    memory : EmbeddingCache, optional
        An in-memory cache consulted first and filled on reads and writes.

    Attributes
    ----------
    hits, misses, writes : int
        Disk reads that found / did not find a valid entry, and entries written.
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        device: str | torch.device = "cpu",
        checkpoint_sha256: str | None = None,
        memory: EmbeddingCache | None = None,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}.")
        self.root = Path(root) if root is not None else embeddings_dir()
        self.max_bytes = int(max_bytes)
        self.device = device
        self.checkpoint_sha256 = checkpoint_sha256
        self.memory = memory
        self.hits = 0
        self.misses = 0
        self.writes = 0
        self._lock = threading.Lock()
        self._writing = True
        try:
            (self.root / _INCOMING).mkdir(parents=True, exist_ok=True)
            problem = writable_problem(self.root / _INCOMING)
        except OSError as error:
            problem = error.strerror or str(error)
        if problem:
            raise CacheUnavailable(
                f"The embedding cache folder {self.root} cannot be written ({problem}). "
                f"Set {CACHE_ENV} to a folder you can write to."
            )
        self._remove_leftovers()

    # ---------------------------------------------------------------- interface
    def get(self, key: tuple) -> ImageEmbedding | None:
        """The cached embedding for the engine's ``key``, or ``None``."""
        if self.memory is not None:
            found = self.memory.get(key)
            if found is not None:
                return found
        signature = self.signature(key)
        entry = self._entry_path(signature)
        embedding = self._read(entry, signature)
        with self._lock:
            if embedding is None:
                self.misses += 1
                return None
            self.hits += 1
        _touch(entry)
        if self.memory is not None:
            self.memory.put(key, embedding)
        return embedding

    def put(self, key: tuple, value: ImageEmbedding) -> None:
        """Store ``value`` under ``key`` (atomically; an existing entry is kept)."""
        if self.memory is not None:
            self.memory.put(key, value)
        if not self._writing:
            return
        signature = self.signature(key)
        entry = self._entry_path(signature)
        if entry.exists():
            _touch(entry)
            return
        incoming = self.root / _INCOMING / f"{entry.name}-{uuid.uuid4().hex}"
        try:
            self._write(incoming, signature, value)
            entry.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(incoming, entry)
            except OSError:
                # Another process committed the same entry first; its copy is as good.
                if not entry.exists():
                    raise
        except OSError as error:
            # Disk full, folder made read-only meanwhile: the image was encoded, so the
            # run goes on; it is said once, and nothing more is written.
            self._writing = False
            warnings.warn(
                f"Could not write to the embedding cache {self.root} "
                f"({error.strerror or error}); going on without storing embeddings there.",
                CacheWarning,
                stacklevel=2,
            )
            return
        finally:
            if incoming.exists():
                shutil.rmtree(incoming, ignore_errors=True)
        with self._lock:
            self.writes += 1
        self.evict()

    # ------------------------------------------------------------------- helpers
    def signature(self, key: tuple) -> dict[str, Any]:
        """Everything an entry depends on, as a JSON-able dict."""
        return {
            "cache_format": CACHE_FORMAT_VERSION,
            "key": [str(part) for part in key],
            "checkpoint_sha256": self.checkpoint_sha256,
            "package_version": __version__,
        }

    def entry_count(self) -> int:
        return len(self._entries())

    def size_bytes(self) -> int:
        return sum(_tree_size(entry) for entry in self._entries())

    def evict(self) -> list[Path]:
        """Delete least recently used entries until the folder fits ``max_bytes``."""
        entries = []
        for entry in self._entries():
            try:
                entries.append((entry.stat().st_mtime, _tree_size(entry), entry))
            except OSError:  # evicted by another process (a Dask worker) meanwhile
                continue
        total = sum(size for _, size, _ in entries)
        removed = []
        for _, size, entry in sorted(entries, key=lambda item: item[0]):
            if total <= self.max_bytes:
                break
            self._delete(entry)
            total -= size
            removed.append(entry)
        return removed

    def clear(self) -> None:
        for entry in self._entries():
            self._delete(entry)
        if self.memory is not None:
            self.memory.clear()

    def _delete(self, entry: Path) -> None:
        """Rename ``entry`` out of the readable names, then delete it.

        A kill between the two steps leaves a whole entry in ``.evicted/`` (removed
        by the next cache made here), never part of one under its own name.
        """
        graveyard = self.root / _EVICTED
        target = graveyard / f"{entry.name}-{uuid.uuid4().hex}"
        try:
            graveyard.mkdir(exist_ok=True)
            os.replace(entry, target)
        except OSError:
            return  # gone already (another process evicted it), or not ours to delete
        shutil.rmtree(target, ignore_errors=True)

    def _entry_path(self, signature: dict[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()
        return self.root / digest[:2] / digest

    def _entries(self) -> list[Path]:
        return [
            entry
            for shard in self.root.iterdir()
            if shard.is_dir() and shard.name not in (_INCOMING, _EVICTED)
            for entry in shard.iterdir()
            if entry.is_dir()
        ]

    def _write(self, folder: Path, signature: dict[str, Any], value: ImageEmbedding) -> None:
        from napari_persam.core.io.zarr_arrays import create_array

        features = np.ascontiguousarray(value.features.detach().float().cpu().numpy())
        geometry = _geometry_fields(value.geometry)
        array = create_array(
            str(folder),
            shape=features.shape,
            chunks=features.shape,  # one chunk per image: one read per entry
            dtype=np.float32,
            compress=False,  # float features barely compress; decoding would cost time
            attributes={
                "signature": signature,
                "geometry": geometry,
                "checksum": checksum(signature, geometry, features),
            },
        )
        array[...] = features

    def _read(self, entry: Path, signature: dict[str, Any]) -> ImageEmbedding | None:
        import torch
        import zarr

        if not entry.is_dir():
            return None
        try:
            array = zarr.open_array(str(entry), mode="r")
            attributes = dict(array.attrs)
            if attributes.get("signature") != signature:
                # Not the entry its name says (edited, or moved by hand): never reused,
                # and deleted so the right one can be written under this name.
                self._discard(entry, "it is stored under another entry's name")
                return None
            features = np.ascontiguousarray(array[...], dtype=np.float32)
            geometry_fields = attributes["geometry"]
            stored = attributes["checksum"]
            problem = ""
            if checksum(signature, geometry_fields, features) != stored:
                problem = "its data do not match their checksum"
            else:
                geometry = SamGeometry(
                    original_hw=tuple(int(v) for v in geometry_fields["original_hw"]),
                    img_size=int(geometry_fields["img_size"]),
                    grid_hw=tuple(int(v) for v in geometry_fields["grid_hw"]),
                    frame_side=(
                        None
                        if geometry_fields.get("frame_side") is None
                        else int(geometry_fields["frame_side"])
                    ),
                )
                if features.ndim != 4 or tuple(features.shape[-2:]) != geometry.grid_hw:
                    problem = f"its features {features.shape} do not fit its geometry"
        except Exception as error:  # damaged entry (disk full, manual edits)
            problem = f"it cannot be read ({type(error).__name__}: {error})"
        if problem:
            self._discard(entry, problem)
            return None
        tensor = torch.from_numpy(features).to(self.device)
        return ImageEmbedding(features=tensor, geometry=geometry)

    def _discard(self, entry: Path, problem: str) -> None:
        """Report a bad entry once, and delete it (the image is then encoded again)."""
        warnings.warn(
            f"Embedding cache entry {entry.name[:16]} in {self.root} was damaged ({problem}); "
            "it was deleted and the image is encoded again.",
            CacheWarning,
            stacklevel=3,
        )
        self._delete(entry)

    def _remove_leftovers(self) -> None:
        """Remove entries being deleted (any age) and stale writes of killed writers."""
        now = time.time()
        for folder, max_age in ((_EVICTED, 0.0), (_INCOMING, _STALE_INCOMING_S)):
            place = self.root / folder
            if not place.is_dir():
                continue
            for leftover in place.iterdir():
                try:
                    if now - leftover.stat().st_mtime >= max_age:
                        shutil.rmtree(leftover, ignore_errors=True)
                except OSError:
                    continue


def checksum(signature: dict[str, Any], geometry: dict[str, Any], features: np.ndarray) -> str:
    """BLAKE2b of an entry: its signature, geometry, and feature shape and bytes (float32)."""
    hasher = hashlib.blake2b(digest_size=32)
    header = {"signature": signature, "geometry": geometry, "shape": list(features.shape)}
    hasher.update(json.dumps(header, sort_keys=True).encode("utf-8"))
    hasher.update(memoryview(np.ascontiguousarray(features, dtype=np.float32)).cast("B"))
    return hasher.hexdigest()


def _geometry_fields(geometry: SamGeometry) -> dict[str, Any]:
    return {
        "original_hw": list(geometry.original_hw),
        "img_size": geometry.img_size,
        "grid_hw": list(geometry.grid_hw),
        "frame_side": geometry.frame_side,  # a tile's side in image pixels; None: whole image
    }


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:  # evicted by another process meanwhile
        pass


def _tree_size(folder: Path) -> int:
    total = 0
    for directory, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(directory, name)).st_size
            except OSError:
                continue
    return total
