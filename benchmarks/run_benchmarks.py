"""Speed and memory of napari-persam, against SAM's bare encoder and the original PerSAM.

Usage (from the repository root)::

    python benchmarks/run_benchmarks.py --out benchmarks/results          # ViT-B, CPU
    python benchmarks/run_benchmarks.py --quick --out /tmp/bench          # tiny model, seconds
    python benchmarks/run_benchmarks.py --device cuda --out results-gpu   # on a GPU

Writes ``results.json`` (every figure) and ``results.md`` (tables, ratios first).
Models are built without checkpoints: random weights cost exactly the same compute
as the published ones, so the timings are real (the masks are not).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import platform
import statistics
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # run as a script: import the sibling modules

import numpy as np  # noqa: E402
import original_persam  # noqa: E402
import torch  # noqa: E402
from inputs import BenchInputs, load_inputs  # noqa: E402
from timing import (  # noqa: E402
    Lap,
    StageClock,
    cpu_model,
    lap_now,
    peak_rss_mib,
    python_heap_peak,
    stopwatch,
    timed_call,
)

from napari_persam.core import PerSAM, PerSAMConfig  # noqa: E402
from napari_persam.core.devices import resolve_device, supports_bfloat16  # noqa: E402
from napari_persam.core.engine import persam as persam_module  # noqa: E402
from napari_persam.core.engine import prompting as prompting_module  # noqa: E402
from napari_persam.core.evaluation.metrics import iou  # noqa: E402
from napari_persam.core.models import build_model, build_tiny_sam  # noqa: E402
from napari_persam.core.progress import run  # noqa: E402

OUR_STAGES = (
    "image encoding",
    "location prior",
    "first decoding",
    "refinement",
    "mask upscaling",
    "post-processing",
)
OFFICIAL_STAGES = ("image encoding", "location prior", "first decoding", "refinement")

#: --bf16 auto skips the bfloat16 encoder run beyond this matmul slowdown: emulated
#: bfloat16 on a CPU without native support would cost many minutes for ViT-B.
BF16_SLOWDOWN_LIMIT = 3.0

#: The quick mode's model: the tiny SAM at a 256 px input (16x16 feature grid) with a
#: narrow decoder, so the whole suite runs in seconds; same code paths as ViT-B.
QUICK_MODEL = "tiny-256"


@dataclasses.dataclass(frozen=True)
class Settings:
    model: str
    device: str
    n_targets: int
    n_slices: int
    warm_repeats: int
    official_steps: int
    official_max_seconds: float
    finetune_steps: int
    generated_size: int
    use_shared: bool
    bf16: str


def parse_args(argv: Sequence[str] | None) -> tuple[Settings, Path | None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, generated images")
    parser.add_argument(
        "--model", help=f"registry name (default vit_b; {QUICK_MODEL} with --quick)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    parser.add_argument("--targets", type=int, help="target images (default 1)")
    parser.add_argument("--slices", type=int, help="stack slices (default 2)")
    parser.add_argument("--official-steps", type=int, help="official PerSAM-F steps (1000)")
    parser.add_argument(
        "--official-max-seconds",
        type=float,
        default=90.0,
        help="stop the official PerSAM-F loop after this long and extrapolate to all steps",
    )
    parser.add_argument("--no-shared-data", action="store_true", help="use generated images")
    parser.add_argument(
        "--bf16",
        choices=("auto", "yes", "no"),
        default="auto",
        help="bfloat16 encoder run; auto skips it where a probe shows bfloat16 matmuls "
        f"over {BF16_SLOWDOWN_LIMIT:g}x slower than float32 (CPUs without native bfloat16)",
    )
    parser.add_argument("--out", type=Path, help="folder for results.json and results.md")
    args = parser.parse_args(argv)
    quick = args.quick
    settings = Settings(
        model=args.model or (QUICK_MODEL if quick else "vit_b"),
        device=args.device,
        n_targets=args.targets or 1,
        n_slices=args.slices or 2,
        warm_repeats=1 if quick else 3,
        official_steps=args.official_steps or (3 if quick else 1000),
        official_max_seconds=args.official_max_seconds,
        finetune_steps=20 if quick else PerSAMConfig().finetune_steps,
        generated_size=128 if quick else 512,
        use_shared=not (quick or args.no_shared_data),
        bf16=args.bf16,
    )
    return settings, args.out


@contextlib.contextmanager
def instrumented(engine: PerSAM, clock: StageClock) -> Iterator[None]:
    """Time the engine's stages through wrappers; everything is restored afterwards.

    Wraps the methods of the engine's prompter on the instance, and the functions
    persam.py and prompting.py imported, so no core file changes. The smoke test
    (tests/test_benchmarks_smoke.py) fails if these names move.
    """
    saved = {
        (persam_module, "encode_image"): persam_module.encode_image,
        (prompting_module, "remove_small_components"): prompting_module.remove_small_components,
    }

    def decode_stage(_args: tuple, kwargs: dict) -> str:
        return "refinement" if kwargs.get("mask_inputs") is not None else "first decoding"

    prompter = engine.prompter
    prompter.guidance = clock.wrap("location prior", prompter.guidance)
    prompter.decode = clock.wrap(decode_stage, prompter.decode)
    prompter.to_mask = clock.wrap("mask upscaling", prompter.to_mask)
    persam_module.encode_image = clock.wrap("image encoding", persam_module.encode_image)
    prompting_module.remove_small_components = clock.wrap(
        "post-processing", prompting_module.remove_small_components
    )
    try:
        yield
    finally:
        for name in ("guidance", "decode", "to_mask"):
            vars(prompter).pop(name, None)
        for (module, name), function in saved.items():
            setattr(module, name, function)


def bare_encoder(sam: torch.nn.Module, image: np.ndarray, device: torch.device) -> Lap:
    """SAM's ``image_encoder`` forward alone on the same (preprocessed) input."""
    from segment_anything.utils.transforms import ResizeLongestSide

    resized = ResizeLongestSide(sam.image_encoder.img_size).apply_image(image)
    pixels = torch.as_tensor(resized, device=device).permute(2, 0, 1).contiguous()[None]
    with torch.inference_mode():
        batch = sam.preprocess(pixels.float())
        _, lap = timed_call(device, sam.image_encoder, batch)
    return lap


