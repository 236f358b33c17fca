"""The on-disk embedding cache: hits, stale entries, killed writes, LRU eviction, lazy stacks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import napari_persam
from napari_persam.core.engine.embeddings import EmbeddingCache, ImageEmbedding
from napari_persam.core.engine.geometry import SamGeometry
from napari_persam.core.io.disk_cache import DiskEmbeddingCache
from napari_persam.core.paths import CACHE_ENV, embeddings_dir
from napari_persam.core.progress import run

SRC = str(Path(napari_persam.__file__).resolve().parents[1])


class CountingEncoder(torch.nn.Module):
    """Wraps SAM's image encoder and counts its calls (keeps ``img_size``)."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.img_size = encoder.img_size
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.encoder(x)


def _counting_engine(cache_dir: Path):
    from napari_persam.core.engine.persam import PerSAM
    from napari_persam.core.models import build_tiny_sam

    sam = build_tiny_sam(seed=0)
    sam.image_encoder = CountingEncoder(sam.image_encoder)
    return PerSAM(sam, device="cpu", cache=DiskEmbeddingCache(cache_dir)), sam.image_encoder


def _embedding(value: float, channels: int = 4) -> ImageEmbedding:
    features = torch.full((1, channels, 2, 2), value, dtype=torch.float32)
    return ImageEmbedding(features, SamGeometry(original_hw=(20, 30), img_size=32, grid_hw=(2, 2)))


def test_put_get_round_trip(tmp_path):
    cache = DiskEmbeddingCache(tmp_path)
    key = ("fingerprint", "digest", "float32")
    assert cache.get(key) is None
    cache.put(key, _embedding(1.5))
    again = DiskEmbeddingCache(tmp_path).get(key)  # a new process sees the entry
    assert again is not None
    torch.testing.assert_close(again.features, torch.full((1, 4, 2, 2), 1.5))
    assert again.geometry == SamGeometry(original_hw=(20, 30), img_size=32, grid_hw=(2, 2))
    assert (cache.hits, cache.misses, cache.writes) == (0, 1, 1)
    assert cache.entry_count() == 1


def test_second_run_reads_instead_of_encoding(tmp_path, rng):
    image = rng.integers(0, 255, (40, 56), dtype=np.uint8)
    first, first_encoder = _counting_engine(tmp_path)
    expected = first.embed(image)
    assert first_encoder.calls == 1

    second, second_encoder = _counting_engine(tmp_path)  # a fresh engine: empty memory
    got = second.embed(image)
    assert second_encoder.calls == 0
    assert second.cache.hits == 1
    torch.testing.assert_close(got.features, expected.features, rtol=0, atol=0)
    assert got.geometry == expected.geometry


def test_changed_image_or_model_never_reuses_an_entry(tmp_path, rng):
    image = rng.integers(0, 255, (40, 56), dtype=np.uint8)
    engine, encoder = _counting_engine(tmp_path)
    engine.embed(image)
    changed = image.copy()
    changed[0, 0] ^= 1
    engine.embed(changed)
    assert encoder.calls == 2

    from napari_persam.core.engine.persam import PerSAM
    from napari_persam.core.models import build_tiny_sam

    other_sam = build_tiny_sam(seed=3)
    other_sam.image_encoder = CountingEncoder(other_sam.image_encoder)
    PerSAM(other_sam, device="cpu", cache=DiskEmbeddingCache(tmp_path)).embed(image)
    assert other_sam.image_encoder.calls == 1


def test_entry_whose_stored_signature_differs_is_refused(tmp_path):
    cache = DiskEmbeddingCache(tmp_path)
    cache.put(("model", "image-a", "float32"), _embedding(1.0))
    # An entry renamed (or hash-colliding) to another key's name must not be served.
    source = cache._entry_path(cache.signature(("model", "image-a", "float32")))
    target = cache._entry_path(cache.signature(("model", "image-b", "float32")))
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(source, target)
    assert cache.get(("model", "image-b", "float32")) is None

    newer = DiskEmbeddingCache(tmp_path, checkpoint_sha256="cd" * 32)
    cache.put(("model", "image-c", "float32"), _embedding(2.0))
    assert newer.get(("model", "image-c", "float32")) is None  # other checkpoint, other entry


