"""Every instance, several classes and several references, on semantic stand-ins."""

import dataclasses

import numpy as np
import pytest

from napari_persam.core import PerSAM, PerSAMConfig
from napari_persam.core.engine.concepts import ClassConcepts
from napari_persam.core.engine.instances import candidate_points
from napari_persam.core.engine.results import Instances
from tests.synthetic import (
    DISTRACTORS,
    TARGET,
    Look,
    make_scene,
    paint_object,
    plain_background,
    semantic_sam,
)

# The stand-in decoder needs segment_anything's real decoder for guidance.
UNGUIDED = PerSAMConfig(target_guided_attention=False, semantic_prompt=False)


@pytest.fixture(scope="module")
def engine():
    return PerSAM(semantic_sam(), config=UNGUIDED, device="cpu")


@pytest.fixture(scope="module")
def concept(engine):
    reference, labels = make_scene(seed=0)
    return engine.learn(reference, labels > 0)


@pytest.mark.parametrize("copies", [1, 2, 3, 5, 8, 12, 16, 20])
def test_k_copies_are_found_as_k_instances(engine, concept, copies):
    image, truth = make_scene(
        100 + copies,
        shape=(512, 512),
        n_targets=copies,
        radius=(16, 22),
        distractors=DISTRACTORS[2:],  # a flat blue object: must not be counted
        gap=10,
    )
    assert truth.max() == copies
    found = engine.segment_instances(image, concept)
    assert isinstance(found, Instances)
    assert found.labels.dtype == np.int32 and found.labels.shape == truth.shape
    assert found.count == copies
    assert found.scores.shape == (copies,) and found.similarity.shape == truth.shape
    for k in range(1, copies + 1):
        ids = set(np.unique(found.labels[truth == k])) - {0}
        assert len(ids) == 1, f"object {k} got ids {ids}"
    assert sorted(np.unique(found.labels)) == list(range(copies + 1))


def test_candidates_are_local_maxima_strongest_first():
    similarity = np.zeros((50, 50), dtype=np.float32)
    similarity[10, 10], similarity[10, 14], similarity[40, 40], similarity[30, 5] = (
        0.9,
        0.8,
        0.95,
        0.2,
    )
    peaks = candidate_points(similarity, threshold=0.5, spacing=8, limit=10)
    np.testing.assert_array_equal(peaks, [[40, 40], [10, 10]])  # (10, 14) is too close
    assert len(candidate_points(similarity, threshold=0.5, spacing=2, limit=1)) == 1


def test_max_instances_bounds_the_work(engine, concept):
    image, truth = make_scene(
        7, shape=(512, 512), n_targets=8, radius=(16, 22), distractors=(), gap=10
    )
    limited = PerSAM(
        engine.sam,
        config=dataclasses.replace(UNGUIDED, max_instances=3),
        device="cpu",
        cache=engine.cache,
    )
    assert limited.segment_instances(image, concept).count <= 3
    assert engine.segment_instances(image, concept).count == truth.max() == 8


def test_batched_decoding_equals_one_by_one(tiny_sam, rng):
    # The real (random) SAM decoder with guidance on: batches must not change masks.
    image = rng.integers(0, 255, size=(128, 128, 3), dtype=np.uint8)
    mask = np.zeros((128, 128), dtype=bool)
    mask[20:50, 30:70] = True
    settings = dict(
        instance_threshold=-1.0, instance_spacing=10, max_instances=12, min_area_fraction=0
    )
    batched = PerSAM(tiny_sam, config=PerSAMConfig(decoder_batch_size=16, **settings), device="cpu")
    single = PerSAM(
        tiny_sam,
        config=PerSAMConfig(decoder_batch_size=1, **settings),
        device="cpu",
        cache=batched.cache,
    )
    concept = batched.learn(image, mask)
    many, one = batched.segment_instances(image, concept), single.segment_instances(image, concept)
    assert many.count >= 1
    np.testing.assert_array_equal(many.labels, one.labels)
    np.testing.assert_allclose(many.scores, one.scores, rtol=1e-5, atol=1e-6)


def test_two_classes_keep_their_label_values(engine):
    blue = Look((60, 60, 200), 0.0)
    image = plain_background((256, 256), seed=1)
    red_a = paint_object(image, (60, 60), 24, TARGET, seed=2)
    blue_a = paint_object(image, (60, 190), 24, blue, seed=3)
    reference = np.zeros((256, 256), dtype=np.uint16)
    reference[red_a], reference[blue_a] = 3, 7
    classes = engine.learn_classes(image, reference)
    assert isinstance(classes, ClassConcepts) and classes.values == [3, 7]

    target = plain_background((256, 256), seed=4)
    red_b = paint_object(target, (190, 190), 22, TARGET, seed=5)
    blue_b = paint_object(target, (190, 60), 26, blue, seed=6)
    result = engine.segment(target, classes)
    assert result.labels.dtype == np.int32
    assert set(np.unique(result.labels)) <= {0, 3, 7}
    assert np.mean(result.labels[red_b] == 3) > 0.5
    assert np.mean(result.labels[blue_b] == 7) > 0.5
    assert result.similarity.shape == (2, 256, 256)
    # and every instance of each class, ids across classes, class map from values
    found = engine.segment_instances(target, classes)
    assert sorted(found.classes.tolist()) == [3, 7]
    class_map = found.class_map()
    assert np.mean(class_map[red_b] == 3) > 0.5 and np.mean(class_map[blue_b] == 7) > 0.5


def test_learn_classes_reports_missing_values(engine):
    image = plain_background((64, 64), seed=0)
    labels = np.zeros((64, 64), dtype=np.uint8)
    labels[10:30, 10:30] = 2
    with pytest.raises(ValueError, match="not painted"):
        engine.learn_classes(image, labels, values=[5])
    with pytest.raises(ValueError, match="not painted"):
        engine.learn_classes(image, np.zeros((64, 64), dtype=np.uint8))


SECOND_LOOK = Look((230, 200, 40), 70.0)  # the same object seen in other light: striped yellow


def _found_share(engine, concept, looks):
    found = 0
    for index, look in enumerate(looks):
        image, truth = make_scene(5000 + index, target=look)
        y, x = engine.segment(image, concept).points[0].astype(int)
        found += bool(truth[y, x])
    return found / len(looks)


def test_a_second_reference_of_another_look_finds_more(engine):
    first, first_mask = make_scene(1, target=TARGET)
    second, second_mask = make_scene(2, target=SECOND_LOOK)
    one_shot = engine.learn(first, first_mask > 0)
    two_shot = engine.learn([(first, first_mask > 0), (second, second_mask > 0)])
    assert two_shot.shot_embeddings.shape == (2, 256)
    np.testing.assert_allclose(one_shot.shot_embeddings[0], one_shot.target_embedding)
    looks = [TARGET, SECOND_LOOK] * 6
    share_one = _found_share(engine, one_shot, looks)
    share_two = _found_share(engine, two_shot, looks)
    assert share_two > share_one
    assert share_two >= 0.9
    tuned = engine.finetune(two_shot)  # PerSAM-F trains on both shots
    assert tuned.is_finetuned and len(tuned.shots) == 2
