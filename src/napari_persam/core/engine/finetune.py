"""PerSAM-F: two learnable weights over SAM's three multimask logits.

SAM's decoder gives three masks for one point at different scales (part, object,
whole). PerSAM-F learns how to mix them for the concept from the reference mask
alone: ``logits = w0 * l0 + w1 * l1 + w2 * l2`` with ``w0 = 1 - w1 - w2``, trained
with dice + sigmoid focal loss (alpha 0.25, gamma 2), AdamW (lr 1e-3) and cosine
decay for 1000 steps, as in the paper.

The decoder is frozen and its input never changes during training, so its three
logit maps are computed once and only the two weights are optimised: the official
code calls the decoder 1000 times for the same outputs. The 1000 steps themselves
run in numpy with the loss, its gradient and AdamW written out (:func:`fit_mask_weights`):
a step is a few passes over the pixels, where a torch step spent most of its time in
op dispatch (only the sigmoid and the log go to torch, on the same buffers). The
torch functions below are the reference the tests compare against.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft dice loss of ``(P,)`` logits against a ``(P,)`` target in [0, 1] (PerSAM's form)."""
    prob = logits.sigmoid()
    numerator = 2 * (prob * target).sum(-1)
    denominator = prob.sum(-1) + target.sum(-1)
    return 1 - (numerator + 1) / (denominator + 1)