def _median_lap(laps: Sequence[Lap]) -> Lap:
    return {key: statistics.median(lap[key] for lap in laps) for key in ("wall", "cpu")}


def measure_ours(
    sam: torch.nn.Module, inputs: BenchInputs, settings: Settings, device: torch.device
) -> dict[str, Any]:
    config = PerSAMConfig(finetune_steps=settings.finetune_steps)
    engine = PerSAM(sam, config=config, device=device, model_name=settings.model)
    clock = StageClock(device)
    result: dict[str, Any] = {}
    with instrumented(engine, clock):
        _, result["reference_encoding"] = timed_call(device, engine.embed, inputs.reference)
        concept, result["learning"] = timed_call(
            device, engine.learn, inputs.reference, inputs.reference_mask
        )
        concept_f, result["persam_f_fitting"] = timed_call(device, engine.finetune, concept)

        per_target = []
        for target in inputs.targets:
            clock.reset()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            with python_heap_peak() as heap:
                segmentation, cold = timed_call(device, engine.segment, target, concept)
            stages = clock.snapshot()
            warm = [
                timed_call(device, engine.segment, target, concept)[1]
                for _ in range(settings.warm_repeats)
            ]
            warm_f = timed_call(device, engine.segment, target, concept_f)[1]
            per_target.append(
                {
                    "cold": cold,
                    "warm": _median_lap(warm),
                    "warm_persam_f": warm_f,
                    "stages": stages,
                    "python_heap_peak_mib": heap["mib"],
                    "gpu_peak_mib": (
                        torch.cuda.max_memory_allocated(device) / 2**20
                        if device.type == "cuda"
                        else None
                    ),
                    "mask": segmentation.mask,
                }
            )
        result["targets"] = per_target

        # A stack: learn on slice 0, then every slice (slice 0 is a cache hit).
        stack_concept = engine.learn(inputs.stack[0], inputs.stack_mask)
        stamps = [lap_now()]
        run(
            engine.segment_many(list(inputs.stack), stack_concept),
            on_progress=lambda _step: stamps.append(lap_now()),
        )
        result["stack_slices"] = [
            {key: after[key] - before[key] for key in ("wall", "cpu")}
            for before, after in itertools.pairwise(stamps)
        ]
    result["cache"] = {"hits": engine.cache.hits, "misses": engine.cache.misses}
    return result


