"""From a concept to SAM prompts: similarity, the location prior, batching, one-object segments."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_persam.core.config import PerSAMConfig
from napari_persam.core.engine.concepts import Concept
from napari_persam.core.engine.persam import PerSAM
from napari_persam.core.engine.postprocess import remove_small_components
from napari_persam.core.engine.prompting import (
    Prompter,
    PromptSet,
    cosine_similarity_grid,
    extreme_points,
)


def test_similarity_is_the_best_cosine_over_the_shots():
    features = torch.zeros(1, 3, 2, 2)
    features[0, :, 0, 0] = torch.tensor([1.0, 0, 0])
    features[0, :, 0, 1] = torch.tensor([0, 2.0, 0])  # length does not matter
    features[0, :, 1, 0] = torch.tensor([-1.0, 0, 0])
    features[0, :, 1, 1] = torch.tensor([1.0, 1.0, 0])
    shots = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    grid = cosine_similarity_grid(features, shots)
    expected = torch.tensor([[1.0, 1.0], [0.0, 2**-0.5]])  # (1,0) is -1 vs shot 0, 0 vs shot 1
    torch.testing.assert_close(grid, expected)


def test_extreme_points_are_y_x_and_first_on_ties():
    similarity = np.zeros((3, 4), np.float32)
    similarity[2, 1] = 1.0
    similarity[0, 3] = -1.0
    best, worst = extreme_points(similarity)
    assert best.tolist() == [2.0, 1.0] and worst.tolist() == [0.0, 3.0]
    best, worst = extreme_points(np.ones((2, 2)))
    assert best.tolist() == worst.tolist() == [0.0, 0.0]


@pytest.fixture
def prompter_and_scene(tiny_sam, rng):
    engine = PerSAM(tiny_sam, device="cpu", config=PerSAMConfig(min_area_fraction=0.0))
    image = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    mask = np.zeros((60, 80), bool)
    mask[10:30, 20:45] = True
    return engine, engine.learn(image, mask), engine.embed(image)


def test_prior_prompt_has_the_negative_point_only_when_asked(tiny_sam, prompter_and_scene):
    engine, concept, embedding = prompter_and_scene
    guidance = engine.prompter.guidance(embedding, concept)
    best, worst = extreme_points(guidance.similarity)
    prompt = engine.prompter.prior_prompt(guidance)
    np.testing.assert_array_equal(prompt.points, [best, worst])
    assert prompt.labels.tolist() == [1, 0]
    positive_only = Prompter(tiny_sam, torch.device("cpu"), PerSAMConfig(negative_prior=False))
    prompt = positive_only.prior_prompt(guidance)
    assert prompt.labels.tolist() == [1] and prompt.points.tolist() == [best.tolist()]


def test_segment_is_guidance_prior_cascade_and_cleanup(prompter_and_scene):
    engine, concept, embedding = prompter_and_scene
    prompter = engine.prompter
    guidance = prompter.guidance(embedding, concept)
    prompt = prompter.prior_prompt(guidance)
    (outcome,) = prompter.cascade(embedding, [prompt], guidance)
    result = prompter.segment(embedding, concept)
    np.testing.assert_array_equal(
        result.mask, remove_small_components(outcome.mask, min_area_fraction=0.0)
    )
    assert result.score == pytest.approx(outcome.score if result.found else 0.0)
    np.testing.assert_array_equal(result.points, prompt.points)
    np.testing.assert_array_equal(result.similarity, guidance.similarity)


@pytest.mark.parametrize("steps", [0, 2])
def test_cascade_masks_are_formed_only_when_asked_for(prompter_and_scene, formed_masks, steps):
    engine, concept, embedding = prompter_and_scene
    prompter = Prompter(engine.sam, torch.device("cpu"), PerSAMConfig(refinement_steps=steps))
    guidance = prompter.guidance(embedding, concept)
    best, _ = extreme_points(guidance.similarity)
    prompts = [
        PromptSet(points=np.array([best + shift]), labels=np.array([1]))
        for shift in ([0, 0], [5, 5], [-5, 10])
    ]
    formed = formed_masks
    outcomes = prompter.cascade(embedding, prompts, guidance)
    assert formed == []  # the instance search drops many outcomes without looking
    found = [outcome for outcome in outcomes if outcome.score > 0]
    assert found, "the random model should keep a mask here"
    first = found[0].mask
    assert first.any() and first.shape == embedding.geometry.original_hw
    assert found[0].mask is first and formed == [1]  # formed once
    lost = [outcome for outcome in outcomes if outcome.score == 0]
    assert all(not outcome.mask.any() and outcome.box is None for outcome in lost)


def test_many_prompt_sets_share_the_image_basis_and_get_the_same_answer(
    prompter_and_scene, monkeypatch
):
    from napari_persam.core.engine import decoder, prompting

    engine, concept, embedding = prompter_and_scene
    prompter = Prompter(engine.sam, torch.device("cpu"), PerSAMConfig(refinement_steps=2))
    guidance = prompter.guidance(embedding, concept)
    best, _ = extreme_points(guidance.similarity)
    shifts = ([0, 0], [5, 5], [-5, 10], [12, -3], [20, 20], [-9, -9])
    prompts = [PromptSet(points=np.array([best + shift]), labels=np.array([1])) for shift in shifts]
    assert len(prompts) >= prompting.BASIS_FROM
    formed = []
    original = Prompter.image_basis

    def counting(self, image):
        formed.append(image)
        return original(self, image)

    thin_calls = []
    thin_predict_masks = decoder.thin_predict_masks

    def counting_calls(*args, **kwargs):
        thin_calls.append(1)
        return thin_predict_masks(*args, **kwargs)

    monkeypatch.setattr(Prompter, "image_basis", counting)
    monkeypatch.setattr(decoder, "thin_predict_masks", counting_calls)
    thin = prompter.cascade(embedding, prompts, guidance)
    assert formed == [embedding]  # once for the first decoding and every refinement
    assert len(thin_calls) == 3  # the guided decoding and both refinement steps
    monkeypatch.setattr(prompting, "BASIS_FROM", len(prompts) + 1)
    lean = prompter.cascade(embedding, prompts, guidance)
    assert len(formed) == 1 and len(thin_calls) == 3
    for got, expected in zip(thin, lean):
        assert got.score == pytest.approx(expected.score, abs=1e-5)
        # A logit within rounding of 0 may flip one pixel of the upscaled mask.
        assert np.count_nonzero(got.mask != expected.mask) <= 0.001 * got.mask.size


def test_prompt_sets_are_batched_by_kind_and_size(tiny_sam):
    prompter = Prompter(tiny_sam, torch.device("cpu"), PerSAMConfig(decoder_batch_size=2))
    two = PromptSet(points=np.zeros((2, 2)), labels=np.array([1, 0]))
    one = PromptSet(points=np.zeros((1, 2)), labels=np.array([1]))
    prompts = [two, one, two, two, one]
    boxes = [None, None, np.zeros(4), None, None]
    groups = prompter._groups(prompts, boxes, range(5))
    assert sorted(map(sorted, groups)) == [[0, 3], [1, 4], [2]]
    assert all(len(group) <= 2 for group in groups)


def test_a_concept_of_another_model_is_refused(prompter_and_scene):
    engine, concept, _ = prompter_and_scene
    stranger = Concept(target_embedding=concept.target_embedding, model_fingerprint="0" * 32)
    with pytest.raises(ValueError, match="different model"):
        engine.segment(np.zeros((60, 80), np.uint8), stranger)
    with pytest.raises(TypeError, match="Expected a Concept"):
        engine.segment(np.zeros((60, 80), np.uint8), "not a concept")
