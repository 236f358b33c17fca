"""Choosing the torch device: CUDA, then Apple MPS, then CPU, unless one is named."""

from __future__ import annotations

import os
import platform
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

MPS_WARNING = (
    "Running SAM on Apple MPS: results can differ slightly from CPU/CUDA because some "
    "operations use lower precision there. Pass device='cpu' for reference results."
)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The device to run on.

    Parameters
    ----------
    device : str, torch.device or None
        ``None`` or ``"auto"`` picks CUDA, then MPS, then CPU. A named device
        (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``) is checked for availability.

    Raises
    ------
    ValueError
        If the named device does not exist on this machine, saying which ones do.
    """
    import torch

    if device is None or (isinstance(device, str) and device.lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            warnings.warn(MPS_WARNING, stacklevel=2)
            return torch.device("mps")
        return torch.device("cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"Unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'."
        ) from error
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"Device {device!r} was asked for but CUDA is not available here "
                f"(available: {', '.join(available_devices())}). Use device='cpu' or 'auto'."
            )
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise ValueError(
                f"Device {device!r} does not exist: this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)."
            )
    elif chosen.type == "mps":
        if not _mps_available():
            raise ValueError(
                f"Device 'mps' was asked for but Apple MPS is not available here "
                f"(available: {', '.join(available_devices())})."
            )
        warnings.warn(MPS_WARNING, stacklevel=2)
    elif chosen.type != "cpu":
        raise ValueError(f"Unsupported device {device!r}; use 'auto', 'cpu', 'cuda' or 'mps'.")
    return chosen


def available_devices() -> list[str]:
    """Names of the devices usable here, best first (``"cpu"`` always last)."""
    import torch

    names = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        names.append("mps")
    names.append("cpu")
    return names


def likely_devices() -> list[str]:
    """The devices that seem usable here, best first, without asking torch.

    A guess from the system, for the napari widget, which must open without
    loading torch (importing it holds Python's lock for seconds, freezing the
    window) or starting the CUDA driver on the GUI thread: one ``cuda:N`` per
    NVIDIA GPU the driver lists (Linux), ``mps`` on Apple silicon, and ``cpu``.
    :func:`available_devices` gives the exact list once torch is loaded; a guessed
    device that torch cannot use is refused with :func:`resolve_device`'s message
    when it is chosen.
    """
    names: list[str] = []
    try:
        gpus = sorted(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        gpus = []
    names += [f"cuda:{index}" for index in range(len(gpus))]
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        names.append("mps")
    names.append("cpu")
    return names


def supports_bfloat16(device: torch.device) -> bool:
    """Whether autocast to bfloat16 is worth using on ``device``."""
    import torch

    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return cpu_has_native_bfloat16()
    return device.type == "mps"


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX).

    Elsewhere torch emulates it, and a bfloat16 encoder is many times slower than
    float32 (measured 16x on an AVX2 CPU, see BENCHMARKS.md), so it is refused.
    """
    import torch

    capability = str(torch.backends.cpu.get_cpu_capability()).upper()
    if "AMX" in capability or "BF16" in capability:
        return True
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            flags = info.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


# ------------------------------------------------------------------ CPU memory
# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_DEFAULT_MMAP_MAX = 65536
_DEFAULT_TRIM_THRESHOLD = 128 * 1024


def keep_freed_memory(*, single_arena: bool = False) -> bool:
    """Have glibc keep freed memory for reuse instead of unmapping it (Linux only).

    glibc serves every allocation above 32 MiB with a fresh ``mmap`` and unmaps it
    when freed, so each of the encoder's large temporaries is faulted in page by
    page again: millions of page faults and seconds of kernel time per ViT-B image
    (BENCHMARKS.md). With ``M_MMAP_MAX`` 0 and no heap trimming, freed memory stays
    in the heap and the next image reuses it, at the price of the peak staying
    resident. ``single_arena`` also puts every thread on the main heap (work in a
    worker thread otherwise lands in a 64 MiB arena that cannot hold it).

    Process-wide, so only for processes this package owns: the command line and
    Dask workers. Inside napari the fast CPU backends keep their own buffers and
    need none of this. Returns whether the settings were applied (False off glibc).
    """
    libc = _glibc()
    if libc is None:
        return False
    applied = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, -1))
    if single_arena:
        applied = bool(libc.mallopt(_M_ARENA_MAX, 1)) and applied
    return applied


def release_freed_memory() -> bool:
    """Undo :func:`keep_freed_memory` and hand the heap's free memory back to the system."""
    libc = _glibc()
    if libc is None:
        return False
    libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
    libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
    return bool(libc.malloc_trim(0))


def _glibc():
    """glibc through ctypes, or None (macOS, Windows, musl)."""
    import sys

    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  (absent from musl and others)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc
