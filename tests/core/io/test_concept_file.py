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
        "part_cells": "class_0/part_cells",
        "part_prototypes": "class_0/part_prototypes",
        "part_groups": "class_0/part_groups",
        "background_prototypes": "class_0/background_prototypes",
        "background_groups": "class_0/background_groups",
    }
    assert "negative_prototypes" not in metadata["classes"][0]["fields"]  # None: not written


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
    with pytest.raises(
        ValueError, match="is not a valid concept file: its member 'metadata' holds pickled"
    ):
        read_concept_file(path)


def test_other_files_and_newer_versions_are_refused(tmp_path):
    plain = tmp_path / "plain.npz"
    np.savez(plain, x=np.zeros(3))
    with pytest.raises(ValueError, match="is not a valid concept file: it has no 'metadata'"):
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


# ------------------------------------------------- tampered and wrong files (issue 13)
def _valid_members(**concept_fields) -> tuple[dict[str, np.ndarray], dict]:
    """The members of a valid one-concept file of the tiny model, and its metadata."""
    fields = {"target_embedding": np.linspace(-1, 1, 256, dtype=np.float32), **concept_fields}
    concept = Concept(model_fingerprint="f" * 32, model_name="tiny", **fields)
    payload = concepts_to_bytes({1: concept}, config=PerSAMConfig())
    with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    return arrays, json.loads(arrays.pop("metadata").tobytes())


def _pack(arrays: dict, metadata) -> bytes:
    buffer = io.BytesIO()
    text = json.dumps(metadata).encode()
    np.savez(buffer, metadata=np.frombuffer(text, dtype=np.uint8), **arrays)
    return buffer.getvalue()


def _edit(change) -> bytes:
    arrays, metadata = _valid_members()
    change(arrays, metadata)
    return _pack(arrays, metadata)


def _set(*path_and_value):
    *path, value = path_and_value

    def change(arrays, metadata):
        node = metadata
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


def _delete(*path):
    def change(arrays, metadata):
        node = metadata
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return change


def _set_array(key, value):
    def change(arrays, metadata):
        arrays[key] = value

    return change


@pytest.mark.parametrize(
    ("change", "what"),
    [
        (_delete("model"), "has no 'model'"),  # was KeyError: 'model'
        (_set("model", []), "'model' is []; it must be an object"),  # 'list' ... 'get'
        (_set("format_version", "abc"), "'format_version' is 'abc'"),  # int('abc')
        (_set("format_version", True), "'format_version' is True"),
        (_set("classes", [[1, 2]]), "class 0 is [1, 2], not an object"),
        (_set("classes", 0, "label_value", "3"), "label value '3' is not a whole number"),
        (_set("label_values", ["a"]), "label value 'a' is not a whole number"),
        (_set("classes", 0, "arrays", []), "'arrays' is []"),
        (_set("classes", 0, "fields", "object_area", "big"), "'object_area' must be a float"),
        (_set("classes", 0, "fields", "object_similarity", 7.0), "outside -1.001..1.001"),
        (_set("classes", 0, "fields", "colour", 1), "field(s) ['colour'] this napari-persam"),
        (_set("config", {"refinement_steps": "two"}), "its engine options are wrong"),
        (_set("config", {"min_area_fraction": 3.0}), "its engine options are wrong"),
        (_set("model", "checkpoint_sha256", "abc"), "checkpoint SHA-256 'abc'"),
        (_set("model", "fingerprint", ""), "'fingerprint' is empty"),
        (_set("format", "something else"), "its format is 'something else'"),
        (_set("label_values", [1, 2]), "2 label values for 1 classes"),
        (_set("classes", []), "it holds no concept"),
        (_delete("classes", 0, "arrays", "target_embedding"), "'target_embedding' is missing"),
        (_set("classes", 0, "arrays", "target_embedding", "nowhere"), "'nowhere') is missing"),
        (_set_array("stray", np.zeros(3)), "['stray'] belong to no concept"),
        (_set_array("class_0/target_embedding", np.arange(256)), "dtype int64"),
        (_set_array("class_0/target_embedding", np.zeros((2, 128), np.float32)), "shape (2, 128)"),
        (_set_array("class_0/shot_embeddings", np.zeros((1, 255), np.float32)), "C axis"),
    ],
)
def test_every_defect_is_answered_with_not_a_valid_concept_file(change, what):
    with pytest.raises(ValueError) as error:
        concept_file_from_bytes(_edit(change), source="'c.npz'")
    message = str(error.value)
    assert message.startswith("'c.npz' is not a valid concept file: "), message
    assert what in message, message


