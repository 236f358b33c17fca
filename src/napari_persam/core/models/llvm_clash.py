"""Keep triton out of a process that already holds the system's LLVM.

triton (shipped with PyTorch's CUDA wheels) carries its own LLVM. Loading it into a
process where the system's ``libLLVM`` is already loaded with global symbols
crashes the process with a segmentation fault at ``import triton``. Mesa's OpenGL
drivers bring that libLLVM (every Mesa DRI driver links it), and GLX loads them so
for napari's canvas: on a Linux machine with Mesa (Intel or AMD graphics, or
software rendering), napari would die the first time our worker imported
torchvision (which imports ``torch._dynamo``, which probes for triton) or ran the
ONNX export of the image encoder. Neither needs triton on a CPU.

So in such a process ``import triton`` is made to raise ImportError, which
PyTorch treats as "no triton" (``sys.modules["triton"] = None``). It is a
process-wide change, made only where importing triton would end the process;
nothing changes when triton is loaded already (it loaded without harm) or no
system LLVM is mapped.
"""

from __future__ import annotations

import sys
from pathlib import Path

_MAPS = Path("/proc/self/maps")


def system_llvm_loaded(maps: Path = _MAPS) -> bool:
    """Whether a ``libLLVM`` shared library is mapped into this process (Linux only)."""
    try:
        text = maps.read_text(encoding="utf-8", errors="replace")
    except OSError:  # not Linux, or no /proc
        return False
    return any("libLLVM" in line.rsplit("/", 1)[-1] for line in text.splitlines())


def keep_triton_out_beside_system_llvm(maps: Path = _MAPS) -> bool:
    """Make ``import triton`` fail cleanly where loading it would crash this process.

    Call it before anything that may import torchvision or ``torch._dynamo``.
    Returns whether triton is kept out (now or by an earlier call).
    """
    if "triton" in sys.modules:
        return sys.modules["triton"] is None
    if not system_llvm_loaded(maps):
        return False
    sys.modules["triton"] = None  # type: ignore[assignment]  # "import triton" -> ImportError
    return True
