"""The image encoder exported to ONNX and run by OpenVINO / ONNX Runtime."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from napari_persam.core import PerSAMConfig
from napari_persam.core.engine.embeddings import EmbeddingCache, encode_image
from napari_persam.core.engine.persam import PerSAM
from napari_persam.core.models import encoder_export, encoder_runtime, export_child
from napari_persam.core.models.encoder_export import (
    EXPORT_FORMAT,
    FAILURE_SUFFIX,
    MODEL_FILE,
    RECORD_FILE,
    iter_exported_encoder,
    weights_id,
)
from napari_persam.core.models.encoder_runtime import RuntimeEncoder, iter_image_encoder
from napari_persam.core.progress import run

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

CPU = torch.device("cpu")


def _steps(work):
    """(messages yielded, result) of a progress generator."""
    messages = []
    try:
        while True:
            messages.append(next(work).message)
    except StopIteration as stop:
        return messages, stop.value


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_sam):
    """The tiny SAM's encoder (256 px) exported once for this module: (root, path)."""
    root = tmp_path_factory.mktemp("cache")
    encoder = tiny_sam.image_encoder
    path = run(
        iter_exported_encoder(
            encoder,
            model_name="tiny",
            img_size=256,
            weights=weights_id(encoder, None),
            root=root,
        )
    )
    return root, path


def _pixels(size=256, seed=3):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, size, size, generator=generator)


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_runtime_embedding_matches_torch(exported, tiny_sam, backend):
    pytest.importorskip(backend)
    _, path = exported
    runtime = RuntimeEncoder(backend, path, threads=2)
    pixels = _pixels()
    with torch.inference_mode():
        expected = tiny_sam.image_encoder(pixels)
    got = runtime(pixels)
    assert got.shape == expected.shape == (1, 256, 16, 16)
    assert float((got - expected).abs().max()) <= 1e-4


def test_export_is_kept_under_the_weights_hash_with_checksums(exported, tiny_sam):
    root, path = exported
    encoder = tiny_sam.image_encoder
    assert path.parent.parent.name == weights_id(encoder, None)
    assert path.parent.parent.parent == root / "encoders"
    record = json.loads((path.parent / RECORD_FILE).read_text())
    assert record["format"] == encoder_export.EXPORT_FORMAT
    assert MODEL_FILE in record["files"]
    assert all(len(digest) == 64 for digest in record["files"].values())
    assert not list((root / "encoders" / ".incoming").iterdir())  # nothing left half-made
    # A second request uses the kept export: no export step.
    messages, again = _steps(
        iter_exported_encoder(
            encoder, model_name="tiny", img_size=256, weights=path.parent.parent.name, root=root
        )
    )
    assert again == path and messages == []


def test_weights_id_is_the_checkpoint_hash_when_known(tiny_sam):
    assert weights_id(tiny_sam.image_encoder, "AB" * 32) == "ab" * 32
    other = weights_id(tiny_sam.image_encoder, None)
    assert other.startswith("state-") and len(other) == 6 + 64


def test_corrupt_or_stale_export_is_made_again(tmp_path, tiny_sam, monkeypatch):
    # The cache's bookkeeping, with a stand-in for the (slow) exporter.
    exports = []

    def fake_export(encoder, *, path, **kwargs):
        exports.append(path)
        path.write_bytes(b"graph %d" % len(exports) + bytes(100))
        (path.parent / (path.name + ".data")).write_bytes(b"weights" * 10)
        return {}
        yield  # a progress generator, as the real one

    monkeypatch.setattr(encoder_export, "iter_export", fake_export)
    encoder = tiny_sam.image_encoder
    kwargs = dict(model_name="tiny", img_size=256, weights="w" * 8, root=tmp_path)
    path = run(iter_exported_encoder(encoder, **kwargs))
    original = path.read_bytes()
    # Corrupt: same size, other bytes.
    damaged = b"XXXX" + original[4:]
    path.write_bytes(damaged)
    messages, again = _steps(iter_exported_encoder(encoder, **kwargs))
    assert any("exporting" in message for message in messages)
    assert again.read_bytes() != damaged
    # Stale: written by another format version.
    record_path = again.parent / RECORD_FILE
    record = json.loads(record_path.read_text())
    record["format"] = -1
    record_path.write_text(json.dumps(record))
    messages, _ = _steps(iter_exported_encoder(encoder, **kwargs))
    assert any("exporting" in message for message in messages)
    assert json.loads(record_path.read_text())["format"] == encoder_export.EXPORT_FORMAT
    # A weights file gone missing is found too.
    (again.parent / (again.name + ".data")).unlink()
    messages, _ = _steps(iter_exported_encoder(encoder, **kwargs))
    assert any("exporting" in message for message in messages)
    assert len(exports) == 4
    # And a valid one is used as it is.
    messages, _ = _steps(iter_exported_encoder(encoder, **kwargs))
    assert messages == [] and len(exports) == 4


