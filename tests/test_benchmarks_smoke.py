"""The benchmark suite in quick mode, so its scripts cannot rot (no timings asserted)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def run_benchmarks(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module("run_benchmarks")
    yield module
    for name in ("run_benchmarks", "original_persam", "inputs", "timing"):
        sys.modules.pop(name, None)


@pytest.mark.slow
def test_quick_benchmark_writes_every_figure(run_benchmarks, tmp_path):
    assert run_benchmarks.main(["--quick", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    ratios = results["ratios"]["cpu"]
    for name in (
        "our_image_total_over_bare_encoder",
        "official_persam_over_ours_per_image",
        "official_persam_f_fitting_over_ours",
        "cache_hit_speedup",
        "our_slice_total_over_bare_encoder",
    ):
        assert ratios[name] > 0
    stages = results["ours"]["targets"][0]["stages"]
    assert set(stages) >= {"image encoding", "first decoding", "refinement", "post-processing"}
    # Every official PerSAM-F step called SAM's decoder (quick mode runs 3).
    assert results["official"]["persam_f"]["steps_run"] == 3
    assert results["ours"]["cache"]["hits"] > 0
    markdown = (tmp_path / "results.md").read_text()
    assert markdown.index("### Ratios") < markdown.index("### Time per stage")


def test_instrumentation_restores_the_engine(run_benchmarks, tiny_sam):
    from napari_persam.core import PerSAM
    from napari_persam.core.engine import persam as persam_module

    engine = PerSAM(tiny_sam, device="cpu")
    before = persam_module.encode_image
    clock = run_benchmarks.StageClock(engine.device)
    with run_benchmarks.instrumented(engine, clock):
        assert persam_module.encode_image is not before
    assert persam_module.encode_image is before
    assert "_decode" not in vars(engine)


@pytest.mark.slow
def test_the_bound_benchmarks_run(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    try:
        engine_bounds = importlib.import_module("engine_bounds")
        encoder_bounds = importlib.import_module("encoder_bounds")
        assert engine_bounds.main(["--quick", "--out", str(tmp_path)]) == 0
        assert (
            encoder_bounds.main(
                ["--models", "tiny", "--rounds", "1", "--skip", "compiled", "--out", str(tmp_path)]
            )
            == 0
        )
    finally:
        sys.modules.pop("engine_bounds", None)
        sys.modules.pop("encoder_bounds", None)
    engine = json.loads((tmp_path / "engine_bounds.json").read_text())
    assert engine["finetune"]["cpu"] > 0
    assert engine["instances"]["decoder_gflop_per_prompt"]["thin_cascade"] > 0
    instances = engine["instances"]["by_candidates"]
    assert all(row["over_sam_bound"] < row["over_bound"] for row in instances.values())
    encoder = json.loads((tmp_path / "encoder_bounds.json").read_text())
    variants = encoder["results"][0]["variants"]
    assert {"eager", "eager+heap", "sdpa"} <= set(variants)
    assert all(v["max_abs_diff"] <= 1e-4 for v in variants.values())


def test_quick_part_aware_cost_writes_every_figure(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module("part_aware_cost")
    try:
        assert module.main(["--quick", "--out", str(tmp_path), "--max-instances", "5"]) == 0
    finally:
        for name in ("part_aware_cost", "inputs", "timing"):
            sys.modules.pop(name, None)
    results = json.loads((tmp_path / "part_aware.json").read_text())
    assert set(results["extra_over_encoding"]) == {
        "segment part-aware",
        "segment part-aware 1-2 parts",
        "instances part-aware",
    }
    assert results["found"]["pairs_tried"] == 10
    assert {"cascades (decoder)", "distances (EMD)"} <= set(results["part_aware_stages"])
    assert "Extra cost of part-aware" in (tmp_path / "part_aware.md").read_text()


def test_the_decoder_call_benchmark_runs(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    try:
        decoder_call = importlib.import_module("decoder_call")
        threads = str(torch.get_num_threads())
        assert decoder_call.main(["--threads", threads, "--repeats", "1", "--prompts", "5"]) == 0
    finally:
        sys.modules.pop("decoder_call", None)
    printed = capsys.readouterr().out.splitlines()
    differences = {line.split(":")[0]: float(line.rsplit("within", 1)[1]) for line in printed}
    assert set(differences) == {"segment_anything", "lean", "lean-factored"}
    assert max(differences.values()) <= 2e-6  # the lean decoder answers as segment_anything's
