"""Importing the torch side of the plugin inside a running napari.

``segment_anything`` imports ``torchvision.ops``, which imports ``torch._dynamo``,
which imports ``triton`` when it is installed (it comes with CUDA builds of torch
on Linux). triton's own copy of LLVM crashes the process (SIGSEGV, no Python
traceback) when it is loaded after another LLVM is already mapped -- and in
napari it usually is: Mesa's OpenGL drivers (llvmpipe, radeonsi) load libLLVM for
the canvas. PerSAM never uses triton, so in that one situation the import is done
with triton hidden, and torch simply runs without it.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from napari_persam.core.engine.persam import PerSAM


def import_engine() -> type[PerSAM]:
    """The :class:`~napari_persam.core.engine.persam.PerSAM` class, imported safely."""
    if "triton" in sys.modules or not foreign_llvm_loaded():
        from napari_persam.core.engine.persam import PerSAM

        return PerSAM
    # None in sys.modules makes ``import triton`` raise ImportError, which torch
    # handles as "triton not installed".
    sys.modules["triton"] = None  # type: ignore[assignment]
    try:
        from napari_persam.core.engine.persam import PerSAM
    finally:
        if sys.modules.get("triton", ...) is None:
            del sys.modules["triton"]
    return PerSAM


def foreign_llvm_loaded(maps: str = "/proc/self/maps") -> bool:
    """Whether a shared libLLVM is mapped into this process (Linux; False elsewhere)."""
    try:
        with open(maps, encoding="utf-8", errors="replace") as lines:
            return any("libLLVM" in line for line in lines)
    except OSError:
        return False
