"""The image encoder against its FLOP bound: eager, SDPA, compiled, OpenVINO, ONNX Runtime.

For each model (ViT-B and MobileSAM's TinyViT by default, random weights: the
compute of the published ones), in one interleaved run:

- the FLOPs of one 1024 x 1024 forward (``torch.utils.flop_counter``);
- the rate of a large float32 GEMM measured on the spot, and the resulting lower
  bound (FLOPs / GEMM rate);
- wall-clock and CPU time, minor page faults and kernel time of each way of running
  the encoder, rounds interleaved so the machine's load hits all alike (medians);
- each time's ratio to the bound and to eager, and each embedding's largest
  difference to eager's.

Ways of running: ``eager`` (segment_anything's own ``Attention``), ``eager+heap``
(the same with glibc told to keep freed memory: ``mallopt``, what the command line
does), ``sdpa`` (our :class:`SdpaAttention`), ``compiled`` (``torch.compile`` of the
SDPA model), ``openvino`` / ``openvino-1t`` (2 and 1 threads) and ``onnxruntime``
on the ONNX export the engine makes. Run from the repository root::

    PYTHONPATH=src python benchmarks/encoder_bounds.py --out benchmarks/results
    PYTHONPATH=src python benchmarks/encoder_bounds.py --models tiny --rounds 1  # seconds

Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from napari_persam.core.devices import keep_freed_memory, release_freed_memory

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import best_gemm_rate, gemm_rates

SIZE = 1024


def gemm_rate(size: int = 2048, repeats: int = 5) -> tuple[float, float, dict]:
    """FLOP per second of wall-clock and of CPU time of a float32 ``size``-cubed matmul.

    The faster of MKL and oneDNN (:func:`timing.gemm_rates`), best of ``repeats``,
    and each library's rates. The CPU-time rate (all threads together) is the one to
    hold CPU times against on a shared machine, where wall-clock time includes waiting.
    """
    rates = gemm_rates(size, repeats)
    return (*best_gemm_rate(rates), rates)


def count_flops(encoder: torch.nn.Module, pixels: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        encoder(pixels)
    return int(counter.get_total_flops())


def measure(run, pixels) -> tuple[dict[str, float], torch.Tensor]:
    before = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.perf_counter()
    with torch.inference_mode():
        out = run(pixels)
    wall = time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_SELF)
    lap = {
        "wall": wall,
        "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "sys": after.ru_stime - before.ru_stime,
        "minflt": float(after.ru_minflt - before.ru_minflt),
    }
    return lap, out


def variants(name: str, sam, workdir: Path, threads: int, skip: set[str]):
    """name -> (callable, toggles) for every way of running this model's encoder."""
    from segment_anything.modeling.image_encoder import Attention

    from napari_persam.core.models.encoder_export import iter_exported_encoder, weights_id
    from napari_persam.core.models.encoder_runtime import RuntimeEncoder, runtime_installed
    from napari_persam.core.models.fast_attention import SdpaAttention
    from napari_persam.core.progress import run

    encoder = sam.image_encoder
    attentions = [m for m in encoder.modules() if isinstance(m, Attention)]
    # TinyViT (timm) has SDPA built in, behind a flag; eager is its explicit path.
    timm_attentions = [m for m in encoder.modules() if hasattr(m, "fused_attn")]

    def with_class(cls, fused):
        def switch():
            for module in attentions:
                module.__class__ = cls
            for module in timm_attentions:
                module.fused_attn = fused

        return switch

    eager, sdpa = with_class(Attention, False), with_class(SdpaAttention, True)
    table = {"eager": (encoder, eager, None)}
    table["eager+heap"] = (encoder, lambda: (eager(), keep_freed_memory()), release_freed_memory)
    table["sdpa"] = (encoder, sdpa, None)
    if "compiled" not in skip:
        sdpa()
        compiled = torch.compile(encoder)
        table["compiled"] = (compiled, sdpa, None)
    # The export runs in a child process (export_child): count its CPU time too.
    export_start = _cpu_with_children()
    path = run(
        iter_exported_encoder(
            encoder,
            model_name=name,
            img_size=SIZE,
            weights=weights_id(encoder, None),
            root=workdir,
        )
    )
    export_cpu = _cpu_with_children() - export_start
    for runtime in ("openvino", "onnxruntime"):
        if runtime in skip or not runtime_installed(runtime):
            continue
        table[runtime] = (RuntimeEncoder(runtime, path, threads=threads), None, None)
        if runtime == "openvino":
            table["openvino-1t"] = (RuntimeEncoder(runtime, path, threads=1), None, None)
    return table, export_cpu


