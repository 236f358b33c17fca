"""Wall-clock and CPU timers and memory probes for the benchmarks (never used by the package).

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

#: One measurement: ``{"wall": seconds, "cpu": seconds}``. CPU time is this process's
#: (all threads): on a machine shared with other jobs wall-clock time grows with their
#: load while CPU time mostly does not, so both are recorded.
Lap = dict[str, float]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def zero_lap() -> Lap:
    return {"wall": 0.0, "cpu": 0.0}


def add_laps(a: Lap, b: Lap) -> Lap:
    return {"wall": a["wall"] + b["wall"], "cpu": a["cpu"] + b["cpu"]}


def lap_now() -> Lap:
    """The clocks' current readings (differences of two are a :data:`Lap`)."""
    return {"wall": time.perf_counter(), "cpu": time.process_time()}


def lap_since(start: Lap) -> Lap:
    now = lap_now()
    return {"wall": now["wall"] - start["wall"], "cpu": now["cpu"] - start["cpu"]}


@contextlib.contextmanager
def stopwatch(device: torch.device) -> Iterator[Lap]:
    """``with stopwatch(device) as lap: ...`` then ``lap["wall"]``, ``lap["cpu"]``."""
    result: Lap = {}
    synchronize(device)
    start = lap_now()
    try:
        yield result
    finally:
        synchronize(device)
        result.update(lap_since(start))


def timed_call(device: torch.device, function: Callable[..., Any], /, *args, **kwargs):
    """``(result, lap)`` of one call."""
    with stopwatch(device) as lap:
        result = function(*args, **kwargs)
    return result, lap


class StageClock:
    """Accumulates a :data:`Lap` per stage name from wrapped callables and blocks."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.laps: dict[str, Lap] = defaultdict(zero_lap)
        self.calls: dict[str, int] = defaultdict(int)

    def add(self, name: str, lap: Lap) -> None:
        self.laps[name] = add_laps(self.laps[name], lap)
        self.calls[name] += 1

    def wrap(self, name: str | Callable[[tuple, dict], str], function: Callable) -> Callable:
        """``function`` timed into stage ``name``, or ``name(args, kwargs)`` per call."""

        def wrapper(*args, **kwargs):
            key = name if isinstance(name, str) else name(args, kwargs)
            result, lap = timed_call(self.device, function, *args, **kwargs)
            self.add(key, lap)
            return result

        return wrapper

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block into stage ``name``."""
        with stopwatch(self.device) as lap:
            yield
        self.add(name, lap)

    def snapshot(self) -> dict[str, Lap]:
        return {name: dict(lap) for name, lap in self.laps.items()}

    def reset(self) -> None:
        self.laps.clear()
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


def gemm_rates(size: int = 2048, repeats: int = 5) -> dict[str, tuple[float, float]]:
    """FLOP per wall-second and per CPU-second of a float32 ``size``-cubed product, by library.

    ``"mkl"`` is ``torch.mm`` (MKL in PyTorch's x86 builds); ``"onednn"`` is oneDNN's
    product, which PyTorch also bundles (``torch.ops.mkldnn._linear_pointwise``; absent
    from builds without oneDNN). A lower bound must use the faster: MKL takes its
    AVX-512 kernels only on Intel processors, and on an AMD EPYC with AVX-512 oneDNN
    ran the same product 2.2x faster (BENCHMARKS.md). Best of ``repeats`` each.
    """
    a, b = torch.randn(size, size), torch.randn(size, size)
    products = {"mkl": lambda: a @ b}
    onednn = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if onednn is not None and torch.backends.mkldnn.is_available():
        products["onednn"] = lambda: onednn(a, b, None, "none", [], "")  # a @ b.T: same FLOPs
    rates = {}
    for name, product in products.items():
        try:
            product()
        except RuntimeError:  # a oneDNN this build cannot run
            continue
        wall = cpu = float("inf")
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            product()
            wall = min(wall, time.perf_counter() - start)
            cpu = min(cpu, time.process_time() - start_cpu)
        rates[name] = (2 * size**3 / wall, 2 * size**3 / cpu)
    return rates


def best_gemm_rate(rates: dict[str, tuple[float, float]]) -> tuple[float, float]:
    """The fastest wall-clock and CPU-time rates of :func:`gemm_rates`."""
    return max(wall for wall, _ in rates.values()), max(cpu for _, cpu in rates.values())
