"""An on-disk embedding cache: one zarr array per encoded image or slice.

Encoding dominates PerSAM's cost, so a second run over the same images (another
concept, other options, a resumed job, the widget and the command line on the
same data) reads the features instead of encoding again.

Layout under the cache folder::

    <root>/<signature[:2]>/<signature>/   zarr array (1, C, gh, gw) float32, one chunk;
                                          attributes: the signature's parts, the geometry
    <root>/.incoming/                     entries being written (never read)

An entry's name is the SHA-256 of its signature: the engine's key (model
fingerprint, content hash of the prepared RGB image, encoder dtype), the
checkpoint hash when known, and the package version. The prepared image already
reflects the channel choice and the model fingerprint the architecture
(``img_size``), so a changed image, model or preprocessing never reuses an entry;
the stored signature is compared again on every read.

Writes go to ``.incoming/`` and are renamed into place when complete, so a
killed run leaves no half-written entry under a readable name. The folder is
kept under ``max_bytes`` by deleting the least recently used entries (an entry's
directory modification time is its last use).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_persam import __version__
from napari_persam.core.engine.embeddings import EmbeddingCache, ImageEmbedding
from napari_persam.core.engine.geometry import SamGeometry
from napari_persam.core.paths import embeddings_dir

if TYPE_CHECKING:  # pragma: no cover
    import torch

CACHE_FORMAT_VERSION = 1
DEFAULT_MAX_BYTES = 4 * 1024**3
_INCOMING = ".incoming"
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
        try:
            (self.root / _INCOMING).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(
                f"Cannot use {str(self.root)!r} as the embedding cache folder ({error}); "
                "name a writable folder."
            ) from error
        self._remove_stale_incoming()

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
        entries = [(entry.stat().st_mtime, _tree_size(entry), entry) for entry in self._entries()]
        total = sum(size for _, size, _ in entries)
        removed = []
        for _, size, entry in sorted(entries, key=lambda item: item[0]):
            if total <= self.max_bytes:
                break
            shutil.rmtree(entry, ignore_errors=True)
            total -= size
            removed.append(entry)
        return removed

    def clear(self) -> None:
        for entry in self._entries():
            shutil.rmtree(entry, ignore_errors=True)
        if self.memory is not None:
            self.memory.clear()

    def _entry_path(self, signature: dict[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()
        return self.root / digest[:2] / digest

    def _entries(self) -> list[Path]:
        return [
            entry
            for shard in self.root.iterdir()
            if shard.is_dir() and shard.name != _INCOMING
            for entry in shard.iterdir()
            if entry.is_dir()
        ]

    def _write(self, folder: Path, signature: dict[str, Any], value: ImageEmbedding) -> None:
        from napari_persam.core.io.zarr_arrays import create_array

        features = value.features.detach().float().cpu().numpy()
        geometry = value.geometry
        array = create_array(
            str(folder),
            shape=features.shape,
            chunks=features.shape,  # one chunk per image: one read per entry
            dtype=np.float32,
            compress=False,  # float features barely compress; decoding would cost time
            attributes={
                "signature": signature,
                "geometry": {
                    "original_hw": list(geometry.original_hw),
                    "img_size": geometry.img_size,
                    "grid_hw": list(geometry.grid_hw),
                    "frame_side": geometry.frame_side,
                },
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
                return None  # not the entry it claims to be; never reuse it
            geometry_fields = attributes["geometry"]
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
            features = np.asarray(array[...], dtype=np.float32)
        except Exception:  # damaged entry (disk full, manual edits): encode again
            shutil.rmtree(entry, ignore_errors=True)
            return None
        if features.ndim != 4 or tuple(features.shape[-2:]) != geometry.grid_hw:
            shutil.rmtree(entry, ignore_errors=True)
            return None
        tensor = torch.from_numpy(features).to(self.device)
        return ImageEmbedding(features=tensor, geometry=geometry)

    def _remove_stale_incoming(self) -> None:
        now = time.time()
        for leftover in (self.root / _INCOMING).iterdir():
            try:
                if now - leftover.stat().st_mtime > _STALE_INCOMING_S:
                    shutil.rmtree(leftover, ignore_errors=True)
            except OSError:
                continue


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
