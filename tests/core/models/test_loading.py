"""The model registry, building and safe, strict checkpoint loading."""

from __future__ import annotations

import dataclasses
import io
import threading

import pytest
import torch

from napari_persam.core.models import (
    DEFAULT_MODEL,
    MODEL_REGISTRY,
    TINY_MODEL,
    build_model,
    get_spec,
    iter_load_model,
    load_model,
    model_names,
)
from napari_persam.core.models.builders import BUILDERS
from napari_persam.core.models.checkpoints import MIRROR_ENV, DownloadError
from napari_persam.core.models.state_dicts import (
    CheckpointError,
    read_state_dict,
    skip_random_init,
)
from napari_persam.core.paths import CACHE_ENV
from napari_persam.core.progress import run
from tests._checkpoints import checkpoint_bytes, stand_in, weights_equal
from tests._http_server import LoopbackServer
from tests._mobile_sam_reference import official_encoder_state


@pytest.fixture(scope="module")
def registry_tiny_sam():
    """The registry's "tiny" model as build_model makes it (1024 input), for key layouts."""
    from napari_persam.core.models import build_tiny_sam

    return build_tiny_sam()


@pytest.fixture(autouse=True)
def _default_locations(monkeypatch):
    # tests/conftest.py already keeps every test on 127.0.0.1; these tests also
    # check where files go by default, so the cache and mirror variables are unset.
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.delenv(MIRROR_ENV, raising=False)


@pytest.fixture
def served_vit_b(monkeypatch):
    """Registry entry vit_b replaced by a small stand-in served on 127.0.0.1."""
    with LoopbackServer() as server:
        model = stand_in("vit_b")
        url = server.add(model.spec.filename, model.body)
        model.spec = dataclasses.replace(model.spec, url=url)
        monkeypatch.setitem(MODEL_REGISTRY, "vit_b", model.spec)
        yield server, model


def _save(tmp_path, name, state):
    path = tmp_path / name
    path.write_bytes(checkpoint_bytes(state))
    return path


# ------------------------------------------------------------------------- registry
def test_registry_has_the_published_models_and_the_tiny_one():
    assert DEFAULT_MODEL == "vit_b"
    assert {"vit_b", "vit_l", "vit_h", "vit_t", TINY_MODEL} <= set(model_names())
    assert get_spec("vit_t").filename == "mobile_sam.pt"
    assert not get_spec(TINY_MODEL).downloadable
    with pytest.raises(ValueError, match="choose one of vit_b"):
        get_spec("vit_x")


def test_tiny_model_needs_no_file_or_network():
    sam = run(iter_load_model(TINY_MODEL, device="cpu"))
    assert not sam.training
    assert sam.image_encoder.img_size == 1024
    assert next(sam.parameters()).device.type == "cpu"


# -------------------------------------------------------------------------- loading
def test_iter_load_model_downloads_with_progress_then_uses_the_cache(served_vit_b, tmp_path):
    server, model = served_vit_b
    steps = []
    sam = run(iter_load_model("vit_b", device="cpu", cache_dir=tmp_path), on_progress=steps.append)

    assert weights_equal(sam, model.sam)
    assert not sam.training
    downloads = [s for s in steps if s.message.startswith("downloading")]
    assert downloads[-1].done == downloads[-1].total == model.spec.size
    assert steps[-1].message == "loaded vit_b on cpu"

    server.stop()
    again = run(iter_load_model("vit_b", device="cpu", cache_dir=tmp_path))
    assert weights_equal(again, model.sam)


def test_load_model_draws_a_terminal_progress_bar(served_vit_b, tmp_path):
    stream = io.StringIO()
    load_model("vit_b", device="cpu", cache_dir=tmp_path, progress=stream)
    text = stream.getvalue()
    assert "downloading sam_vit_b_01ec64.pth" in text and "100%" in text
    assert "loaded vit_b on cpu" in text


def test_offline_error_reaches_the_caller(served_vit_b, tmp_path):
    server, model = served_vit_b
    server.stop()
    with pytest.raises(DownloadError, match=model.spec.filename):
        load_model("vit_b", device="cpu", cache_dir=tmp_path)


def test_explicit_checkpoint_is_used_as_is_without_download(served_vit_b, tmp_path):
    server, _ = served_vit_b
    other = stand_in("vit_b", seed=9)  # same architecture, other weights, other hash
    path = _save(tmp_path, "my-finetuned-vit_b.pth", other.sam.state_dict())
    sam = run(iter_load_model("vit_b", checkpoint=path, device="cpu", cache_dir=tmp_path))
    assert weights_equal(sam, other.sam)
    assert server.requests == []


