"""Concept files: round trip, no pickle, wrong-model and version errors."""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile

import numpy as np
import pytest

from napari_persam.core.config import PerSAMConfig
from napari_persam.core.engine.concepts import Concept
from napari_persam.core.io.concept_file import (
    FORMAT_VERSION,
    concept_file_from_bytes,
    concepts_to_bytes,
    load_concept,
    read_concept_file,
    save_concept,
    save_concepts,
)


def _scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    image = (rng.random((48, 64)) * 60).astype(np.uint8)
    image[10:30, 20:44] = 220
    mask = np.zeros((48, 64), dtype=np.uint8)
    mask[10:30, 20:44] = 1
    return image, mask


@pytest.fixture
def engine(tiny_sam):
    from napari_persam.core.engine.persam import PerSAM

    return PerSAM(tiny_sam, device="cpu", model_name="tiny")


def test_round_trip_keeps_arrays_metadata_and_segmentation(engine, rng, tmp_path):
    image, mask = _scene(rng)
    concept = dataclasses.replace(
        engine.learn(image, mask),
        mask_weights=np.array([0.2, 0.5, 0.3], dtype=np.float32),
        finetune_losses=np.linspace(1, 0, 5, dtype=np.float32),
    )
    config = PerSAMConfig(channels=(0,), refinement_steps=1)
    path = save_concept(
        concept, tmp_path / "cells", config=config, checkpoint_sha256="ab" * 32, label_value=7
    )
    assert path.name == "cells.npz"

    content = read_concept_file(path)
    assert content.label_values == [7]
    assert content.model_name == "tiny"
    assert content.model_fingerprint == engine.fingerprint
    assert content.checkpoint_sha256 == "ab" * 32
    assert content.config == config
    assert content.format_version == FORMAT_VERSION
    loaded = load_concept(path)
    np.testing.assert_array_equal(loaded.target_embedding, concept.target_embedding)
    assert loaded.target_embedding.dtype == np.float32
    np.testing.assert_array_equal(loaded.mask_weights, concept.mask_weights)
    np.testing.assert_array_equal(loaded.finetune_losses, concept.finetune_losses)
    assert loaded.shots == ()  # reference images are not stored

    other = np.roll(image, 5, axis=1)
    expected = engine.segment(other, concept)
    got = engine.segment(other, loaded)
    np.testing.assert_array_equal(got.mask, expected.mask)
    assert got.score == expected.score


def test_file_has_no_pickled_objects(engine, rng, tmp_path):
    image, mask = _scene(rng)
    path = save_concept(engine.learn(image, mask), tmp_path / "c.npz")
    with np.load(path, allow_pickle=False) as archive:  # raises if anything is pickled
        assert all(archive[key].dtype != object for key in archive.files)
    with zipfile.ZipFile(path) as archive:
        metadata = json.loads(np.load(io.BytesIO(archive.read("metadata.npy"))).tobytes())
    assert metadata["format"] == "napari-persam concept"
    assert metadata["classes"][0]["arrays"] == {
        "target_embedding": "class_0/target_embedding",
        "shot_embeddings": "class_0/shot_embeddings",
    }


def test_few_shot_data_and_reference_levels_survive_the_round_trip(engine, rng, tmp_path):
    first, second = _scene(rng), _scene(rng)
    concept = engine.learn([first, second])
    loaded = load_concept(save_concept(concept, tmp_path / "two.npz"))
    np.testing.assert_array_equal(loaded.shot_embeddings, concept.shot_embeddings)
    assert loaded.shot_embeddings.shape[0] == 2
    assert loaded.object_similarity == concept.object_similarity
    assert loaded.background_similarity == concept.background_similarity
    assert loaded.object_area == concept.object_area


def test_pickled_content_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, metadata=np.array([{"format": "napari-persam concept"}], dtype=object))
    with pytest.raises(ValueError, match="not a readable napari-persam concept file"):
        read_concept_file(path)


def test_other_files_and_newer_versions_are_refused(tmp_path):
    plain = tmp_path / "plain.npz"
    np.savez(plain, x=np.zeros(3))
    with pytest.raises(ValueError, match="not a napari-persam concept file"):
        read_concept_file(plain)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_concept_file(tmp_path / "missing.npz")

    concept = Concept(target_embedding=np.ones(4, np.float32), model_fingerprint="f" * 32)
    payload = concepts_to_bytes({1: concept})
    with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    metadata = json.loads(arrays["metadata"].tobytes())
    metadata["format_version"] = FORMAT_VERSION + 1
    arrays["metadata"] = np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8)
    newer = io.BytesIO()
    np.savez(newer, **arrays)
    with pytest.raises(ValueError, match="Upgrade napari-persam"):
        concept_file_from_bytes(newer.getvalue())


