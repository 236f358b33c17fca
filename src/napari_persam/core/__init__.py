"""Headless PerSAM: numpy, torch and segment_anything only (no napari, qtpy, magicgui).

The public names are imported lazily so that ``import napari_persam.core`` stays
cheap; torch and segment_anything load when an engine is first used.

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
from napari_persam.core.progress import Progress, run

if TYPE_CHECKING:  # pragma: no cover
    from napari_persam.core.persam import Concept, PerSAM, Segmentation

# name -> module that defines it; resolved on first attribute access.
_LAZY = {
    "PerSAM": "napari_persam.core.persam",
    "Concept": "napari_persam.core.concept",
    "Segmentation": "napari_persam.core.concept",
}

__all__ = ["Concept", "PerSAM", "PerSAMConfig", "Progress", "Segmentation", "run"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
