"""The ONNX export runs in a child process, and here when no child can do it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from napari_persam.core.models import export_child
from napari_persam.core.models.encoder_export import (
    RECORD_FILE,
    ExportError,
    export_folder,
    failure_record,
    iter_exported_encoder,
    weights_id,
)
from napari_persam.core.models.export_child import ChildUnusable, rebuild_encoder
from napari_persam.core.progress import run

pytest.importorskip("onnxscript")


def _export(encoder, root, *, model_name="tiny", weights="w"):
    """The export generator of ``encoder`` (256 px) into the cache ``root``."""
    return iter_exported_encoder(
        encoder, model_name=model_name, img_size=256, weights=weights, root=root
    )


# A fresh interpreter, as napari's: export the tiny model's encoder, then say whether
# the exporter's modules were imported here, how it was exported and how far the
# export is from PyTorch's embedding.
_EXPORT_IN_A_FRESH_PROCESS = """
import json, sys
from napari_persam.core.models import build_tiny_sam
from napari_persam.core.models.encoder_export import iter_exported_encoder, weights_id
from napari_persam.core.models.encoder_runtime import RuntimeEncoder, max_difference
from napari_persam.core.progress import run

encoder = build_tiny_sam(seed=0, img_size=256).image_encoder
before = sorted({"onnx", "onnxscript", "ml_dtypes"} & set(sys.modules))
path = run(iter_exported_encoder(encoder, model_name="tiny", img_size=256,
                                 weights=weights_id(encoder, None), root=sys.argv[1]))
after = sorted({"onnx", "onnxscript", "ml_dtypes"} & set(sys.modules))
difference = max_difference(RuntimeEncoder("onnxruntime", path, threads=2), encoder, 256)
record = json.loads((path.parent / "record.json").read_text())
print(json.dumps({"before": before, "after": after, "record": record, "difference": difference}))
"""


class _RecordingPopen(subprocess.Popen):
    """subprocess.Popen that keeps every process it started."""

    started: list[subprocess.Popen] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _RecordingPopen.started.append(self)


@pytest.fixture
def popens(monkeypatch):
    """The child processes the export starts in this test."""
    monkeypatch.setattr(_RecordingPopen, "started", [])
    monkeypatch.setattr(export_child.subprocess, "Popen", _RecordingPopen)
    return _RecordingPopen.started


@pytest.fixture
def exports_here(monkeypatch):
    """Calls of the in-process export (the real one still runs)."""
    calls = []
    real = export_child.export_onnx

    def spy(encoder, *, img_size, path):
        calls.append(path)
        real(encoder, img_size=img_size, path=path)

    monkeypatch.setattr(export_child, "export_onnx", spy)
    return calls


def _child_runs(monkeypatch, code):
    """The child's command becomes ``python -c code``."""
    monkeypatch.setattr(
        export_child, "child_command", lambda **kwargs: [sys.executable, "-c", code]
    )


def _record(path):
    return json.loads((path.parent / RECORD_FILE).read_text())


def _fake_export(calls):
    def fake(encoder, *, img_size, path):
        calls.append(path)
        path.write_bytes(b"graph")

    return fake


@pytest.mark.slow
def test_the_tiny_encoder_is_exported_in_a_child_and_matches_torch(tmp_path):
    pytest.importorskip("onnxruntime")
    done = subprocess.run(
        [sys.executable, "-c", _EXPORT_IN_A_FRESH_PROCESS, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NAPARI_PERSAM_CACHE": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["before"] == []
    assert found["after"] == []  # no onnx, no ml_dtypes: the GIL stayed free
    assert found["record"]["exported_in"] == "child process"
    assert found["difference"] <= 1e-4
    assert not list((tmp_path / "encoders" / ".incoming").iterdir())


@pytest.mark.slow
def test_a_model_the_child_cannot_rebuild_is_exported_here(
    tmp_path, make_tiny_sam, popens, exports_here
):
    pytest.importorskip("onnxruntime")
    from napari_persam.core.models.encoder_runtime import RuntimeEncoder, max_difference

    encoder = make_tiny_sam().image_encoder
    # Not in the registry's tiny model: the child's strict load refuses it.
    encoder.register_buffer("extra", torch.ones(3))
    path = run(_export(encoder, tmp_path, weights=weights_id(encoder, None)))
    assert len(popens) == 1 and popens[0].returncode == 2
    assert len(exports_here) == 1
    record = _record(path)
    assert record["exported_in"] == "calling process"
    assert "extra" in record["child_unused"]
    difference = max_difference(RuntimeEncoder("onnxruntime", path, threads=2), encoder, 256)
    assert difference <= 1e-4


def test_a_model_outside_the_registry_starts_no_child(tmp_path, tiny_sam, popens, monkeypatch):
    calls = []
    monkeypatch.setattr(export_child, "export_onnx", _fake_export(calls))
    path = run(_export(tiny_sam.image_encoder, tmp_path, model_name="my_own_sam"))
    assert popens == [] and len(calls) == 1
    assert "not a registry model" in _record(path)["child_unused"]


def test_an_encoder_of_another_size_starts_no_child(tmp_path, popens, monkeypatch):
    from napari_persam.core.models import build_tiny_sam

    calls = []
    monkeypatch.setattr(export_child, "export_onnx", _fake_export(calls))
    encoder = build_tiny_sam(img_size=256, encoder_dim=32).image_encoder
    path = run(_export(encoder, tmp_path))
    assert popens == [] and len(calls) == 1
    assert "width 32" in _record(path)["child_unused"]


def test_closing_the_export_kills_the_child_and_leaves_nothing(
    tmp_path, tiny_sam, popens, monkeypatch
):
    calls = []
    monkeypatch.setattr(export_child, "export_onnx", _fake_export(calls))
    _child_runs(monkeypatch, "import time; time.sleep(120)")
    work = _export(tiny_sam.image_encoder, tmp_path)
    next(work)  # "exporting ...", before the child starts
    while not popens:
        next(work)
    next(work)  # the child runs
    assert popens[0].poll() is None
    work.close()  # the user cancelled
    assert popens[0].returncode == (-signal.SIGKILL if os.name == "posix" else 1)
    assert calls == []  # no export here after a cancel
    assert list((tmp_path / "encoders" / ".incoming").iterdir()) == []
    assert not export_folder(model_name="tiny", img_size=256, weights="w", root=tmp_path).exists()


def test_a_child_that_fails_gives_way_to_an_export_here(tmp_path, tiny_sam, popens, monkeypatch):
    calls = []
    monkeypatch.setattr(export_child, "export_onnx", _fake_export(calls))
    _child_runs(monkeypatch, "import sys; sys.stderr.write('no room\\n'); sys.exit(1)")
    path = run(_export(tiny_sam.image_encoder, tmp_path))
    assert popens[0].returncode == 1 and len(calls) == 1
    assert path.read_bytes() == b"graph"
    assert _record(path)["child_unused"] == "it failed with status 1: no room"
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, RECORD_FILE])