def bf16_matmul_slowdown(device: torch.device, *, size: int = 512, repeats: int = 5) -> float:
    """Wall time of a bfloat16 matmul over a float32 one on ``device`` (a cheap probe)."""
    a = torch.randn(size, size, device=device)
    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        x = a.to(dtype)
        x @ x  # warm-up
        with stopwatch(device) as lap:
            for _ in range(repeats):
                x @ x
        times[dtype] = lap["wall"]
    return times[torch.bfloat16] / times[torch.float32]


def measure_bf16(
    sam: torch.nn.Module,
    inputs: BenchInputs,
    settings: Settings,
    device: torch.device,
    fp32_mask: np.ndarray,
) -> dict[str, Any]:
    result: dict[str, Any] = {"cpu_capability": None, "matmul_slowdown": None}
    if device.type == "cpu":
        result["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    if settings.bf16 == "no" or not supports_bfloat16(device):
        result["skipped"] = "not requested" if settings.bf16 == "no" else "not supported"
        return result
    result["matmul_slowdown"] = bf16_matmul_slowdown(device)
    if settings.bf16 == "auto" and result["matmul_slowdown"] > BF16_SLOWDOWN_LIMIT:
        result["skipped"] = (
            f"bfloat16 matmuls are {result['matmul_slowdown']:.1f}x slower than float32 here "
            "(no native bfloat16)"
        )
        return result
    engine = PerSAM(
        sam, config=PerSAMConfig(encoder_dtype="bfloat16"), device=device, model_name=settings.model
    )
    concept = engine.learn(inputs.reference, inputs.reference_mask)  # one more encode, untimed
    target = inputs.targets[0]
    _, result["encode"] = timed_call(device, engine.embed, target)
    segmentation, result["segment_after_encode"] = timed_call(
        device, engine.segment, target, concept
    )
    result["mask_iou_vs_fp32"] = iou(segmentation.mask, fp32_mask)
    return result


def measure_official(
    sam: torch.nn.Module, inputs: BenchInputs, settings: Settings, device: torch.device
) -> dict[str, Any]:
    from segment_anything import SamPredictor

    predictor = SamPredictor(sam)
    clock = StageClock(device)
    reference = original_persam.learn_reference(
        predictor, inputs.reference, inputs.reference_mask, clock
    )
    reference_stages = clock.snapshot()
    fit = original_persam.fit_persam_f(
        predictor,
        reference,
        steps=settings.official_steps,
        max_seconds=settings.official_max_seconds,
    )
    per_step = fit.per_step()
    targets = []
    for target in inputs.targets:
        clock.reset()
        with stopwatch(device) as total:
            original_persam.segment_target(predictor, target, reference, clock)
        targets.append({"total": total, "stages": clock.snapshot()})
    return {
        "reference_encoding": reference_stages["image encoding"],
        "learning": reference_stages["learning"],
        "persam_f": {
            "steps": settings.official_steps,
            "steps_run": fit.steps_run,
            "measured": fit.lap,
            "per_step": per_step,
            "all_steps": {k: v * settings.official_steps for k, v in per_step.items()},
            "extrapolated": fit.steps_run < settings.official_steps,
        },
        "targets": targets,
    }


def machine() -> dict[str, Any]:
    info = {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_all(settings: Settings) -> dict[str, Any]:
    device = resolve_device(settings.device)
    inputs = load_inputs(
        n_targets=settings.n_targets,
        n_slices=settings.n_slices,
        generated_size=settings.generated_size,
        use_shared=settings.use_shared,
    )
    results: dict[str, Any] = {
        "settings": dataclasses.asdict(settings),
        "machine": machine(),
        "inputs": inputs.source,
        "device": str(device),
    }
    with stopwatch(device) as build:
        if settings.model == QUICK_MODEL:
            sam = build_tiny_sam(img_size=256, encoder_dim=32, prompt_dim=32).to(device)
        else:
            sam = build_model(settings.model, device=device)
    results["model_build"] = build
    results["rss_after_model_mib"] = peak_rss_mib()
    ours = measure_ours(sam, inputs, settings, device)
    results["rss_after_ours_mib"] = peak_rss_mib()
    # After our runs, so the one-time start-up costs of the first forward pass (thread
    # pools, allocator) fall on us, not on the figure we are compared with.
    results["bare_encoder"] = bare_encoder(sam, inputs.targets[0], device)
    fp32_mask = ours["targets"][0].pop("mask")
    for target in ours["targets"][1:]:
        target.pop("mask")
    results["ours"] = ours
    results["bf16"] = measure_bf16(sam, inputs, settings, device, fp32_mask)
    results["official"] = measure_official(sam, inputs, settings, device)
    results["rss_peak_mib"] = peak_rss_mib()
    results["machine"]["load_average_after"] = (
        list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    )
    results["ratios"] = {key: ratios(results, key) for key in ("wall", "cpu")}
    return results


def ratios(results: dict[str, Any], key: str) -> dict[str, float | None]:
    """The headline ratios on clock ``key`` ("wall" or "cpu")."""
    ours, official = results["ours"], results["official"]
    n = len(ours["targets"])

    def mean(laps) -> float:
        return statistics.mean(lap[key] for lap in laps)

    cold = mean(t["cold"] for t in ours["targets"])
    warm = mean(t["warm"] for t in ours["targets"])
    encode = mean(t["stages"]["image encoding"] for t in ours["targets"])
    official_target = mean(t["total"] for t in official["targets"])
    bare = results["bare_encoder"][key]
    our_flow = (
        ours["reference_encoding"][key]
        + ours["learning"][key]
        + ours["persam_f_fitting"][key]
        + n * cold
    )
    official_flow = (
        official["reference_encoding"][key]
        + official["learning"][key]
        + official["persam_f"]["all_steps"][key]
        + n * official_target
    )
    slices = ours["stack_slices"][1:] or ours["stack_slices"]  # slice 0 was cached
    bf16 = results["bf16"]
    return {
        "our_image_total_over_bare_encoder": cold / bare,
        "our_image_total_over_our_encoding": cold / encode,
        "our_slice_total_over_bare_encoder": mean(slices) / bare,
        "official_persam_over_ours_per_image": official_target / cold,
        "official_rerun_over_ours_cached_rerun": official_target / warm,
        "cache_hit_speedup": cold / warm,
        "official_persam_f_fitting_over_ours": official["persam_f"]["all_steps"][key]
        / ours["persam_f_fitting"][key],
        "official_persam_f_flow_over_ours": official_flow / our_flow,
        "bf16_encode_over_fp32_encode": bf16["encode"][key] / encode if "encode" in bf16 else None,
    }


# ------------------------------------------------------------------------ report
def _s(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value >= 100:
        return f"{value:.0f} s"
    if value >= 1:
        return f"{value:.2f} s"
    return f"{value * 1000:.0f} ms"


def _lap(lap: Lap | None) -> str:
    """Wall time, then CPU time in brackets."""
    if lap is None:
        return "n/a"
    return f"{_s(lap['wall'])} ({_s(lap['cpu'])})"


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


RATIO_LABELS = {
    "our_image_total_over_bare_encoder": "our total per new image / bare `image_encoder` forward",
    "our_image_total_over_our_encoding": "our total per new image / its own image encoding",
    "our_slice_total_over_bare_encoder": "our total per new stack slice / bare encoder forward",
    "official_persam_over_ours_per_image": "original PerSAM per image / ours (new image)",
    "official_rerun_over_ours_cached_rerun": "original PerSAM per image / ours re-run on a "
    "cached image",
    "cache_hit_speedup": "cache-hit speedup (our new image / our cached image)",
    "official_persam_f_fitting_over_ours": "original PerSAM-F fitting ({steps} decoder calls) / "
    "our PerSAM-F fitting",
    "official_persam_f_flow_over_ours": "original PerSAM-F one-shot flow / ours (reference, "
    "fitting, {n} target)",
    "bf16_encode_over_fp32_encode": "bfloat16 encoder / float32 encoder",
}


def to_markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    ours, official = results["ours"], results["official"]
    fit = official["persam_f"]
    target = ours["targets"][0]
    off_target = official["targets"][0]
    lines = [
        f"Model `{results['settings']['model']}` on `{results['device']}`; machine: {m['cpu']}, "
        f"{m['cpu_cores']} cores, torch {m['torch']} with {m['torch_threads']} threads"
        + (f", GPU {m['gpu']}" if m.get("gpu") else "")
        + f"; load average {_load(m.get('load_average'))} before and "
        f"{_load(m.get('load_average_after'))} after the run.",
        f"Inputs: {results['inputs']}.",
        "",
        "### Ratios",
        "",
        "| Ratio | wall clock | CPU time |",
        "| --- | --- | --- |",
    ]
    for key, label in RATIO_LABELS.items():
        label = label.format(steps=fit["steps"], n=len(ours["targets"]))
        wall, cpu = results["ratios"]["wall"][key], results["ratios"]["cpu"][key]
        lines.append(f"| {label} | {_x(wall)} | {_x(cpu)} |")
    lines += [
        "",
        "### Time per stage, first target image: wall clock (CPU time)",
        "",
        "| Stage | ours | original PerSAM |",
        "| --- | --- | --- |",
    ]
    for stage in OUR_STAGES:
        theirs = off_target["stages"].get(stage) if stage in OFFICIAL_STAGES else None
        lines.append(f"| {stage} | {_lap(target['stages'].get(stage))} | {_lap(theirs)} |")
    extrapolated = (
        f"; extrapolated from {fit['steps_run']} steps of {_lap(fit['per_step'])}"
        if fit["extrapolated"]
        else ""
    )
    lines += [
        f"| **total per new image** | **{_lap(target['cold'])}** | "
        f"**{_lap(off_target['total'])}** |",
        f"| re-run on the same image (cache hit) | {_lap(target['warm'])} | "
        f"{_lap(off_target['total'])} (no cache) |",
        f"| PerSAM-F segmentation, cached image | {_lap(target['warm_persam_f'])} | |",
        f"| reference: encoding | {_lap(ours['reference_encoding'])} | "
        f"{_lap(official['reference_encoding'])} |",
        f"| reference: learning (after encoding) | {_lap(ours['learning'])} | "
        f"{_lap(official['learning'])} |",
        f"| PerSAM-F fitting ({fit['steps']} steps) | {_lap(ours['persam_f_fitting'])} | "
        f"{_lap(fit['all_steps'])}{extrapolated} |",
        f"| bare `image_encoder` forward | {_lap(results['bare_encoder'])} | |",
        "",
        "### Stack: time per slice with `segment_many`, wall clock (CPU time)",
        "",
        "| Slice | time |",
        "| --- | --- |",
    ]
    for index, lap in enumerate(ours["stack_slices"]):
        note = " (reference slice, embedding cached)" if index == 0 else ""
        lines.append(f"| {index}{note} | {_lap(lap)} |")
    bf16 = results["bf16"]
    lines += ["", "### Precision and memory", ""]
    if "encode" in bf16:
        lines.append(
            f"- bfloat16 encoder: {_lap(bf16['encode'])} per image (float32: "
            f"{_lap(target['stages'].get('image encoding'))}); mask IoU against float32 "
            f"{bf16['mask_iou_vs_fp32']:.3f}."
        )
    else:
        lines.append(
            f"- bfloat16 encoder: not run ({bf16['skipped']}; CPU capability "
            f"{bf16['cpu_capability']})."
        )
    lines += [
        f"- Peak of Python/numpy allocations (tracemalloc) while segmenting a new image: "
        f"{target['python_heap_peak_mib']:.1f} MiB.",
        f"- Process peak resident memory: {results['rss_after_model_mib']:.0f} MiB after "
        f"building the model, {results['rss_after_ours_mib']:.0f} MiB after our runs, "
        f"{results['rss_peak_mib']:.0f} MiB at the end.",
    ]
    if target.get("gpu_peak_mib") is not None:
        lines.append(f"- GPU peak allocated while segmenting: {target['gpu_peak_mib']:.0f} MiB.")
    return "\n".join(lines) + "\n"


def _load(values: Sequence[float] | None) -> str:
    return "n/a" if not values else f"{values[0]:.1f}"


def main(argv: Sequence[str] | None = None) -> int:
    settings, out = parse_args(argv)
    results = run_all(settings)
    markdown = to_markdown(results)
    print(markdown)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        (out / "results.md").write_text(markdown, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