def sigmoid_focal_loss(
    logits: torch.Tensor, target: torch.Tensor, *, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Mean sigmoid focal loss (Lin et al. 2017) of ``(P,)`` logits against ``(P,)`` targets."""
    prob = logits.sigmoid()
    ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.mean(-1)


def full_weights(free: torch.Tensor) -> torch.Tensor:
    """(3,) mixing weights from the 2 free ones: ``(1 - w1 - w2, w1, w2)``."""
    return torch.cat([1 - free.sum(0, keepdim=True), free])


def loss_and_gradient(
    logits: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor,
    *,
    gamma: float = 2.0,
    alpha: float = 0.25,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice + focal loss of the mixed logits and its gradient with respect to the 3 weights.

    Written out by hand because autograd's bookkeeping, not arithmetic, dominates
    1000 steps over a few thousand pixels; ``tests/core/test_finetune.py`` checks it
    against autograd on :func:`dice_loss` + :func:`sigmoid_focal_loss`.

    Parameters
    ----------
    logits : (3, P) float tensor
    target : (P,) float tensor in [0, 1]
    weights : (3,) float tensor

    Returns
    -------
    loss : () tensor and gradient : (3,) tensor
    """
    mixed = weights @ logits  # (P,)
    prob = torch.sigmoid(mixed)
    slope = prob * (1 - prob)  # d prob / d mixed
    # Dice (PerSAM's +1 smoothing): 1 - (2 sum(p t) + 1) / (sum p + sum t + 1).
    numerator = 2 * (prob * target).sum() + 1
    denominator = prob.sum() + target.sum() + 1
    dice = 1 - numerator / denominator
    d_dice = (numerator / denominator**2 - 2 * target / denominator) * slope
    # Sigmoid focal loss, mean over pixels.
    ce = torch.clamp(mixed, min=0) - mixed * target + torch.log1p(torch.exp(-mixed.abs()))
    p_t = prob * target + (1 - prob) * (1 - target)
    alpha_t = alpha * target + (1 - alpha) * (1 - target)
    miss = 1 - p_t
    focal_terms = alpha_t * ce * miss**gamma
    d_ce = prob - target
    d_miss = -slope * (2 * target - 1)
    d_focal = alpha_t * (d_ce * miss**gamma + ce * gamma * miss ** (gamma - 1) * d_miss)
    d_focal = d_focal / mixed.numel()
    loss = dice + focal_terms.mean()
    return loss, logits @ (d_dice + d_focal)


class AdamW:
    """``torch.optim.AdamW`` for one small float64 parameter vector, written out in numpy.

    Same update as torch's (decoupled weight decay, bias-corrected moments, ``eps``
    added to the corrected square root; ``amsgrad`` off):
    ``tests/core/engine/test_finetune.py`` runs both side by side. A torch
    optimizer step costs tens of microseconds of dispatch for two numbers.
    """

    def __init__(
        self,
        params: np.ndarray,
        *,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        self.params = np.array(params, dtype=np.float64)
        self.lr = float(lr)
        self.betas = betas
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.step_count = 0
        self._mean = np.zeros_like(self.params)
        self._square = np.zeros_like(self.params)

    def step(self, grad: np.ndarray) -> np.ndarray:
        """Apply one update with gradient ``grad`` at the current ``lr``; returns the params."""
        beta1, beta2 = self.betas
        self.step_count += 1
        self.params *= 1.0 - self.lr * self.weight_decay
        self._mean += (1.0 - beta1) * (grad - self._mean)  # torch's lerp
        self._square = beta2 * self._square + (1.0 - beta2) * grad * grad
        correction1 = 1.0 - beta1**self.step_count
        correction2 = 1.0 - beta2**self.step_count
        denominator = np.sqrt(self._square) / math.sqrt(correction2) + self.eps
        self.params -= (self.lr / correction1) * self._mean / denominator
        return self.params


def cosine_lr(base_lr: float, step: int, steps: int) -> float:
    """``CosineAnnealingLR(T_max=steps, eta_min=0)``'s rate after ``step`` scheduler steps."""
    return base_lr * (1.0 + math.cos(math.pi * step / steps)) / 2.0


class _Shot:
    """One reference's constants and work buffers for :func:`fit_mask_weights`.

    Per-pixel arithmetic is float32 (as PyTorch ran it before) in preallocated
    buffers, sums are float64: one step is about thirty passes over the pixels
    (the mix of the three logits and the gradient's three dot products are one
    matrix-vector product each) and no allocation.
    """

    def __init__(self, logits: np.ndarray, target: np.ndarray, alpha: float) -> None:
        self.logits = np.ascontiguousarray(logits, dtype=np.float32)  # (3, P)
        self.target = np.ascontiguousarray(target, dtype=np.float32)  # (P,)
        self.target_sum = float(self.target.sum(dtype=np.float64))
        self.sign2 = 2.0 * (1.0 - 2.0 * self.target)  # 2 d(miss)/d(prob)
        self.sign = 1.0 - 2.0 * self.target
        self.alpha_t = (1.0 - alpha) + (2.0 * alpha - 1.0) * self.target
        self.count = self.target.size
        self._buffers = [np.empty_like(self.target) for _ in range(6)]
        # The two transcendental passes go to torch, on the same memory: its vectorised
        # sigmoid and log took 24 us each per 16,384 pixels where numpy's tanh-based
        # sigmoid took 83 us and its log 31 us, on a 2-core AMD EPYC with AVX2.
        self._mixed, self._prob, _, self._ce, _, _ = map(torch.from_numpy, self._buffers)

    def loss_and_gradient(self, weights: np.ndarray) -> tuple[float, np.ndarray]:
        """:func:`loss_and_gradient` with gamma 2 in numpy: (loss, (3,) gradient)."""
        t = self.target
        mixed, prob, other, ce, miss, work = self._buffers
        np.dot(weights.astype(np.float32), self.logits, out=mixed)  # one pass (sgemv)
        torch.sigmoid(self._mixed, out=self._prob)
        np.subtract(1.0, prob, out=other)  # 1 - p
        prob_sum = float(prob.sum(dtype=np.float64))
        np.multiply(prob, t, out=work)
        numerator = 2.0 * float(work.sum(dtype=np.float64)) + 1.0
        denominator = prob_sum + self.target_sum + 1.0
        dice = 1.0 - numerator / denominator
        # Binary cross-entropy with logits: max(m, 0) + log(1 + e^-|m|) - m t, where
        # log(1 + e^-|m|) = -log(max(p, 1 - p)).
        np.maximum(prob, other, out=ce)
        torch.log(self._ce, out=self._ce)
        np.maximum(mixed, 0.0, out=work)
        np.subtract(work, ce, out=ce)
        np.multiply(mixed, t, out=work)
        ce -= work
        np.multiply(prob, self.sign, out=miss)  # 1 - p_t = p (1 - 2t) + t
        miss += t
        other *= prob  # the sigmoid's slope p (1 - p)
        ce *= self.alpha_t  # alpha_t ce
        np.multiply(miss, miss, out=work)
        focal = float(np.dot(ce, work)) / self.count
        # d focal / d m = alpha_t ((p - t) miss^2 + 2 ce miss slope (1 - 2t)), over P.
        np.subtract(prob, t, out=mixed)
        mixed *= self.alpha_t
        mixed *= work
        ce *= miss
        ce *= other
        ce *= self.sign2
        mixed += ce
        mixed *= 1.0 / self.count
        # d dice / d m = slope (num / den^2 - 2 t / den)
        np.multiply(t, -2.0 / denominator, out=work)
        work += numerator / denominator**2
        work *= other
        mixed += work
        return dice + focal, (self.logits @ mixed).astype(np.float64)  # one pass (sgemv)


def fit_mask_weights(
    logits: Sequence[torch.Tensor | np.ndarray],
    targets: Sequence[torch.Tensor | np.ndarray],
    *,
    steps: int = 1000,
    lr: float = 1e-3,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit PerSAM-F's mask weights.

    PerSAM's optimisation exactly (dice + sigmoid focal loss, AdamW with eps 1e-4
    and torch's default weight decay, cosine annealing), with the loss, gradient
    and optimizer written out in float64 numpy: each step is a few vector
    operations on the precomputed logits, microseconds instead of the
    milliseconds of a torch step's dispatch.

    Parameters
    ----------
    logits : sequence of (3, P) float tensors or arrays
        SAM's three multimask logits per reference, flattened (constants).
    targets : sequence of (P,) float tensors or arrays in [0, 1]
        The reference masks in the same pixels.
    steps, lr : int, float
        AdamW steps (eps 1e-4 as in PerSAM) and learning rate, cosine annealed.

    Returns
    -------
    weights : (3,) float32
        Mixing weights, summing to 1.
    losses : (steps,) float32
        Loss (dice + focal, averaged over references) before every step.
    """
    if len(logits) != len(targets) or not logits:
        raise ValueError("fit_mask_weights needs one target per logits tensor, at least one.")
    shots = [
        _Shot(_as_array(item), _as_array(target).reshape(-1), alpha=0.25)
        for item, target in zip(logits, targets)
    ]
    optimizer = AdamW(np.full(2, 1.0 / 3.0), lr=lr, eps=1e-4)
    free = optimizer.params
    losses = np.empty(steps)
    weights = np.empty(3)
    for step in range(steps):
        weights[0] = 1.0 - free[0] - free[1]
        weights[1:] = free
        loss = 0.0
        grad = np.zeros(3)
        for shot in shots:
            shot_loss, shot_grad = shot.loss_and_gradient(weights)
            loss += shot_loss
            grad += shot_grad
        losses[step] = loss / len(shots)
        # Chain rule through w0 = 1 - w1 - w2.
        optimizer.lr = cosine_lr(lr, step, steps)
        free = optimizer.step((grad[1:] - grad[0]) / len(shots))
    result = np.array([1.0 - free[0] - free[1], free[0], free[1]])
    return result.astype(np.float32), losses.astype(np.float32)


def _as_array(value: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=np.float64)
