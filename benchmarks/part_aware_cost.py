"""What part-aware prompting (P²SAM) costs on top of PerSAM, against one image encoding.

Usage (from the repository root, ``src`` importable)::

    python benchmarks/part_aware_cost.py --out benchmarks/results      # ViT-B, CPU
    python benchmarks/part_aware_cost.py --quick --out /tmp/parts      # tiny model, seconds

On the same encoded target image, ``prompt_mode="persam"`` and ``"part-aware"``
(default part and background ranges) segment one object and every instance,
interleaved ``--repeats`` times; the image encoding is timed in the same loop (the
cache is emptied for it). Reported: medians of wall-clock and CPU time, the extra
cost of part-aware prompting as a fraction of one encoding (the target is at most
10 % of a ViT-B encoding on a CPU), the once-per-concept cost of learning
(prototypes and distances, on an already encoded reference), and where the extra
time goes. Writes ``part_aware.json`` and ``part_aware.md``. Random weights cost the
same compute as the published ones; the masks are not meaningful.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # run as a script: import the sibling modules

import numpy as np  # noqa: E402
import torch  # noqa: E402
from inputs import load_inputs  # noqa: E402
from timing import Lap, StageClock, cpu_model, timed_call  # noqa: E402

from napari_persam.core import PerSAM, PerSAMConfig  # noqa: E402
from napari_persam.core.engine import retrieval  # noqa: E402
from napari_persam.core.engine.embeddings import encode_image  # noqa: E402
from napari_persam.core.engine.images import prepare_image  # noqa: E402
from napari_persam.core.models import build_model, build_tiny_sam  # noqa: E402


def _median(laps: Sequence[Lap]) -> Lap:
    return {key: statistics.median(lap[key] for lap in laps) for key in ("wall", "cpu")}


def measure(*, quick: bool, repeats: int, max_instances: int) -> dict[str, Any]:
    torch.manual_seed(0)
    device = torch.device("cpu")
    sam = build_tiny_sam() if quick else build_model("vit_b", device="cpu")
    inputs = load_inputs(n_targets=1, n_slices=1, generated_size=256, use_shared=not quick)
    base = PerSAMConfig(max_instances=max_instances)
    persam = PerSAM(sam, config=dataclasses.replace(base, prompt_mode="persam"), device=device)
    parts = PerSAM(
        sam,
        config=dataclasses.replace(base, prompt_mode="part-aware"),
        device=device,
        cache=persam.cache,
    )
    # The smallest part-aware setting beyond PerSAM: 1 or 2 parts, no background parts.
    small = PerSAM(
        sam,
        config=dataclasses.replace(
            base, prompt_mode="part-aware", max_parts=2, max_negative_parts=0
        ),
        device=device,
        cache=persam.cache,
    )
    reference, target = inputs.reference, inputs.targets[0]

    persam.embed(reference)  # learning is timed on an encoded reference
    persam.embed(target)
    rgb = prepare_image(target)
    laps: dict[str, list[Lap]] = {
        name: []
        for name in (
            "encoding",
            "learn",
            "segment persam",
            "segment part-aware",
            "segment part-aware 1-2 parts",
            "instances persam",
            "instances part-aware",
        )
    }
    clock = StageClock(device)
    found: dict[str, Any] = {}
    for _ in range(repeats):
        # The encoding the engine does on a new image (prepared as it prepares it).
        _, lap = timed_call(device, encode_image, sam, rgb, device=device, encoder_dtype="float32")
        laps["encoding"].append(lap)
        concept, lap = timed_call(device, persam.learn, reference, inputs.reference_mask)
        laps["learn"].append(lap)
        seg, lap = timed_call(device, persam.segment, target, concept)
        laps["segment persam"].append(lap)
        with _breakdown(clock):
            part_seg, lap = timed_call(device, parts.segment, target, concept)
        laps["segment part-aware"].append(lap)
        _, lap = timed_call(device, small.segment, target, concept)
        laps["segment part-aware 1-2 parts"].append(lap)
        instances, lap = timed_call(device, persam.segment_instances, target, concept)
        laps["instances persam"].append(lap)
        part_instances, lap = timed_call(device, parts.segment_instances, target, concept)
        laps["instances part-aware"].append(lap)
        found = {
            "persam_points": len(seg.points),
            "part_aware_parts": list(part_seg.parts),
            "pairs_tried": len(part_seg.retrieval_distances),
            "instances_persam": instances.count,
            "instances_part_aware": part_instances.count,
            "reference_cells": len(concept.part_cells),
        }
    # The reference check of one accepted object (part-aware every-instance mode): its
    # cells (a pass over the full-resolution mask) and its distance to the reference.
    embedding = parts.embed(target)
    check = retrieval.InstanceCheck(
        parts.prompter, embedding, concept, parts.prompter.guidance(embedding, concept)
    )
    height, width = target.shape[:2]
    blob = np.zeros((height, width), dtype=bool)
    blob[height // 4 : height // 4 + height // 20, width // 4 : width // 4 + width // 16] = True
    judge = [timed_call(device, check.judge, blob)[1] for _ in range(5 * repeats)]
    laps["check per object"] = judge
    medians = {name: _median(values) for name, values in laps.items()}
    encoding = medians["encoding"]
    extra = {
        key: {
            clock_name: (medians[key][clock_name] - medians[base_key][clock_name])
            / encoding[clock_name]
            for clock_name in ("wall", "cpu")
        }
        for key, base_key in (
            ("segment part-aware", "segment persam"),
            ("segment part-aware 1-2 parts", "segment persam"),
            ("instances part-aware", "instances persam"),
        )
    }
    return {
        "model": "tiny" if quick else "vit_b",
        "machine": {"cpu": cpu_model(), "torch_threads": torch.get_num_threads()},
        "inputs": inputs.source,
        "image_shape": list(target.shape),
        "repeats": repeats,
        "max_instances": max_instances,
        "medians": medians,
        "extra_over_encoding": extra,
        "learn_over_encoding": {k: medians["learn"][k] / encoding[k] for k in ("wall", "cpu")},
        "check_100_objects_over_encoding": {
            k: 100 * medians["check per object"][k] / encoding[k] for k in ("wall", "cpu")
        },
        "part_aware_stages": {
            name: {k: v / repeats for k, v in lap.items()} for name, lap in clock.snapshot().items()
        },
        "found": found,
    }


class _breakdown:
    """Time the part-aware stages through wrappers on the retrieval module's names."""

    def __init__(self, clock: StageClock) -> None:
        self.clock = clock
        self.saved: dict[tuple[Any, str], Any] = {}

    def __enter__(self) -> None:
        targets = {
            (retrieval, "_distance"): "distances (EMD)",
            (retrieval, "_part_guidance"): "part prototypes: maps and points",
            (retrieval.Prompter, "cascade"): "cascades (decoder)",
            (retrieval.ImageCells, "maxima"): "background points",
        }
        for (owner, name), stage in targets.items():
            function = getattr(owner, name)
            self.saved[(owner, name)] = function
            setattr(owner, name, self.clock.wrap(stage, function))

    def __exit__(self, *_: object) -> None:
        for (owner, name), function in self.saved.items():
            setattr(owner, name, function)


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def to_markdown(results: dict[str, Any]) -> str:
    medians, extra = results["medians"], results["extra_over_encoding"]
    lines = [
        f"Model `{results['model']}` on the CPU ({results['machine']['cpu']}, torch with "
        f"{results['machine']['torch_threads']} threads); inputs: {results['inputs']}, target "
        f"{results['image_shape'][1]}x{results['image_shape'][0]} px; medians of "
        f"{results['repeats']} interleaved repeats.",
        "",
        "| Step | wall clock | CPU time |",
        "| --- | --- | --- |",
    ]
    for name, lap in medians.items():
        lines.append(f"| {name} | {lap['wall']:.3f} s | {lap['cpu']:.3f} s |")
    lines += ["", "| Extra cost of part-aware, as a share of one encoding | wall | CPU |"]
    lines.append("| --- | --- | --- |")
    rows = (
        ("segment part-aware", "one object, default ranges (1-5 parts, 0-1 background: 10 pairs)"),
        ("segment part-aware 1-2 parts", "one object, 1-2 parts, no background parts (2 pairs)"),
        ("instances part-aware", f"every instance (at most {results['max_instances']} candidates)"),
    )
    for key, label in rows:
        lines.append(f"| {label} | {_pct(extra[key]['wall'])} | {_pct(extra[key]['cpu'])} |")
    check = results["check_100_objects_over_encoding"]
    lines.append(
        f"| every instance: reference check of 100 accepted objects | {_pct(check['wall'])} | "
        f"{_pct(check['cpu'])} |"
    )
    learn = results["learn_over_encoding"]
    lines.append(
        f"| learning, once per concept (encoded reference) | {_pct(learn['wall'])} | "
        f"{_pct(learn['cpu'])} |"
    )
    lines += ["", "| Part-aware stage (one object, per run) | wall | CPU |", "| --- | --- | --- |"]
    for name, lap in results["part_aware_stages"].items():
        lines.append(f"| {name} | {lap['wall']:.3f} s | {lap['cpu']:.3f} s |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Tiny model, generated images.")
    parser.add_argument("--repeats", type=int, default=None, help="Default 3 (quick: 1).")
    parser.add_argument("--max-instances", type=int, default=100)
    parser.add_argument("--out", type=Path, default=None, help="Folder for the results.")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    results = measure(quick=args.quick, repeats=repeats, max_instances=args.max_instances)
    markdown = to_markdown(results)
    print(markdown)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "part_aware.json").write_text(json.dumps(results, indent=2))
        (args.out / "part_aware.md").write_text(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
