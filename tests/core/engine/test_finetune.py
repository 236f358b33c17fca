import numpy as np
import pytest
import torch

from napari_persam.core import PerSAM, PerSAMConfig
from napari_persam.core.engine.finetune import (
    dice_loss,
    fit_mask_weights,
    full_weights,
    loss_and_gradient,
    sigmoid_focal_loss,
)


def test_hand_written_gradient_matches_autograd():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 500, generator=generator) * 4
    target = (torch.rand(500, generator=generator) > 0.6).float()
    weights = torch.tensor([0.2, 0.5, 0.3], requires_grad=True)
    mixed = weights @ logits
    loss = dice_loss(mixed, target) + sigmoid_focal_loss(mixed, target)
    loss.backward()
    got_loss, got_grad = loss_and_gradient(logits, target, weights.detach())
    torch.testing.assert_close(got_loss, loss.detach())
    torch.testing.assert_close(got_grad, weights.grad)


def test_focal_loss_matches_its_definition():
    logits = torch.tensor([2.0, -1.0])
    target = torch.tensor([1.0, 1.0])
    prob = torch.sigmoid(logits)
    expected = (0.25 * -torch.log(prob) * (1 - prob) ** 2).mean()
    torch.testing.assert_close(sigmoid_focal_loss(logits, target), expected)


def test_fitting_finds_the_mask_that_matches():
    # Three candidate masks; the second one is the reference: the fitted weights
    # must favour it and the loss must fall.
    target = torch.zeros(400)
    target[100:200] = 1
    logits = torch.full((3, 400), -4.0)
    logits[0, 100:150] = 4.0  # a part
    logits[1, 100:200] = 4.0  # the object
    logits[2, 50:300] = 4.0  # too much
    weights, losses = fit_mask_weights([logits], [target], steps=300, lr=1e-2)
    assert weights.shape == (3,) and weights.dtype == np.float32
    assert weights.sum() == pytest.approx(1.0, abs=1e-5)
    assert losses[-1] < losses[0]
    assert weights[1] > 1 / 3 + 0.05
    assert full_weights(torch.zeros(2)).tolist() == [1.0, 0.0, 0.0]


def test_persam_f_on_the_engine(tiny_sam, rng):
    image = rng.integers(0, 255, size=(96, 128), dtype=np.uint8)
    mask = np.zeros((96, 128), dtype=bool)
    mask[20:60, 30:90] = True
    engine = PerSAM(tiny_sam, config=PerSAMConfig(refinement_steps=0), device="cpu")
    concept = engine.learn(image, mask)
    tuned = engine.finetune(concept)
    assert concept.mask_weights is None and tuned.is_finetuned
    assert tuned.mask_weights.sum() == pytest.approx(1.0, abs=1e-5)
    assert not np.allclose(tuned.mask_weights, 1 / 3)  # the weights moved
    assert tuned.finetune_losses.shape == (1000,)
    assert tuned.finetune_losses[-1] < tuned.finetune_losses[0]  # and the loss fell
    np.testing.assert_array_equal(tuned.target_embedding, concept.target_embedding)
    # segment uses the weights: the score is their mix of SAM's three predictions
    plain = engine.segment(image, concept)
    mixed = engine.segment(image, tuned)
    assert plain.score != mixed.score


def test_finetune_needs_references(tiny_sam, rng):
    import dataclasses

    image = rng.integers(0, 255, size=(64, 64), dtype=np.uint8)
    mask = np.zeros((64, 64), dtype=bool)
    mask[10:30, 10:30] = True
    engine = PerSAM(tiny_sam, device="cpu")
    bare = dataclasses.replace(engine.learn(image, mask), shots=())
    with pytest.raises(ValueError, match="no reference images"):
        engine.finetune(bare)
