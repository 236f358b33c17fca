"""Time one image-encoder pass (1024 x 1024) and model building, per registry model.

Random weights (no download needed): the encoder's speed does not depend on the
weights' values. Run by hand, e.g. ``python benchmarks/encoder_speed.py vit_t vit_b``;
prints one line per model. Not part of the tests.
"""

from __future__ import annotations

import argparse
import time

import torch

from napari_persam.core.devices import resolve_device
from napari_persam.core.models import get_spec
from napari_persam.core.models.state_dicts import skip_random_init


def measure(name: str, *, device: torch.device, repeats: int) -> dict[str, float]:
    """Seconds to build (random init, and as for a checkpoint) and per encoder pass."""
    spec = get_spec(name)
    spec.builder()  # first build pays for imports (timm, segment_anything)
    start = time.perf_counter()
    with skip_random_init():
        spec.builder()
    build_for_checkpoint = time.perf_counter() - start
    start = time.perf_counter()
    # Timed passes use real random weights: uninitialised memory can hold NaNs or
    # denormals, which slow CPU arithmetic down.
    sam = spec.builder()
    build_random = time.perf_counter() - start
    sam = sam.to(device).eval()
    image = torch.randn(1, 3, 1024, 1024, device=device)
    with torch.inference_mode():
        sam.image_encoder(image)  # warm-up (allocations, kernel selection)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            sam.image_encoder(image)
        if device.type == "cuda":
            torch.cuda.synchronize()
    per_pass = (time.perf_counter() - start) / repeats
    params = sum(p.numel() for p in sam.parameters()) / 1e6
    return {
        "build_s": build_for_checkpoint,
        "build_random_s": build_random,
        "encode_s": per_pass,
        "params_m": params,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("models", nargs="*", default=["vit_t", "vit_b"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    for name in args.models:
        result = measure(name, device=device, repeats=args.repeats)
        print(
            f"{name}: {result['params_m']:.1f}M parameters, build {result['build_s']:.2f} s "
            f"before loading a checkpoint ({result['build_random_s']:.2f} s with random "
            f"weights), encoder {result['encode_s']:.2f} s per 1024 image "
            f"on {device} ({torch.get_num_threads()} threads)"
        )


if __name__ == "__main__":
    main()