def test_metadata_that_is_not_an_npy_array_is_refused(tmp_path):
    # A pickled member is stored as raw bytes: numpy hands it back as bytes, not an array.
    import pickle

    arrays, metadata = _valid_members()
    path = tmp_path / "c.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.npy", pickle.dumps(metadata))
        for key, value in arrays.items():
            stream = io.BytesIO()
            np.save(stream, value)
            archive.writestr(f"{key}.npy", stream.getvalue())
    with pytest.raises(ValueError, match="'metadata' entry is not UTF-8 JSON text"):
        read_concept_file(path)
    (tmp_path / "list.npz").write_bytes(_pack(arrays, [1, 2]))
    with pytest.raises(ValueError, match="its metadata is a JSON list"):
        read_concept_file(tmp_path / "list.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(ValueError, match=r"not a valid concept file: it is a single \.npy"):
        read_concept_file(tmp_path / "single.npy")
    with pytest.raises(ValueError, match="is a folder, not a concept file"):
        read_concept_file(tmp_path)


@pytest.mark.parametrize(
    ("change", "what"),
    [
        # every image would then fail with a reshape error
        (_set_array("class_0/target_embedding", np.ones(10, np.float32)), "must be 256"),
        # exit 0 with empty labels
        (_set_array("class_0/target_embedding", np.full(256, np.nan, np.float32)), "NaN"),
        (_set_array("class_0/shot_embeddings", np.full((1, 256), np.inf, np.float32)), "NaN"),
        # exit 0, all background
        (_set("classes", 0, "label_value", 0), "label value 0 is outside 1..2147483647"),
        # OverflowError in an int32 label image
        (_set("classes", 0, "label_value", 2**40), "1099511627776 is outside 1..2147483647"),
    ],
)
def test_concepts_that_would_give_wrong_results_are_refused_at_load(change, what):
    def both(arrays, metadata):
        change(arrays, metadata)
        value = metadata["classes"][0]["label_value"]
        metadata["label_values"] = [value]
        if "class_0/target_embedding" in arrays and arrays["class_0/target_embedding"].size == 10:
            arrays["class_0/shot_embeddings"] = arrays["class_0/target_embedding"][None]

    with pytest.raises(ValueError, match="is not a valid concept file") as error:
        concept_file_from_bytes(_edit(both))
    assert what in str(error.value)


def test_saving_refuses_what_loading_would_refuse(tmp_path):
    good = Concept(target_embedding=np.ones(4, np.float32), model_fingerprint="f" * 32)
    for value in (0, -3, 2**40):
        with pytest.raises(ValueError, match=r"outside 1\.\.2147483647"):
            save_concepts({value: good}, tmp_path / "c.npz")
    nan = Concept(target_embedding=np.full(4, np.nan, np.float32), model_fingerprint="f" * 32)
    with pytest.raises(ValueError, match="NaN"):
        save_concept(nan, tmp_path / "c.npz")
    assert not (tmp_path / "c.npz").exists()


def test_files_without_newer_optional_fields_still_load():
    # An older file: only the required embedding; every later field keeps its default.
    arrays, metadata = _valid_members()
    del arrays["class_0/shot_embeddings"]
    metadata["classes"][0]["arrays"] = {"target_embedding": "class_0/target_embedding"}
    metadata["classes"][0]["fields"] = {}
    del metadata["config"], metadata["package_version"], metadata["model"]["name"]
    content = concept_file_from_bytes(_pack(arrays, metadata))
    (concept,) = content.concepts.values()
    assert concept.shot_embeddings.shape == (1, 256)
    assert concept.object_area == 0.0 and content.config is None and content.model_name == ""


def test_every_stored_concept_field_has_one_rule():
    from napari_persam.core.io.concept_schema import RULES, stored_fields

    assert sorted(stored_fields()) == sorted(RULES)


def test_model_name_and_channels_are_checked_without_a_model():
    content = concept_file_from_bytes(_pack(*_valid_members()))
    content.check_model_name("tiny")
    with pytest.raises(ValueError, match="learned with model 'tiny', not with 'vit_t'"):
        content.check_model_name("vit_t")
    unnamed = Concept(target_embedding=np.ones(4, np.float32), model_fingerprint="f" * 32)
    loaded = concept_file_from_bytes(concepts_to_bytes({1: unnamed}))
    with pytest.raises(ValueError, match="4-channel embeddings, but model 'vit_b' makes 256"):
        loaded.check_model_name("vit_b")


PART_FIELDS = (
    "part_cells",
    "part_prototypes",
    "part_groups",
    "background_prototypes",
    "background_groups",
    "negative_prototypes",
)


def test_part_aware_data_negatives_and_settings_survive_the_round_trip(engine, rng, tmp_path):
    from napari_persam.core.engine.persam import PerSAM

    image, mask = _scene(rng)
    negatives = np.zeros_like(mask)
    negatives[34:46, 2:14] = 1  # "not this": a dark corner
    config = PerSAMConfig(prompt_mode="part-aware", max_parts=4, max_negative_parts=2)
    part_aware = PerSAM(engine.sam, config=config, device="cpu", cache=engine.cache)
    concept = part_aware.learn(image, mask, negatives=negatives)
    assert concept.negative_prototypes.shape == (1, 256)
    path = save_concept(concept, tmp_path / "parts.npz", config=config)
    content = read_concept_file(path)
    assert content.format_version == FORMAT_VERSION == 2
    assert content.config == config
    loaded = content.concepts[1]
    for name in PART_FIELDS:
        np.testing.assert_array_equal(getattr(loaded, name), getattr(concept, name))
    assert loaded.part_groups.dtype == np.int32
    assert loaded.object_distance == concept.object_distance
    assert loaded.background_distance == concept.background_distance
    other = np.roll(image, 5, axis=1)
    expected, got = part_aware.segment(other, concept), part_aware.segment(other, loaded)
    np.testing.assert_array_equal(got.mask, expected.mask)
    assert got.parts == expected.parts and got.retrieval_distances == expected.retrieval_distances


def test_format_1_files_still_load_and_are_prompted_as_persam(engine, rng):
    from napari_persam.core.engine.persam import PerSAM

    image, mask = _scene(rng)
    learned = engine.learn(image, mask)
    old = Concept(
        target_embedding=learned.target_embedding,
        model_fingerprint=learned.model_fingerprint,
        model_name="tiny",
        shot_embeddings=learned.shot_embeddings,
        object_similarity=learned.object_similarity,
        background_similarity=learned.background_similarity,
        object_area=learned.object_area,
    )
    # What version 1 wrote: no part or negative fields at all.
    with np.load(io.BytesIO(concepts_to_bytes({1: old})), allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    metadata = json.loads(arrays["metadata"].tobytes())
    metadata["format_version"] = 1
    for entry in metadata["classes"]:
        for name in (*PART_FIELDS, "object_distance", "background_distance"):
            entry["fields"].pop(name, None)
            assert name not in entry["arrays"]
    arrays["metadata"] = np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)

    content = concept_file_from_bytes(buffer.getvalue())
    assert content.format_version == 1
    loaded = content.concepts[1]
    assert loaded.part_cells is None and loaded.distance_threshold is None
    config = PerSAMConfig(prompt_mode="part-aware")
    part_aware = PerSAM(engine.sam, config=config, device="cpu", cache=engine.cache)
    seg = part_aware.segment(image, loaded)
    persam = engine.prompter.segment(engine.embed(image), loaded)
    assert seg.parts == (1, 0) and seg.retrieval_distances == {}
    np.testing.assert_array_equal(seg.mask, persam.mask)
    found = part_aware.segment_instances(image, loaded)
    assert np.isnan(found.distances).all()


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


def test_a_saved_concept_file_is_readable_by_others(tmp_path):
    # Concepts are shared (a lab's file server); mkstemp alone makes owner-only files.
    concept = Concept(target_embedding=np.ones(4, np.float32), model_fingerprint="f" * 32)
    path = save_concept(concept, tmp_path / "shared.npz")
    assert path.stat().st_mode & 0o044 == 0o044