@pytest.mark.skipif(EXPORT_FORMAT < 2, reason="no earlier format")
def test_exports_of_earlier_formats_are_removed_when_a_new_one_is_kept(
    tmp_path, tiny_sam, monkeypatch
):
    def fake_export(encoder, *, path, **kwargs):
        path.write_bytes(b"graph" + bytes(100))
        return {}
        yield  # a progress generator, as the real one

    monkeypatch.setattr(encoder_export, "iter_export", fake_export)
    weights = "w" * 8
    kept = tmp_path / "encoders" / weights
    ours = kept / "tiny-256px-v1"
    ours.mkdir(parents=True)
    (ours / RECORD_FILE).write_text(json.dumps({"format": 1, "model": "tiny", "files": {}}))
    (ours / MODEL_FILE).write_bytes(b"old graph")
    old_failure = kept / f"tiny-256px-v1{FAILURE_SUFFIX}"
    old_failure.write_text(json.dumps({"reason": "x", "time": 0, "software": {"format": "1"}}))
    other_model = kept / "vit_b-256px-v1"  # another model's export: not looked at
    other_model.mkdir()
    (other_model / RECORD_FILE).write_text(json.dumps({"format": 1, "model": "vit_b"}))
    path = run(
        iter_exported_encoder(
            tiny_sam.image_encoder, model_name="tiny", img_size=256, weights=weights, root=tmp_path
        )
    )
    assert path.parent.name == f"tiny-256px-v{EXPORT_FORMAT}"
    assert not ours.exists() and not old_failure.exists()
    assert (other_model / RECORD_FILE).exists()
    assert not list((tmp_path / "encoders" / ".incoming").iterdir())  # moved aside, then gone


@pytest.mark.skipif(EXPORT_FORMAT < 2, reason="no earlier format")
@pytest.mark.parametrize("record", [None, {"format": 1, "model": "vit_b"}])
def test_a_folder_we_did_not_write_is_kept_though_named_like_an_old_export(
    tmp_path, tiny_sam, monkeypatch, record
):
    def fake_export(encoder, *, path, **kwargs):
        path.write_bytes(b"graph" + bytes(100))
        return {}
        yield

    monkeypatch.setattr(encoder_export, "iter_export", fake_export)
    weights = "w" * 8
    theirs = tmp_path / "encoders" / weights / "tiny-256px-v1"
    theirs.mkdir(parents=True)
    (theirs / "notes.txt").write_text("mine")
    named_like_a_failure = theirs.with_name(theirs.name + FAILURE_SUFFIX)
    named_like_a_failure.write_text("my notes too")  # not a failure record of ours
    if record is not None:  # a record, but for another model: not this export's to remove
        (theirs / RECORD_FILE).write_text(json.dumps(record))
    run(
        iter_exported_encoder(
            tiny_sam.image_encoder, model_name="tiny", img_size=256, weights=weights, root=tmp_path
        )
    )
    assert (theirs / "notes.txt").read_text() == "mine"
    assert named_like_a_failure.read_text() == "my notes too"


def _falls_back_once(sam, root, *, backend, match):
    """The engine's encoder is PyTorch's own, after one warning matching ``match``."""
    with pytest.warns(RuntimeWarning, match=match) as caught:
        encoder = run(
            iter_image_encoder(
                sam,
                backend=backend,
                device=CPU,
                model_name="tiny",
                checkpoint_sha256=None,
                root=root,
            )
        )
    assert encoder is None  # PyTorch's own forward
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1


def _falls_back_once_leaving_a_failure_record(sam, root, *, backend, match):
    """One warning, PyTorch, and the cache holds only the record of the failed export."""
    _falls_back_once(sam, root, backend=backend, match=match)
    left = [p for p in (root / "encoders").rglob("*") if p.is_file()]
    assert [p.name for p in left] == [f"tiny-256px-v{EXPORT_FORMAT}{FAILURE_SUFFIX}"]
    return left[0]


