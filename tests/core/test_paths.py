"""One cache root and one environment variable for everything kept between runs."""

from __future__ import annotations

from napari_persam.core import paths
from napari_persam.core.io.disk_cache import DiskEmbeddingCache
from napari_persam.core.models.checkpoints import checkpoint_path
from napari_persam.core.models.registry import MODEL_REGISTRY


def test_the_environment_variable_moves_every_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path / "cache"))
    root = tmp_path / "cache"
    assert paths.cache_root() == root
    assert paths.checkpoints_dir() == root  # where earlier versions downloaded to
    assert paths.embeddings_dir() == root / "embeddings"
    assert paths.encoders_dir() == root / "encoders"
    assert checkpoint_path(MODEL_REGISTRY["vit_b"]).parent == root
    assert DiskEmbeddingCache().root == root / "embeddings"


def test_an_explicit_root_wins_and_the_default_is_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.delenv(paths.CACHE_ENV, raising=False)
    assert paths.APP_NAME in str(paths.cache_root())
    assert paths.cache_root(tmp_path) == tmp_path
    assert paths.embeddings_dir(tmp_path) == tmp_path / "embeddings"
    monkeypatch.setenv(paths.CACHE_ENV, "   ")  # blank counts as unset
    assert paths.APP_NAME in str(paths.cache_root())
