"""SAM models: the registry (plain data), builders, checkpoints, downloads and loading.

Import the public names from here::

    from napari_persam.core.models import load_model, build_model, MODEL_REGISTRY

Nothing here imports torch until a model is built or a checkpoint is read.
"""

from __future__ import annotations

from napari_persam.core.models.builders import build_tiny_sam
from napari_persam.core.models.errors import (
    CheckpointError,
    ChecksumError,
    DownloadError,
    WeightsError,
)
from napari_persam.core.models.loading import build_model, iter_load_model, load_model
from napari_persam.core.models.registry import (
    DEFAULT_MODEL,
    MODEL_REGISTRY,
    TINY_MODEL,
    ModelSpec,
    get_spec,
    model_names,
)

__all__ = [
    "DEFAULT_MODEL",
    "MODEL_REGISTRY",
    "TINY_MODEL",
    "CheckpointError",
    "ChecksumError",
    "DownloadError",
    "ModelSpec",
    "WeightsError",
    "build_model",
    "build_tiny_sam",
    "get_spec",
    "iter_load_model",
    "load_model",
    "model_names",
]