def test_failing_in_both_places_says_both_and_leaves_only_its_record(
    tmp_path, tiny_sam, monkeypatch
):
    def broken(encoder, *, img_size, path):
        path.write_bytes(b"half")
        raise ExportError("the exporter broke here")

    monkeypatch.setattr(export_child, "export_onnx", broken)
    _child_runs(monkeypatch, "import sys; sys.stderr.write('and there\\n'); sys.exit(3)")
    with pytest.raises(ExportError, match=r"broke here .*status 3: and there"):
        run(_export(tiny_sam.image_encoder, tmp_path))
    left = [p for p in (tmp_path / "encoders").rglob("*") if p.is_file()]
    folder = export_folder(model_name="tiny", img_size=256, weights="w", root=tmp_path)
    assert left == [failure_record(folder)]  # no half-written export under any name


def test_a_child_that_cannot_start_gives_way_too(tmp_path, tiny_sam, monkeypatch):
    calls = []
    monkeypatch.setattr(export_child, "export_onnx", _fake_export(calls))
    monkeypatch.setattr(
        export_child, "child_command", lambda **kwargs: [str(tmp_path / "no-such-python")]
    )
    path = run(_export(tiny_sam.image_encoder, tmp_path))
    assert len(calls) == 1 and "could not start" in _record(path)["child_unused"]


def test_a_frozen_application_starts_no_child(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    with pytest.raises(ChildUnusable, match="cannot start"):
        export_child.child_command(
            model_name="tiny", img_size=256, weights=tmp_path, modules=tmp_path, out=tmp_path
        )


def _saved(encoder, tmp_path):
    weights = tmp_path / "weights.pt"
    torch.save(encoder.state_dict(), weights)
    return weights, export_child.describe_modules(encoder)


def test_the_child_rebuilds_the_registry_encoder_with_the_weights(tmp_path, tiny_sam):
    weights, modules = _saved(tiny_sam.image_encoder, tmp_path)
    rebuilt = rebuild_encoder("tiny", 256, weights=weights, modules=modules)
    pixels = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(rebuilt(pixels), tiny_sam.image_encoder(pixels))
    assert type(rebuilt.blocks[0].attn) is type(tiny_sam.image_encoder.blocks[0].attn)


def test_the_child_refuses_an_encoder_it_would_not_rebuild_exactly(tmp_path, make_tiny_sam):
    from segment_anything.modeling.image_encoder import Attention

    encoder = make_tiny_sam().image_encoder
    encoder.blocks[0].attn.__class__ = Attention  # same weights, another class
    weights, modules = _saved(encoder, tmp_path)
    with pytest.raises(ValueError, match=r"differs at module 'blocks\.0\.attn'"):
        rebuild_encoder("tiny", 256, weights=weights, modules=modules)
    encoder = make_tiny_sam().image_encoder
    encoder.blocks[1].attn.num_heads = 4  # not in the state dict
    weights, modules = _saved(encoder, tmp_path)
    with pytest.raises(ValueError, match="num_heads"):
        rebuild_encoder("tiny", 256, weights=weights, modules=modules)
    encoder = make_tiny_sam().image_encoder.double()
    weights, modules = _saved(encoder, tmp_path)
    with pytest.raises(ValueError, match="another dtype"):
        rebuild_encoder("tiny", 256, weights=weights, modules=modules)


def test_the_child_says_why_in_one_line(tmp_path, capsys):
    status = export_child.main(
        [
            "--model=tiny",
            "--img-size=256",
            f"--weights={tmp_path / 'absent.pt'}",
            f"--modules={tmp_path / 'absent.json'}",
            f"--out={tmp_path / 'encoder.onnx'}",
        ]
    )
    assert status == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cannot rebuild the encoder")
    assert not (tmp_path / "encoder.onnx").exists()
