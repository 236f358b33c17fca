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
