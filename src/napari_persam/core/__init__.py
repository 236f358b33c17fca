"""Headless PerSAM: numpy, torch and segment_anything only (no napari, qtpy, magicgui).

The public names are imported lazily so that ``import napari_persam.core`` stays
cheap; torch and segment_anything load when an engine is first used.

The library is grouped in wings, each importing only from the ones listed before it:

* ``config``, ``devices``, ``errors``, ``paths``, ``progress``: the shared floor;
* ``engine``: PerSAM itself (embeddings, geometry, prompting, decoder, instances,
  stacks, fine-tuning, concepts and results);
* ``models``: the registry, builders, checkpoints, downloads and loading;
* ``io``: the one image and mask reader, targets, label writers, concept files,
  the disk cache;
* ``engine_builder``: the one place that assembles model, caches and engine;
* ``batch`` and ``evaluation``: batch runs (also on Dask) and measuring quality.

Examples
--------
>>> from napari_persam.core import PerSAM, PerSAMConfig
>>> engine = PerSAM(sam, config=PerSAMConfig())        # doctest: +SKIP
>>> concept = engine.learn(image, mask)                 # doctest: +SKIP
>>> seg = engine.segment(other_image, concept)          # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from napari_persam.core.config import PerSAMConfig
from napari_persam.core.models.llvm_clash import keep_triton_out_beside_system_llvm
from napari_persam.core.progress import Progress, run

# Inside napari on a machine with Mesa's OpenGL, importing triton (which torchvision's
# import probes for) would crash the process; see llvm_clash. Checked again before a
# model loads (engine_builder.iter_load), for a canvas opened after this import.
keep_triton_out_beside_system_llvm()

if TYPE_CHECKING:  # pragma: no cover
    from napari_persam.core.engine.concepts import ClassConcepts, Concept
    from napari_persam.core.engine.persam import PerSAM
    from napari_persam.core.engine.results import Instances, LabelSegmentation, Segmentation
    from napari_persam.core.engine_builder import EngineSpec, build_engine
    from napari_persam.core.io.concept_file import load_concept, read_concept_file, save_concept
    from napari_persam.core.io.images import read_image, read_mask

# name -> module that defines it; resolved on first attribute access.
_LAZY = {
    "PerSAM": "napari_persam.core.engine.persam",
    "Concept": "napari_persam.core.engine.concepts",
    "ClassConcepts": "napari_persam.core.engine.concepts",
    "Segmentation": "napari_persam.core.engine.results",
    "LabelSegmentation": "napari_persam.core.engine.results",
    "Instances": "napari_persam.core.engine.results",
    "EngineSpec": "napari_persam.core.engine_builder",
    "build_engine": "napari_persam.core.engine_builder",
    "read_image": "napari_persam.core.io.images",
    "read_mask": "napari_persam.core.io.images",
    "save_concept": "napari_persam.core.io.concept_file",
    "load_concept": "napari_persam.core.io.concept_file",
    "read_concept_file": "napari_persam.core.io.concept_file",
}

__all__ = [
    "ClassConcepts",
    "Concept",
    "EngineSpec",
    "Instances",
    "LabelSegmentation",
    "PerSAM",
    "PerSAMConfig",
    "Progress",
    "Segmentation",
    "build_engine",
    "load_concept",
    "read_concept_file",
    "read_image",
    "read_mask",
    "run",
    "save_concept",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
