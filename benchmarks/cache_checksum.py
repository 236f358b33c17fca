"""What verifying a disk-cache entry on every read costs: reads and writes of one embedding.

Every entry of the disk embedding cache carries a BLAKE2b checksum of its features,
geometry and signature, checked on every read. This times ``put`` and ``get`` of a
ViT-B-sized embedding ((1, 256, 64, 64) float32, 4 MiB) with this package and,
with ``--compare SRC``, with another version's (before checksums), interleaved in
separate processes, and reports medians of wall and CPU time::

    python benchmarks/cache_checksum.py --compare ../main/src --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKER = "--worker"


def measure(repeats: int) -> dict:
    """Median seconds (wall, CPU) of a ``put`` of a new entry and of a ``get`` from disk."""
    import torch

    from napari_persam.core.engine.embeddings import ImageEmbedding
    from napari_persam.core.engine.geometry import SamGeometry
    from napari_persam.core.io.disk_cache import DiskEmbeddingCache

    geometry = SamGeometry(original_hw=(1024, 1024), img_size=1024, grid_hw=(64, 64))
    embedding = ImageEmbedding(torch.randn(1, 256, 64, 64), geometry)
    timings: dict[str, list[tuple[float, float]]] = {"put": [], "get": []}
    with tempfile.TemporaryDirectory() as folder:
        for index in range(repeats):
            key = ("fingerprint", f"image-{index}", "float32")
            cache = DiskEmbeddingCache(folder)
            timings["put"].append(_timed(lambda: cache.put(key, embedding)))  # noqa: B023
            fresh = DiskEmbeddingCache(folder)  # nothing in memory: a read from disk
            timings["get"].append(_timed(lambda: fresh.get(key)))  # noqa: B023
            assert fresh.hits == 1
    return {
        name: {
            "wall_ms": round(1000 * statistics.median(wall for wall, _ in values), 2),
            "cpu_ms": round(1000 * statistics.median(cpu for _, cpu in values), 2),
        }
        for name, values in timings.items()
    }


def _timed(action) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    action()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="puts and gets per process")
    parser.add_argument("--rounds", type=int, default=3, help="processes per version")
    parser.add_argument("--compare", type=Path, default=None, metavar="SRC")
    parser.add_argument(WORKER, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.repeats)))
        return 0
    here = str(Path(__file__).resolve().parents[1] / "src")
    sources = {"this": here, **({"compared": str(args.compare.resolve())} if args.compare else {})}
    results: dict[str, list[dict]] = {version: [] for version in sources}
    for _ in range(args.rounds):
        for version, source in sources.items():
            command = [sys.executable, __file__, WORKER, "--repeats", str(args.repeats)]
            env = {**os.environ, "PYTHONPATH": source}
            done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
            results[version].append(json.loads(done.stdout.strip().splitlines()[-1]))
    for version, rounds in results.items():
        parts = []
        for name in ("put", "get"):
            wall = statistics.median(item[name]["wall_ms"] for item in rounds)
            cpu = statistics.median(item[name]["cpu_ms"] for item in rounds)
            parts.append(f"{name} {wall:.1f} ms ({cpu:.1f} ms CPU)")
        print(f"{version:8s} " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