def test_a_failed_export_leaves_its_record_and_is_not_tried_again_by_the_same_software(
    tmp_path, tiny_sam, monkeypatch
):
    pytest.importorskip("openvino")
    attempts = []

    def broken(*args, **kwargs):
        attempts.append(1)
        raise encoder_export.ExportError("no luck")

    def no_child(**kwargs):
        raise export_child.ChildUnusable("no child in this test")

    monkeypatch.setattr(export_child, "export_onnx", broken)
    monkeypatch.setattr(export_child, "child_command", no_child)
    record = _falls_back_once_leaving_a_failure_record(
        tiny_sam, tmp_path, backend="openvino", match="no luck .*no child in this test"
    )
    assert "no luck" in json.loads(record.read_text())["reason"]
    # The next run falls back at once, saying why and how to try again.
    _falls_back_once(
        tiny_sam, tmp_path, backend="openvino", match=r"not tried again .*delete .*failed\.json"
    )
    assert len(attempts) == 1
    # Other software (an update) tries again.
    real = encoder_export._software()
    monkeypatch.setattr(encoder_export, "_software", lambda: {**real, "torch": "9.9"})
    record = _falls_back_once_leaving_a_failure_record(
        tiny_sam, tmp_path, backend="openvino", match="no luck"
    )
    assert len(attempts) == 2
    # So does the same software a week later.
    kept = json.loads(record.read_text())
    record.write_text(json.dumps({**kept, "time": kept["time"] - encoder_export.FAILURE_KEPT_S}))
    _falls_back_once_leaving_a_failure_record(
        tiny_sam, tmp_path, backend="openvino", match="no luck"
    )
    assert len(attempts) == 3


@pytest.mark.parametrize(
    "cause", [OSError(28, "No space left on device"), MemoryError("No space left in memory")]
)
def test_an_export_failing_for_the_machines_state_is_not_recorded(
    tmp_path, tiny_sam, monkeypatch, cause
):
    pytest.importorskip("openvino")

    def full_disk(*args, **kwargs):
        try:
            raise cause
        except (OSError, MemoryError) as error:
            raise encoder_export.ExportFailed(f"{type(error).__name__}: {error}") from error

    def no_child(**kwargs):
        raise export_child.ChildUnusable("no child in this test")

    monkeypatch.setattr(export_child, "export_onnx", full_disk)
    monkeypatch.setattr(export_child, "child_command", no_child)
    _falls_back_once(tiny_sam, tmp_path, backend="openvino", match="No space left")
    assert [p for p in (tmp_path / "encoders").rglob("*") if p.is_file()] == []


def test_a_stuck_export_child_is_stopped_and_the_run_goes_on_with_torch(
    tmp_path, tiny_sam, monkeypatch
):
    pytest.importorskip("openvino")
    import subprocess
    import sys

    started, exported_here = [], []
    real_popen = subprocess.Popen

    def counting_popen(*args, **kwargs):
        started.append(real_popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(export_child.subprocess, "Popen", counting_popen)
    monkeypatch.setattr(
        export_child,
        "child_command",
        lambda **kwargs: [sys.executable, "-c", "import time; time.sleep(120)"],
    )
    monkeypatch.setattr(export_child, "export_onnx", lambda *a, **k: exported_here.append(1))
    monkeypatch.setattr(export_child, "EXPORT_TIMEOUT_S", 1.0)
    monkeypatch.setattr(export_child, "POLL_S", 0.05)
    # Both runtimes in "auto" (tests set none): the second must not wait for the same
    # export again.
    monkeypatch.setattr(encoder_runtime, "AUTO_ORDER", ("openvino", "onnxruntime"))
    monkeypatch.setattr(encoder_runtime, "runtime_installed", lambda name: True)
    _falls_back_once_leaving_a_failure_record(
        tiny_sam, tmp_path, backend="auto", match="still running after 1 s and was stopped"
    )
    assert len(started) == 1 and started[0].poll() is not None  # one child, killed
    assert exported_here == []  # not retried inside this process either
    # Nor in the next run: it would stall for as long again.
    _falls_back_once(tiny_sam, tmp_path, backend="auto", match="still running .*not tried again")
    assert len(started) == 1 and exported_here == []


def test_a_missing_runtime_falls_back_with_one_warning(tiny_sam, monkeypatch):
    monkeypatch.setattr(encoder_runtime, "runtime_installed", lambda name: False)
    with pytest.warns(RuntimeWarning, match="openvino is not installed") as caught:
        encoder = run(
            iter_image_encoder(
                tiny_sam, backend="openvino", device=CPU, model_name="t", checkpoint_sha256=None
            )
        )
    assert encoder is None and len(caught) == 1
    # "auto" with no runtime at all is PyTorch without a word.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert (
            run(
                iter_image_encoder(
                    tiny_sam, backend="auto", device=CPU, model_name="t", checkpoint_sha256=None
                )
            )
            is None
        )


def test_a_runtime_that_fails_to_load_falls_back(exported, tiny_sam, monkeypatch):
    pytest.importorskip("openvino")
    root, _ = exported

    def refuse(self, precision):
        raise RuntimeError("cannot compile")

    monkeypatch.setattr(RuntimeEncoder, "_load_openvino", refuse)
    with pytest.warns(RuntimeWarning, match="cannot compile"):
        encoder = run(
            iter_image_encoder(
                tiny_sam,
                backend="openvino",
                device=CPU,
                model_name="tiny",
                checkpoint_sha256=None,
                root=root,
            )
        )
    assert encoder is None