def test_killed_write_leaves_no_readable_entry_and_rerun_works(tmp_path):
    script = textwrap.dedent(
        f"""
        import os, torch
        from napari_persam.core.io import disk_cache
        from napari_persam.core.engine.embeddings import ImageEmbedding
        from napari_persam.core.engine.geometry import SamGeometry

        original = disk_cache.DiskEmbeddingCache._write

        def write_then_die(self, folder, signature, value):
            original(self, folder, signature, value)
            os._exit(9)  # killed after the data is written, before the rename

        disk_cache.DiskEmbeddingCache._write = write_then_die
        cache = disk_cache.DiskEmbeddingCache({str(tmp_path)!r})
        geometry = SamGeometry(original_hw=(20, 30), img_size=32, grid_hw=(2, 2))
        cache.put(("m", "d", "float32"), ImageEmbedding(torch.ones(1, 4, 2, 2), geometry))
        """
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    result = subprocess.run([sys.executable, "-c", script], env=env, timeout=120, check=False)
    assert result.returncode == 9
    assert list((tmp_path / ".incoming").iterdir())  # the half-done write is there...

    cache = DiskEmbeddingCache(tmp_path)
    assert cache.get(("m", "d", "float32")) is None  # ...but never read
    assert cache.entry_count() == 0
    cache.put(("m", "d", "float32"), _embedding(3.0))
    assert cache.get(("m", "d", "float32")) is not None


def test_least_recently_used_entries_are_evicted(tmp_path):
    probe = DiskEmbeddingCache(tmp_path / "probe")
    probe.put(("m", "probe", "float32"), _embedding(0.0))
    entry_size = probe.size_bytes()

    cache = DiskEmbeddingCache(tmp_path / "cache", max_bytes=int(2.5 * entry_size))
    keys = [("m", f"image-{i}", "float32") for i in range(3)]
    cache.put(keys[0], _embedding(0.0))
    cache.put(keys[1], _embedding(1.0))
    old = 1_000_000_000
    for age, key in enumerate(keys[:2]):
        os.utime(cache._entry_path(cache.signature(key)), (old + age, old + age))
    assert cache.get(keys[0]) is not None  # now keys[1] is the least recently used
    cache.put(keys[2], _embedding(2.0))
    assert cache.entry_count() == 2
    assert cache.get(keys[1]) is None
    assert cache.get(keys[0]) is not None and cache.get(keys[2]) is not None
    assert cache.size_bytes() <= cache.max_bytes


def test_memory_layer_answers_first(tmp_path):
    memory = EmbeddingCache(4)
    cache = DiskEmbeddingCache(tmp_path, memory=memory)
    cache.put(("m", "d", "float32"), _embedding(1.0))
    assert cache.get(("m", "d", "float32")) is not None
    assert (memory.hits, cache.hits) == (1, 0)


def test_default_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "here"))
    assert embeddings_dir() == tmp_path / "here" / "embeddings"
    assert DiskEmbeddingCache().root == tmp_path / "here" / "embeddings"
    with pytest.raises(ValueError, match="max_bytes"):
        DiskEmbeddingCache(tmp_path, max_bytes=0)


class CountingStack:
    """A (Z, H, W) array-like that counts which slices are read."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        self.shape = data.shape
        self.reads: list[int] = []

    def __getitem__(self, index: int) -> np.ndarray:
        self.reads.append(index)
        return self.data[index]


def test_a_stack_is_read_one_slice_at_a_time_and_each_slice_encoded_once(tmp_path, rng):
    engine, encoder = _counting_engine(tmp_path)
    stack = CountingStack(rng.integers(0, 255, (4, 32, 40), dtype=np.uint8))
    mask = np.zeros((32, 40), bool)
    mask[8:20, 10:24] = True
    concept = engine.learn(stack.data[2], mask)
    assert encoder.calls == 1
    work = engine.segment_stack(stack, concept, reference_index=2, mode="independent")
    assert stack.reads == []  # nothing is read before the work starts
    first = next(work)
    assert first.index == 2 and stack.reads == [2] and encoder.calls == 1  # cached
    run(work)
    assert sorted(stack.reads) == [0, 1, 2, 3] and encoder.calls == 4
    run(engine.segment_stack(stack, concept, reference_index=2, mode="independent"))
    assert encoder.calls == 4  # second pass: every slice from the cache