def test_training_checkpoint_with_a_model_entry_loads(tmp_path, registry_tiny_sam):
    path = _save(tmp_path, "train.pth", {"model": registry_tiny_sam.state_dict()})
    assert weights_equal(build_model(TINY_MODEL, checkpoint=path), registry_tiny_sam)


# ------------------------------------------------------------------- wrong checkpoints
def test_checkpoint_of_another_model_names_both(monkeypatch, tmp_path):
    small_b = stand_in("vit_b", encoder_dim=48, encoder_depth=2)
    small_h = stand_in("vit_h", encoder_dim=64, encoder_depth=3)
    monkeypatch.setitem(MODEL_REGISTRY, "vit_b", small_b.spec)
    monkeypatch.setitem(MODEL_REGISTRY, "vit_h", small_h.spec)
    path = _save(tmp_path, "sam_vit_h_4b8939.pth", small_h.sam.state_dict())
    with pytest.raises(CheckpointError) as info:
        build_model("vit_b", checkpoint=path)
    message = str(info.value)
    assert "weights of model 'vit_h'" in message and "not of 'vit_b'" in message
    assert "Choose model 'vit_h'" in message


def test_real_vit_h_shapes_are_recognised_before_building_vit_b(tmp_path, monkeypatch):
    # Only the tensors that identify the encoder; the error must come before building.
    state = {"image_encoder.patch_embed.proj.weight": torch.zeros(1280, 3, 16, 16)}
    state.update({f"image_encoder.blocks.{i}.norm1.weight": torch.zeros(1) for i in range(32)})
    path = _save(tmp_path, "vit_h.pth", state)

    def must_not_build():
        raise AssertionError("vit_b was built before the checkpoint was checked")

    monkeypatch.setitem(BUILDERS, "must-not-build", must_not_build)
    spec = dataclasses.replace(MODEL_REGISTRY["vit_b"], architecture="must-not-build")
    monkeypatch.setitem(MODEL_REGISTRY, "vit_b", spec)
    with pytest.raises(CheckpointError, match=r"model 'vit_h' \(ViT, width 1280, 32 blocks\)"):
        build_model("vit_b", checkpoint=path)


def test_mobile_sam_checkpoint_for_vit_b_is_named(tmp_path):
    state = {"image_encoder." + k: v for k, v in official_encoder_state().items()}
    path = _save(tmp_path, "mobile_sam.pt", state)
    with pytest.raises(CheckpointError, match="weights of model 'vit_t'"):
        build_model("vit_b", checkpoint=path)


def test_file_that_is_not_a_sam_checkpoint(tmp_path):
    path = _save(tmp_path, "resnet.pth", {"fc.weight": torch.zeros(2, 2)})
    with pytest.raises(CheckpointError, match="not a SAM checkpoint"):
        build_model(TINY_MODEL, checkpoint=path)


def test_missing_keys_are_listed(tmp_path, registry_tiny_sam):
    state = dict(registry_tiny_sam.state_dict())
    del state["mask_decoder.iou_token.weight"]
    path = _save(tmp_path, "edited.pth", state)
    with pytest.raises(CheckpointError, match=r"1 missing \(e\.g\. mask_decoder\.iou_token"):
        build_model(TINY_MODEL, checkpoint=path)


def test_truncated_checkpoint_file(tmp_path, registry_tiny_sam):
    body = checkpoint_bytes(registry_tiny_sam.state_dict())
    path = tmp_path / "cut.pth"
    path.write_bytes(body[: len(body) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        build_model(TINY_MODEL, checkpoint=path)


class _LeavesAMark:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_checkpoint_carrying_a_pickled_object_is_refused_without_running_it(
    tmp_path, registry_tiny_sam
):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save({"model": registry_tiny_sam.state_dict(), "extra": _LeavesAMark(marker)}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        build_model(TINY_MODEL, checkpoint=path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        read_state_dict(path)
    assert not marker.exists()


# --------------------------------------------------------------- skipping random init
def test_skip_random_init_is_limited_to_its_thread_and_block():
    def seeded_linear():
        torch.manual_seed(0)
        return torch.nn.Linear(64, 64).weight.detach().clone()

    reference = seeded_linear()
    from_other_thread = []
    with skip_random_init():
        worker = threading.Thread(target=lambda: from_other_thread.append(seeded_linear()))
        worker.start()
        worker.join()
        skipped = torch.nn.Linear(64, 64)
        torch.nn.init.constant_(skipped.bias, 3.0)  # constant initialisers still work
    assert torch.equal(from_other_thread[0], reference)
    assert torch.equal(seeded_linear(), reference)
    assert torch.all(skipped.bias == 3.0)
