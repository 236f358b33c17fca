"""Encoding images once: content hashes, model fingerprints, the memory cache."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from napari_persam.core.engine.embeddings import (
    EmbeddingCache,
    ImageEmbedding,
    encode_image,
    geometry_for,
    image_digest,
    model_fingerprint,
)
from napari_persam.core.engine.geometry import SamGeometry


def test_the_digest_follows_content_and_shape():
    image = np.zeros((4, 6, 3), np.uint8)
    other = image.copy()
    other[1, 2, 0] = 1
    assert image_digest(image) == image_digest(image.copy())
    assert image_digest(image) != image_digest(other)
    assert image_digest(image) != image_digest(image.reshape(6, 4, 3))


def test_the_fingerprint_follows_the_weights(make_tiny_sam):
    first, again, other = make_tiny_sam(seed=0), make_tiny_sam(seed=0), make_tiny_sam(seed=1)
    assert model_fingerprint(first) == model_fingerprint(again)
    assert model_fingerprint(first) != model_fingerprint(other)
    with torch.no_grad():
        again.mask_decoder.iou_token.weight[0, 0] += 1.0  # one sampled value changed
    assert model_fingerprint(first) != model_fingerprint(again)


def _embedding() -> ImageEmbedding:
    return ImageEmbedding(torch.zeros(1, 2, 1, 1), SamGeometry((16, 16), 16, (1, 1)))


def test_the_memory_cache_forgets_the_least_recently_used():
    cache = EmbeddingCache(max_items=2)
    for key in "abc":
        cache.put((key,), _embedding())
        if key == "b":
            assert cache.get(("a",)) is not None  # a is now more recent than b
    assert len(cache) == 2
    assert cache.get(("b",)) is None and cache.get(("a",)) is not None
    assert (cache.hits, cache.misses) == (2, 1)


def test_the_memory_cache_is_safe_from_several_threads():
    cache = EmbeddingCache(max_items=8)

    def work(offset: int) -> None:
        for i in range(200):
            cache.put((offset, i % 10), _embedding())
            cache.get((offset, (i * 7) % 10))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(cache) == 8


def test_encoding_gives_the_feature_grid_of_the_geometry(tiny_sam):
    rgb = np.zeros((30, 50, 3), np.uint8)
    embedding = encode_image(tiny_sam, rgb, device=torch.device("cpu"))
    assert embedding.geometry == geometry_for(tiny_sam, rgb.shape)
    assert tuple(embedding.features.shape) == (1, 256, *embedding.geometry.grid_hw)
    assert embedding.features.dtype == torch.float32


def test_an_encoder_that_does_not_fit_the_prompt_encoder_is_named(make_tiny_sam):
    sam = make_tiny_sam()
    sam.prompt_encoder.image_embedding_size = (8, 8)  # the encoder gives 16 x 16
    with pytest.raises(ValueError, match="do not fit together"):
        encode_image(sam, np.zeros((32, 32, 3), np.uint8), device=torch.device("cpu"))
