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


# ---------------------------------------------------------------- numpy optimisation
def _torch_reference_fit(logits, targets, *, steps, lr, dtype=torch.float32):
    """PerSAM-F as before the numpy rewrite: autograd, torch.optim.AdamW, CosineAnnealingLR."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a second thread only adds waiting
    try:
        return _torch_fit(logits, targets, steps=steps, lr=lr, dtype=dtype)
    finally:
        torch.set_num_threads(threads)


def _torch_fit(logits, targets, *, steps, lr, dtype):
    logits = [torch.as_tensor(item, dtype=dtype) for item in logits]
    targets = [torch.as_tensor(item, dtype=dtype) for item in targets]
    free = torch.full((2,), 1.0 / 3.0, dtype=dtype, requires_grad=True)
    optimizer = torch.optim.AdamW([free], lr=lr, eps=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        weights = full_weights(free)
        loss = sum(
            dice_loss(weights @ item, target) + sigmoid_focal_loss(weights @ item, target)
            for item, target in zip(logits, targets)
        ) / len(logits)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss))
    return full_weights(free.detach()).numpy(), np.array(losses)


def _problem(seed, pixels=1500, shots=2):
    generator = torch.Generator().manual_seed(seed)
    logits = [torch.randn(3, pixels, generator=generator) * 5 for _ in range(shots)]
    targets = [
        (torch.rand(pixels, generator=generator) > 0.7).float() * 0.9 + 0.05 for _ in range(shots)
    ]
    return logits, targets


def test_numpy_fit_matches_the_torch_optimisation():
    # PerSAM-F's schedule (1000 steps, lr 1e-3), two references.
    logits, targets = _problem(0, pixels=600)
    expected, expected_losses = _torch_reference_fit(logits, targets, steps=1000, lr=1e-3)
    weights, losses = fit_mask_weights(logits, targets, steps=1000, lr=1e-3)
    np.testing.assert_allclose(weights, expected, atol=1e-5)
    np.testing.assert_allclose(losses, expected_losses, atol=1e-5)
    # A faster rate moves the weights far; the float64 reference still agrees.
    exact, _ = _torch_reference_fit(logits, targets, steps=200, lr=3e-2, dtype=torch.float64)
    weights, _ = fit_mask_weights(logits, targets, steps=200, lr=3e-2)
    assert np.abs(weights - 1 / 3).max() > 0.05
    np.testing.assert_allclose(weights, exact, atol=1e-5)


def test_numpy_adamw_is_torch_adamw():
    from napari_persam.core.engine.finetune import AdamW, cosine_lr

    generator = np.random.default_rng(0)
    start = generator.normal(size=2)
    param = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    reference = torch.optim.AdamW([param], lr=0.05, eps=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(reference, 50)
    ours = AdamW(start, lr=0.05, eps=1e-4)
    for step in range(50):
        grad = generator.normal(size=2) * 10 ** generator.uniform(-3, 1)
        param.grad = torch.tensor(grad)
        reference.step()
        schedule.step()
        ours.lr = cosine_lr(0.05, step, 50)
        ours.step(grad)
        np.testing.assert_allclose(ours.params, param.detach().numpy(), rtol=0, atol=1e-13)
        assert reference.param_groups[0]["lr"] == pytest.approx(cosine_lr(0.05, step + 1, 50))


def test_numpy_loss_and_gradient_match_the_torch_ones():
    from napari_persam.core.engine.finetune import _Shot

    logits, targets = _problem(3, shots=1)
    weights = torch.tensor([0.1, 0.7, 0.2], dtype=torch.float64)
    loss, grad = loss_and_gradient(logits[0].double(), targets[0].double(), weights)
    shot = _Shot(logits[0].double().numpy(), targets[0].double().numpy(), alpha=0.25)
    got_loss, got_grad = shot.loss_and_gradient(weights.numpy())
    # float32 pixel arithmetic, float64 sums
    assert got_loss == pytest.approx(float(loss), abs=1e-6)
    np.testing.assert_allclose(got_grad, grad.numpy(), rtol=1e-4, atol=1e-6)
