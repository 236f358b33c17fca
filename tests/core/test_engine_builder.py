"""The one place that assembles model, caches and engine."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from napari_persam.core.config import PerSAMConfig
from napari_persam.core.engine_builder import EngineSpec, build_engine, iter_load
from napari_persam.core.io.disk_cache import DiskEmbeddingCache
from napari_persam.core.models import build_tiny_sam
from napari_persam.core.progress import Progress, run


def test_a_tiny_engine_with_the_disk_cache_under_the_cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_PERSAM_CACHE", str(tmp_path))
    engine = build_engine(model="tiny", device="cpu")
    assert engine.model_name == "tiny" and engine.checkpoint_sha256 is None
    assert isinstance(engine.cache, DiskEmbeddingCache)
    assert engine.cache.root == tmp_path / "embeddings"
    memory_only = build_engine(model="tiny", device="cpu", disk_cache=False)
    assert not isinstance(memory_only.cache, DiskEmbeddingCache)


def test_engines_of_one_model_share_its_caches_whatever_their_options(tmp_path):
    def factory(name, *, checkpoint, device):
        yield Progress(0, 1, "building")
        return build_tiny_sam(img_size=256)

    spec = EngineSpec(model="mine", device="cpu", cache_dir=str(tmp_path))
    loaded = run(iter_load(spec, factory=factory))
    assert loaded.checkpoint_sha256 is None  # another factory may build anything
    first = loaded.engine(spec)
    second = loaded.engine(dataclasses.replace(spec, config=PerSAMConfig(refinement_steps=0)))
    assert first.cache is second.cache and len(loaded.disk_caches) == 1
    image = np.zeros((40, 40), np.uint8)
    first.embed(image)
    second.embed(image)
    assert first.cache.writes == 1 and first.cache.memory.hits == 1
    assert second.config.refinement_steps == 0 and second.sam is first.sam


def test_threads_are_set_as_asked(monkeypatch):
    asked = []
    monkeypatch.setattr(torch, "set_num_threads", asked.append)
    build_engine(model="tiny", device="cpu", disk_cache=False, torch_threads=1)
    assert asked == [1]


def test_bad_specs_are_refused():
    with pytest.raises(ValueError, match="cache_max_bytes"):
        EngineSpec(cache_max_bytes=0)
    with pytest.raises(ValueError, match="torch_threads"):
        EngineSpec(torch_threads=0)
    with pytest.raises(ValueError, match="Unknown model"):
        build_engine(model="vit_z", disk_cache=False)


def test_a_spec_is_plain_hashable_data():
    spec = EngineSpec(model="tiny", config=PerSAMConfig(channels=(0,)))
    assert hash(spec) == hash(dataclasses.replace(spec))