def test_auto_takes_openvino_on_the_cpu(exported, tiny_sam, monkeypatch):
    pytest.importorskip("openvino")
    root, _ = exported
    monkeypatch.setattr(encoder_runtime, "AUTO_ORDER", ("openvino", "onnxruntime"))
    kwargs = dict(device=CPU, model_name="tiny", checkpoint_sha256=None, root=root)
    encoder = run(iter_image_encoder(tiny_sam, backend="auto", **kwargs))
    assert isinstance(encoder, RuntimeEncoder) and encoder.backend == "openvino"
    # Precisions the runtimes do not run keep PyTorch (bfloat16 autocast).
    assert (
        run(iter_image_encoder(tiny_sam, backend="auto", encoder_dtype="bfloat16", **kwargs))
        is None
    )
    assert run(iter_image_encoder(tiny_sam, backend="torch", **kwargs)) is None


def test_engine_embeddings_match_and_are_cached_per_backend(exported, tiny_sam, rng):
    pytest.importorskip("openvino")
    _, path = exported
    runtime = RuntimeEncoder("openvino", path, threads=2)
    image = rng.integers(0, 255, (200, 180, 3), dtype=np.uint8)
    shared = EmbeddingCache(8)
    fast = PerSAM(tiny_sam, device="cpu", cache=shared, image_encoder=runtime)
    plain = PerSAM(tiny_sam, device="cpu", cache=shared)
    assert fast.encoder_backend == "openvino" and plain.encoder_backend == "torch"
    a = fast.embed(image).features
    b = plain.embed(image).features
    assert len(shared) == 2  # one entry per backend: neither serves the other's
    assert float((a - b).abs().max()) <= 1e-4
    direct = encode_image(tiny_sam, image, device=CPU, encoder=runtime)
    assert torch.equal(direct.features, a)


def test_a_runtime_that_fails_on_an_image_hands_over_to_torch(tiny_sam, rng):
    class Failing:
        backend = "openvino"
        calls = 0

        def __call__(self, pixels):
            Failing.calls += 1
            raise RuntimeError("out of memory in the plugin")

    image = rng.integers(0, 255, (120, 90, 3), dtype=np.uint8)
    engine = PerSAM(tiny_sam, device="cpu", image_encoder=Failing())
    with pytest.warns(RuntimeWarning, match="openvino failed on an image .*out of memory"):
        first = engine.embed(image)
    expected = PerSAM(tiny_sam, device="cpu").embed(image)
    assert torch.equal(first.features, expected.features)
    assert engine.encoder_backend == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning: the next images go to torch directly
        engine.embed(np.flipud(image).copy())
    assert Failing.calls == 1


def test_an_image_sam_cannot_take_is_not_blamed_on_the_runtime(tiny_sam):
    class Unused:
        backend = "openvino"

        def __call__(self, pixels):
            raise AssertionError("never reached")

    engine = PerSAM(tiny_sam, device="cpu", image_encoder=Unused())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "runs on PyTorch instead"
        with pytest.raises(ValueError):
            engine.embed(np.zeros((1, 5000, 3), np.uint8))  # too thin for SAM's input
    assert engine.encoder_backend == "openvino"


def test_mobile_sam_encoder_exports_too(tmp_path):
    pytest.importorskip("openvino")
    from napari_persam.core.models.mobile_sam import build_mobile_sam

    torch.manual_seed(0)
    sam = build_mobile_sam(
        img_size=256, embed_dims=(16, 32, 32, 48), depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 3)
    )
    encoder = sam.image_encoder
    path = run(
        iter_exported_encoder(encoder, model_name="vit_t", img_size=256, weights="m", root=tmp_path)
    )
    runtime = RuntimeEncoder("openvino", path, threads=2)
    pixels = _pixels()
    with torch.inference_mode():
        expected = encoder(pixels)
    assert float((runtime(pixels) - expected).abs().max()) <= 1e-4


def test_config_refuses_unknown_backends():
    with pytest.raises(ValueError, match="encoder_backend"):
        PerSAMConfig(encoder_backend="tensorrt")
    with pytest.raises(ValueError, match="float32 only"):
        PerSAMConfig(encoder_backend="onnxruntime", encoder_dtype="bfloat16")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit_b", "vit_t"])
def test_published_architectures_match_torch_on_openvino(tmp_path, name):
    pytest.importorskip("openvino")
    from napari_persam.core.models import build_model

    torch.manual_seed(0)
    sam = build_model(name)  # random weights: the same graph as the published ones
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fall-back here
        encoder = run(
            iter_image_encoder(
                sam,
                backend="openvino",
                device=CPU,
                model_name=name,
                checkpoint_sha256=None,
                root=tmp_path,
            )
        )
    pixels = _pixels(1024)
    with torch.inference_mode():
        expected = sam.image_encoder(pixels)
    assert float((encoder(pixels) - expected).abs().max()) <= 1e-4
