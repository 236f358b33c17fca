"""Wall-clock timers and memory probes for the benchmarks (never used by the package).

GPU work is asynchronous, so every timer synchronises the device before reading
the clock; otherwise a CUDA timing would measure only the kernel launches.
"""

from __future__ import annotations

import contextlib
import platform
import resource
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def stopwatch(device: torch.device) -> Iterator[dict[str, float]]:
    """``with stopwatch(device) as t: ...`` then ``t["seconds"]``."""
    result: dict[str, float] = {}
    synchronize(device)
    start = time.perf_counter()
    try:
        yield result
    finally:
        synchronize(device)
        result["seconds"] = time.perf_counter() - start


def timed_call(device: torch.device, function: Callable[..., Any], *args, **kwargs):
    """``(result, seconds)`` of one call."""
    with stopwatch(device) as clock:
        result = function(*args, **kwargs)
    return result, clock["seconds"]


class StageClock:
    """Accumulates seconds per stage name from wrapped callables."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, name: str | Callable[[tuple, dict], str], function: Callable) -> Callable:
        """``function`` timed into stage ``name``, or ``name(args, kwargs)`` per call."""

        def wrapper(*args, **kwargs):
            key = name if isinstance(name, str) else name(args, kwargs)
            with stopwatch(self.device) as clock:
                result = function(*args, **kwargs)
            self.seconds[key] += clock["seconds"]
            self.calls[key] += 1
            return result

        return wrapper

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block into stage ``name``."""
        with stopwatch(self.device) as clock:
            yield
        self.seconds[name] += clock["seconds"]
        self.calls[name] += 1

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if platform.system() == "Darwin" else peak / 1024


@contextlib.contextmanager
def python_heap_peak() -> Iterator[dict[str, float]]:
    """Peak of Python and numpy allocations (tracemalloc) inside the block, in MiB.

    Torch's CPU allocator is invisible to tracemalloc; see :func:`peak_rss_mib`.
    """
    result: dict[str, float] = {}
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        yield result
    finally:
        result["mib"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or platform's answer elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
