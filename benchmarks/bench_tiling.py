"""Small objects in large images: encodings, time and peak memory of tiled runs.

For a 4096 x 4096 and an 8192 x 8192 uint16 field of 12-16 px bright discs (one
painted), with the tiny test SAM and a random-weight ViT-B:

* the plan the learned scale gives (tiles, pixels per feature cell);
* encodings of a full one-object run (counted by the embedding cache);
* wall and CPU time: the whole run with the tiny model (tiles read, prepared,
  encoded, blended, one object decoded); for ViT-B the time of a few tile encodings
  (medians), extrapolated to the plan: each tile is one encoding of a full SAM input,
  and what the run adds besides encoding is the tiny model's figure minus its
  encodings. (Every-instance runs add decoder work per candidate: issue 14's
  benchmark measures that.)
* peak memory: the process's peak resident set (each configuration in its own
  process) and the peak of Python/numpy allocations (tracemalloc).

Usage (from the repository root, ``src`` importable)::

    python benchmarks/bench_tiling.py --out benchmarks/results/tiling.json
    python benchmarks/bench_tiling.py --quick      # 2048 px, tiny model only: seconds
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))  # tests.synthetic makes the inputs


def disc_field(side: int):
    """(side, side) uint16 field of bright 12-16 px discs and the painted first disc."""
    from tests.synthetic import disc_field as field

    image, labels = field((side, side), levels=(6000, 400, 40000), dtype=np.uint16)
    return image, labels == 1


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(model: str, side: int, *, tiles_to_time: int) -> dict:
    """One configuration, in this process (run through a subprocess for a clean peak)."""
    import torch

    from napari_persam.core import PerSAM, PerSAMConfig, run
    from napari_persam.core.models import build_model
    from napari_persam.core.models.state_dicts import skip_random_init

    torch.manual_seed(0)
    with skip_random_init() if model != "tiny" else _nothing():
        sam = build_model(model, device="cpu")
    # 8192 px at this scale needs 18 x 18 tiles, more than the default max_tiles (256):
    # the default refuses it (with what to do); the benchmark raises the limit.
    config = PerSAMConfig(cache_size=4, max_instances=50, max_tiles=1024)
    engine = PerSAM(sam, config=config, device="cpu", model_name=model)
    image, painted = disc_field(side)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    concept = engine.learn(image, painted)
    (plan,) = engine.plan_tiles(image.shape, concept)
    result = {
        "model": model,
        "side": side,
        "pixels_per_cell": concept.pixels_per_cell,
        "tiles": len(plan),
        "plan": plan.describe(),
        "whole_image_encodings": 1,
        "default_max_tiles_refuses": len(plan) > PerSAMConfig().max_tiles,
    }
    misses = engine.cache.misses
    if model == "tiny":
        start, cpu = time.perf_counter(), _cpu()
        found = run(engine.iter_segment(image, concept))
        result.update(
            encodings=engine.cache.misses - misses,
            wall_s=time.perf_counter() - start,
            cpu_s=_cpu() - cpu,
            found=bool(found.found),
            encoding_wall_s=float(np.median(engine.encoding_seconds)),
        )
    else:
        # A few tiles, each one encoding of a full SAM input: the rest is the same work.
        from napari_persam.core.engine.tiled import TiledImage

        source = TiledImage(image)
        walls, cpus = [], []
        for window in plan.windows()[:tiles_to_time]:
            rgb = source.rgb(window)
            start, cpu = time.perf_counter(), _cpu()
            engine.embed_tile(rgb, plan.tile_side)
            walls.append(time.perf_counter() - start)
            cpus.append(_cpu() - cpu)
        result.update(
            encodings=len(plan),
            encoding_wall_s=float(np.median(walls)),
            encoding_cpu_s=float(np.median(cpus)),
            wall_s_estimated=float(np.median(walls)) * len(plan),
            cpu_s_estimated=float(np.median(cpus)) * len(plan),
        )
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result.update(
        numpy_peak_mib=peak / 2**20,
        rss_peak_mib=rss / 1024,
        rss_growth_mib=(rss - base_rss) / 1024,
        image_mib=image.nbytes / 2**20,
    )
    return result


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2048 px, tiny model only")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the figures")
    parser.add_argument("--tiles-to-time", type=int, default=3)
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "SIDE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        result = measure(args.one[0], int(args.one[1]), tiles_to_time=args.tiles_to_time)
        print(json.dumps(result))
        return
    runs = [("tiny", 2048)] if args.quick else [
        ("tiny", 4096), ("tiny", 8192), ("vit_b", 4096), ("vit_b", 8192)
    ]  # fmt: skip
    results = []
    for model, side in runs:
        command = [sys.executable, __file__, "--one", model, str(side),
                   "--tiles-to-time", str(args.tiles_to_time)]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{model} at {side} px failed:\n{done.stderr[-2000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    record = {"load_average_at_end": os.getloadavg(), "results": results}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