def test_several_classes_keep_their_label_values(tmp_path):
    first = Concept(target_embedding=np.ones(4, np.float32), model_fingerprint="f" * 32)
    second = Concept(target_embedding=np.full(4, 2, np.float32), model_fingerprint="f" * 32)
    path = save_concepts({3: first, 9: second}, tmp_path / "two.npz")
    content = read_concept_file(path)
    assert content.label_values == [3, 9]
    np.testing.assert_array_equal(content.concepts[9].target_embedding, second.target_embedding)
    with pytest.raises(ValueError, match="holds 2 concepts"):
        load_concept(path)
    other_model = Concept(target_embedding=np.ones(4, np.float32), model_fingerprint="e" * 32)
    with pytest.raises(ValueError, match="another model"):
        save_concepts({1: first, 2: other_model}, tmp_path / "mixed.npz")


def test_wrong_model_error_names_both_models(engine, rng, tmp_path):
    from napari_persam.core.engine.persam import PerSAM
    from napari_persam.core.models import build_tiny_sam

    image, mask = _scene(rng)
    path = save_concept(engine.learn(image, mask), tmp_path / "c.npz")
    content = read_concept_file(path)
    other = PerSAM(build_tiny_sam(seed=1), device="cpu", model_name="tiny")

    with pytest.raises(ValueError) as error:
        content.check_model(model_name="tiny", model_fingerprint=other.fingerprint)
    message = str(error.value)
    assert engine.fingerprint[:12] in message and other.fingerprint[:12] in message
    with pytest.raises(ValueError, match=r"'tiny'.*'vit_b'"):
        content.check_model(model_name="vit_b", model_fingerprint=engine.fingerprint)
    with pytest.raises(ValueError, match="checkpoint"):
        dataclasses.replace(content, checkpoint_sha256="aa" * 32).check_model(
            model_name="tiny", model_fingerprint=engine.fingerprint, checkpoint_sha256="bb" * 32
        )
    content.check_model(model_name="tiny", model_fingerprint=engine.fingerprint)  # same: fine
    with pytest.raises(ValueError, match="different model"):
        other.segment(image, load_concept(path))


def test_loaded_concept_cannot_be_finetuned(engine, rng, tmp_path):
    image, mask = _scene(rng)
    loaded = load_concept(save_concept(engine.learn(image, mask), tmp_path / "c.npz"))
    with pytest.raises(ValueError, match="loaded from a file"):
        engine.finetune(loaded)


def test_save_is_atomic_and_keeps_old_file_on_failure(tmp_path, monkeypatch):
    concept = Concept(target_embedding=np.ones(4, np.float32), model_fingerprint="f" * 32)
    path = save_concept(concept, tmp_path / "c.npz")
    before = path.read_bytes()

    def broken_replace(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("napari_persam.core.io.concept_file.os.replace", broken_replace)
    changed = dataclasses.replace(concept, target_embedding=np.zeros(4, np.float32))
    with pytest.raises(OSError, match="disk full"):
        save_concept(changed, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]  # no temporary left


def test_the_learned_scale_survives_and_old_files_load_as_whole_image(engine, rng, tmp_path):
    image, mask = _scene(rng)
    concept = dataclasses.replace(engine.learn(image, mask), pixels_per_cell=7.5)
    loaded = load_concept(save_concept(concept, tmp_path / "scaled.npz"))
    assert loaded.pixels_per_cell == 7.5
    assert loaded.object_diameter == pytest.approx(concept.object_diameter)

    # A file written before the scale existed: no pixels_per_cell, no object_diameter.
    payload = concepts_to_bytes({1: concept})
    with np.load(io.BytesIO(payload)) as archive:
        arrays = {key: archive[key] for key in archive.files}
    metadata = json.loads(arrays["metadata"].tobytes())
    for entry in metadata["classes"]:
        entry["fields"].pop("pixels_per_cell")
        entry["fields"].pop("object_diameter")
    arrays["metadata"] = np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    old = concept_file_from_bytes(buffer.getvalue()).concepts[1]
    assert old.pixels_per_cell is None and old.object_diameter == 0.0
