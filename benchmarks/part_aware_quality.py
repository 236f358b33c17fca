"""Part-aware prompting (P²SAM) against PerSAM on the stand-in SAMs: what it changes.

Usage (from the repository root, ``src`` importable)::

    python benchmarks/part_aware_quality.py --out benchmarks/results

No pretrained SAM is available where this project is built and tested, so quality is
measured with the stand-ins of ``tests/synthetic.py`` (colour-and-texture features, a
decoder that grows regions from the points): they show what the prompts and the
retrieval do, not what SAM's decoder does with them. Three measurements, PerSAM and
part-aware on the same inputs:

* two-part objects (a striped rim around a flat core), one object per image: IoU;
* one-part objects among distractors (the end-to-end scenes): IoU, to see whether
  part-aware prompting harms objects without parts;
* every instance in scenes of 4 to 12 copies of varied sizes among distractors:
  F1 at IoU 0.5, to see whether the distance check drops true objects.

(The colour-and-texture stand-in cannot tell real grey nuclei from their
background, so real images would measure the stand-in, not the prompts.)

Writes ``part_aware_quality.json`` and ``part_aware_quality.md``.
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

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the stand-ins live in tests/synthetic.py

import numpy as np  # noqa: E402
from tests.synthetic import (  # noqa: E402
    DISTRACTORS,
    make_scene,
    paint_two_part_object,
    parts_sam,
    plain_background,
)

from napari_persam.core import PerSAM, PerSAMConfig  # noqa: E402
from napari_persam.core.evaluation.metrics import compare_instances, iou, matched_f1  # noqa: E402

MODES = ("persam", "part-aware")
UNGUIDED = PerSAMConfig(target_guided_attention=False, semantic_prompt=False)


def _engines(sam) -> dict[str, PerSAM]:
    first = PerSAM(sam, config=dataclasses.replace(UNGUIDED, prompt_mode=MODES[0]), device="cpu")
    second = PerSAM(
        sam,
        config=dataclasses.replace(UNGUIDED, prompt_mode=MODES[1]),
        device="cpu",
        cache=first.cache,
    )
    return {MODES[0]: first, MODES[1]: second}


def two_part_objects(engines: dict[str, PerSAM], scenes: int) -> dict[str, list[float]]:
    scores: dict[str, list[float]] = {mode: [] for mode in MODES}
    for seed in range(scenes):
        rng = np.random.default_rng(seed)
        reference = plain_background((256, 256), seed)
        mask, _ = paint_two_part_object(reference, (110, 110), rng.uniform(32, 44), seed=seed)
        target = plain_background((256, 256), seed + 100)
        centre = (rng.uniform(60, 190), rng.uniform(60, 190))
        truth, _ = paint_two_part_object(target, centre, rng.uniform(30, 44), seed=seed + 7)
        for mode, engine in engines.items():
            scores[mode].append(
                iou(engine.segment(target, engine.learn(reference, mask)).mask, truth)
            )
    return scores


def one_part_objects(engines: dict[str, PerSAM], scenes: int) -> dict[str, list[float]]:
    scores: dict[str, list[float]] = {mode: [] for mode in MODES}
    reference, labels = make_scene(seed=0)
    for mode, engine in engines.items():
        concept = engine.learn(reference, labels > 0)
        for seed in range(scenes):
            image, truth = make_scene(seed=1000 + seed)
            scores[mode].append(iou(engine.segment(image, concept).mask, truth > 0))
    return scores


def every_instance(engines: dict[str, PerSAM], scenes: int) -> dict[str, list[float]]:
    scores: dict[str, list[float]] = {mode: [] for mode in MODES}
    reference, labels = make_scene(seed=0)
    for mode, engine in engines.items():
        concept = engine.learn(reference, labels > 0)
        for seed in range(scenes):
            copies = 4 + seed % 9
            image, truth = make_scene(
                500 + seed,
                shape=(512, 512),
                n_targets=copies,
                radius=(12.0, 28.0),
                distractors=DISTRACTORS,
                gap=8,
            )
            found = engine.segment_instances(image, concept)
            scores[mode].append(matched_f1(compare_instances(found.labels, truth).iou))
    return scores


def summary(scores: dict[str, list[float]]) -> dict[str, Any]:
    return {
        mode: {
            "mean": statistics.fmean(values) if values else None,
            "median": statistics.median(values) if values else None,
            "n": len(values),
        }
        for mode, values in scores.items()
    }


def to_markdown(results: dict[str, Any]) -> str:
    lines = [
        "| Stand-in measurement | n | PerSAM | part-aware |",
        "| --- | --- | --- | --- |",
    ]
    for name, label in (
        ("two_part", "two-part objects, IoU (mean)"),
        ("one_part", "one-part objects among distractors, IoU (mean)"),
        ("instances", "every instance, 4-12 copies of varied size, F1 at IoU 0.5 (mean)"),
    ):
        entry = results[name]
        persam, parts = entry["persam"], entry["part-aware"]
        lines.append(f"| {label} | {persam['n']} | {persam['mean']:.3f} | {parts['mean']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=12)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    engines = _engines(parts_sam(img_size=1024))
    raw = {
        "two_part": two_part_objects(engines, args.scenes),
        "one_part": one_part_objects(engines, args.scenes),
        "instances": every_instance(engines, args.scenes),
    }
    results = {name: summary(values) for name, values in raw.items()}
    results["raw"] = raw
    markdown = to_markdown(results)
    print(markdown)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "part_aware_quality.json").write_text(json.dumps(results, indent=2))
        (args.out / "part_aware_quality.md").write_text(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
