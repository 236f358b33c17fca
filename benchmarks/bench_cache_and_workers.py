"""Disk embedding cache and Dask workers: what they save on a 3D stack.

Part A, cache: every slice of a stack is segmented by an engine with an empty
:class:`DiskEmbeddingCache` (encode + write), then by a fresh engine (empty
memory) over the same cache folder (read instead of encode). Per slice: the
time of the encoder call and of the disk read, and the whole ``segment`` call
both times.

Part B, workers: ``napari-persam segment --concept`` over the stack as a
separate process, without cache, in one process and with ``--workers 1`` and
``--workers 2`` (a local Dask cluster). Wall time includes starting Python,
loading the model and starting the cluster, as a user sees it.

Input: ``../shared/data/plantseg_ovules_3d/images/sample_ovule.tif`` (32 x 128 x
128 confocal stack) when present, else a synthetic stack of the same shape.

Usage::

    python benchmarks/bench_cache_and_workers.py [--model tiny|vit_b] [--slices N]
        [--workers-model tiny] [--json results.json]

``--model vit_b`` uses randomly initialised ViT-B weights (no checkpoint is
needed to time the encoder; the masks are meaningless).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED_STACK = (
    ROOT.parent / "shared" / "data" / "plantseg_ovules_3d" / "images" / "sample_ovule.tif"
)


def load_stack(slices: int) -> tuple[np.ndarray, str]:
    import tifffile

    if SHARED_STACK.is_file():
        return np.asarray(tifffile.imread(SHARED_STACK))[:slices], str(SHARED_STACK)
    rng = np.random.default_rng(0)
    return (rng.random((slices, 128, 128)) * 255).astype(np.uint8), "synthetic"


def reference_mask(image: np.ndarray) -> np.ndarray:
    # Any object will do for timing: the brightest quarter of a central square.
    mask = np.zeros(image.shape, dtype=bool)
    h, w = image.shape
    square = image[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4]
    mask[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = square >= np.percentile(square, 75)
    return mask


def bench_cache(model: str, stack: np.ndarray) -> dict:
    from napari_persam.core.engine import persam
    from napari_persam.core.engine.persam import PerSAM
    from napari_persam.core.io.disk_cache import DiskEmbeddingCache
    from napari_persam.core.models import build_model

    sam = build_model(model, device="cpu")
    timings: dict[str, list[float]] = {"encode": [], "disk_read": [], "disk_write": []}
    original_encode = persam.encode_image

    def timed_encode(*args, **kwargs):
        start = time.perf_counter()
        result = original_encode(*args, **kwargs)
        timings["encode"].append(time.perf_counter() - start)
        return result

    persam.encode_image = timed_encode
    original_read = DiskEmbeddingCache._read
    original_write = DiskEmbeddingCache._write

    def timed(name, function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            result = function(*args, **kwargs)
            timings[name].append(time.perf_counter() - start)
            return result

        return wrapper

    DiskEmbeddingCache._read = timed("disk_read", original_read)
    DiskEmbeddingCache._write = timed("disk_write", original_write)
    try:
        with tempfile.TemporaryDirectory() as folder:
            first = PerSAM(sam, device="cpu", cache=DiskEmbeddingCache(folder), model_name=model)
            concept = first.learn(stack[len(stack) // 2], reference_mask(stack[len(stack) // 2]))
            timings = {key: [] for key in timings}  # the reference's encoding is not a slice
            first_run = []
            for image in stack:
                start = time.perf_counter()
                first.segment(image, concept)
                first_run.append(time.perf_counter() - start)
            entry_bytes = first.cache.size_bytes() / max(1, first.cache.entry_count())
            encode, write = timings["encode"], timings["disk_write"]
            timings["disk_read"] = []
            second = PerSAM(sam, device="cpu", cache=DiskEmbeddingCache(folder), model_name=model)
            second_run = []
            for image in stack:
                start = time.perf_counter()
                second.segment(image, concept)
                second_run.append(time.perf_counter() - start)
            assert second.cache.hits == len(stack), "the second run must read every slice"
            read = timings["disk_read"]
    finally:
        persam.encode_image = original_encode
        DiskEmbeddingCache._read = original_read
        DiskEmbeddingCache._write = original_write
    return {
        "model": model,
        "slices": len(stack),
        "slice_shape": list(stack.shape[1:]),
        "first_run_s_per_slice": float(np.median(first_run)),
        "cached_run_s_per_slice": float(np.median(second_run)),
        "encode_s_per_slice": float(np.median(encode)),
        "disk_write_s_per_slice": float(np.median(write)),
        "disk_read_s_per_slice": float(np.median(read)),
        "entry_mib": entry_bytes / 2**20,
    }


def bench_workers(model: str, stack: np.ndarray) -> list[dict]:
    import tifffile

    from napari_persam.core.engine.persam import PerSAM
    from napari_persam.core.io.concept_file import save_concept
    from napari_persam.core.models import build_model

    results = []
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        tifffile.imwrite(base / "stack.tif", stack, photometric="minisblack")
        engine = PerSAM(build_model(model, device="cpu"), device="cpu", model_name=model)
        middle = stack[len(stack) // 2]
        save_concept(engine.learn(middle, reference_mask(middle)), base / "concept.npz")
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        runs = [
            ("one process", []),
            ("--workers 1", ["--workers", "1"]),
            ("--workers 2", ["--workers", "2"]),
            ("--workers 2 --worker-threads 1", ["--workers", "2", "--worker-threads", "1"]),
        ]
        for label, extra in runs:
            out = base / f"out-{len(results)}"
            command = [
                sys.executable, "-m", "napari_persam.cli", "segment",
                "--concept", str(base / "concept.npz"), "--targets", str(base / "stack.tif"),
                "--out", str(out), "--model", model, "--device", "cpu", "--no-cache", "--quiet",
                *extra,
            ]  # fmt: skip
            start = time.perf_counter()
            subprocess.run(command, env=env, check=True)
            wall = time.perf_counter() - start
            report = json.loads((out / "report.json").read_text())
            item_times = [item["time_s"] for item in report["items"]]
            results.append(
                {
                    "run": label,
                    "slices": len(stack),
                    "wall_s": wall,
                    "median_item_s": float(np.median(item_times)),
                }
            )
            print(results[-1], flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="Model for the cache part.")
    parser.add_argument("--slices", type=int, default=8, help="Slices of the stack to use.")
    parser.add_argument("--workers-model", default="tiny", help="Model for the workers part.")
    parser.add_argument("--skip-workers", action="store_true")
    parser.add_argument("--json", default=None, help="Write the results here too.")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    stack, source = load_stack(args.slices)
    machine = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_before": os.getloadavg(),
        "stack": source,
    }
    print(machine, flush=True)
    cache = bench_cache(args.model, stack)
    print(cache, flush=True)
    workers = [] if args.skip_workers else bench_workers(args.workers_model, stack)
    machine["load_average_after"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(
            json.dumps({"machine": machine, "cache": cache, "workers": workers}, indent=2)
        )


if __name__ == "__main__":
    main()