def _cpu_with_children() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def bench_model(
    name: str, *, rounds: int, threads: int, skip: set[str], workdir: Path, warmup: bool = True
) -> dict:
    from napari_persam.core.models import build_model

    torch.manual_seed(0)
    sam = build_model(name)
    encoder = sam.image_encoder
    pixels = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    table, export_cpu = variants(name, sam, workdir, threads, skip)
    table["eager"][1]()
    flops = count_flops(encoder, pixels)
    with torch.inference_mode():
        reference = encoder(pixels)
    laps: dict[str, list[dict[str, float]]] = {key: [] for key in table}
    errors: dict[str, float] = {}
    for key, (run, before, after) in table.items():  # warm-up (compilation, kernel choice)
        if before:
            before()
        try:
            first, out = measure(run, pixels)
            errors[key] = float((out.float() - reference).abs().max())
            if not warmup:  # a slow model on a busy machine: the first call counts too
                laps[key].append(first)
        except Exception as error:  # a variant that cannot run here is reported, not fatal
            print(f"{name} {key}: cannot run ({error})", file=sys.stderr)
            laps.pop(key)
        if after:
            after()
    rate, cpu_rate, by_library = gemm_rate()
    libraries = {library: [pair] for library, pair in by_library.items()}
    for _ in range(rounds if warmup else rounds - 1):
        for key in list(laps):
            run, before, after = table[key]
            if before:
                before()
            lap, _ = measure(run, pixels)
            laps[key].append(lap)
            if after:
                after()
        again = gemm_rate()
        rate, cpu_rate = max(rate, again[0]), max(cpu_rate, again[1])
        for library, pair in again[2].items():
            libraries.setdefault(library, []).append(pair)
    bound = flops / rate
    cpu_bound = flops / cpu_rate
    summary = {}
    for key, values in laps.items():
        med = {field: statistics.median(v[field] for v in values) for field in values[0]}
        summary[key] = {
            **med,
            "cpu_over_bound": med["cpu"] / cpu_bound,
            "wall_over_bound": med["wall"] / bound,
            "max_abs_diff": errors[key],
            "laps": values,
        }
    eager_cpu = summary["eager"]["cpu"]
    for key in summary:
        summary[key]["cpu_over_eager"] = summary[key]["cpu"] / eager_cpu
    return {
        "model": name,
        "gflop": flops / 1e9,
        "gemm_gflops": rate / 1e9,
        "gemm_gflops_per_cpu_s": cpu_rate / 1e9,
        # Each library's best CPU-time rate: the bound holds the faster (timing.gemm_rates).
        "gemm_gflops_per_cpu_s_by_library": {
            library: max(cpu for _, cpu in pairs) / 1e9 for library, pairs in libraries.items()
        },
        "bound_s": bound,
        "cpu_bound_s": cpu_bound,
        "threads": threads,
        "export_cpu_s": export_cpu,
        "embedding_max_abs": float(reference.abs().max()),
        "variants": summary,
    }


def markdown(results: list[dict], load: tuple[float, float]) -> str:
    lines = [f"Load average {load[0]:.1f} before and {load[1]:.1f} after the run.", ""]
    for result in results:
        lines += [
            f"**{result['model']}**: {result['gflop']:.1f} GFLOP per 1024 px image; large GEMM "
            f"{result['gemm_gflops']:.0f} GFLOP/s wall on {result['threads']} threads, "
            f"{result['gemm_gflops_per_cpu_s']:.0f} GFLOP per CPU-second; bound "
            f"{result['bound_s']:.2f} s wall, {result['cpu_bound_s']:.2f} s CPU; "
            f"one-time ONNX export {result['export_cpu_s']:.0f} s CPU.",
            "",
            "| way | wall (median) | CPU | CPU / bound | CPU / eager | kernel time | "
            "minor faults | max abs diff |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for key, v in result["variants"].items():
            lines.append(
                f"| {key} | {v['wall']:.2f} s | {v['cpu']:.2f} s | {v['cpu_over_bound']:.2f}x | "
                f"{v['cpu_over_eager']:.2f}x | {v['sys']:.2f} s | {v['minflt']:,.0f} | "
                f"{v['max_abs_diff']:.1e} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit_b", "vit_t"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--skip", nargs="*", default=[], help="compiled, openvino, onnxruntime")
    parser.add_argument("--out", default=None, help="folder for encoder_bounds.json/.md")
    parser.add_argument(
        "--no-warmup", action="store_true", help="count each way's first call as a round"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    load_before = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models:
            results.append(
                bench_model(
                    name,
                    rounds=args.rounds,
                    threads=args.threads,
                    skip=set(args.skip),
                    workdir=Path(workdir),
                    warmup=not args.no_warmup,
                )
            )
            print(markdown(results[-1:], (load_before, os.getloadavg()[0])), flush=True)
    load = (load_before, os.getloadavg()[0])
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "encoder_bounds.json").write_text(
            json.dumps({"load_average": load, "results": results}, indent=1)
        )
        (out / "encoder_bounds.md").write_text(markdown(results, load))
    return 0


if __name__ == "__main__":
    sys.exit(main())
