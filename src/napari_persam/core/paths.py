"""The one cache root and the folders under it.

Everything napari-persam keeps between runs lives under one folder:
``$NAPARI_PERSAM_CACHE`` when set, else the platform's user cache folder
(``~/.cache/napari-persam`` on Linux, ``~/Library/Caches/napari-persam`` on macOS,
``%LOCALAPPDATA%\\napari-persam\\napari-persam\\Cache`` on Windows)::

    <root>/                    downloaded checkpoints, under the publishers' file names
    <root>/embeddings/         the disk embedding cache
    <root>/encoders/           image encoders exported for fast CPU backends

Checkpoints sit in the root itself, where earlier versions put them, so an existing
cache keeps its downloads.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "NAPARI_PERSAM_CACHE"
"""Environment variable naming the cache root (overrides the platform default)."""

APP_NAME = "napari-persam"


def cache_root(root: str | os.PathLike | None = None) -> Path:
    """The cache root: ``root`` when given, else ``$NAPARI_PERSAM_CACHE``, else the user cache."""
    if root is not None:
        return Path(root).expanduser()
    configured = os.environ.get(CACHE_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir(APP_NAME))


def checkpoints_dir(root: str | os.PathLike | None = None) -> Path:
    """Where checkpoints are downloaded to and looked for (the root itself)."""
    return cache_root(root)


def embeddings_dir(root: str | os.PathLike | None = None) -> Path:
    """The default folder of the disk embedding cache."""
    return cache_root(root) / "embeddings"


def encoders_dir(root: str | os.PathLike | None = None) -> Path:
    """Where exported image encoders (ONNX) are kept, one per checkpoint."""
    return cache_root(root) / "encoders"
