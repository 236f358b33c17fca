"""PerSAM-F: two learnable weights over SAM's three multimask logits.

SAM's decoder gives three masks for one point at different scales (part, object,
whole). PerSAM-F learns how to mix them for the concept from the reference mask
alone: ``logits = w0 * l0 + w1 * l1 + w2 * l2`` with ``w0 = 1 - w1 - w2``, trained
with dice + sigmoid focal loss (alpha 0.25, gamma 2), AdamW (lr 1e-3) and cosine
decay for 1000 steps, as in the paper.

The decoder is frozen and its input never changes during training, so its three
logit maps are computed once and only the two weights are optimised: the official
code calls the decoder 1000 times for the same outputs.
"""

from __future__ import annotations

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


def fit_mask_weights(
    logits: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    *,
    steps: int = 1000,
    lr: float = 1e-3,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit PerSAM-F's mask weights.

    Parameters
    ----------
    logits : sequence of (3, P) float tensors
        SAM's three multimask logits per reference, flattened (constants).
    targets : sequence of (P,) float tensors in [0, 1]
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
    logits = [torch.as_tensor(item).detach().float() for item in logits]
    device = logits[0].device
    targets = [torch.as_tensor(item).detach().float().to(device) for item in targets]
    free = torch.full((2,), 1.0 / 3.0, device=device, requires_grad=True)
    optimizer = torch.optim.AdamW([free], lr=lr, eps=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    losses = torch.empty(steps)
    with torch.no_grad():
        for step in range(steps):
            weights = full_weights(free)
            loss = torch.zeros((), device=device)
            grad = torch.zeros(3, device=device)
            for shot_logits, target in zip(logits, targets):
                shot_loss, shot_grad = loss_and_gradient(shot_logits, target, weights)
                loss += shot_loss
                grad += shot_grad
            # Chain rule through w0 = 1 - w1 - w2.
            free.grad = (grad[1:] - grad[0]) / len(logits)
            optimizer.step()
            schedule.step()
            losses[step] = loss / len(logits)
    weights = full_weights(free.detach()).cpu().numpy().astype(np.float32)
    return weights, losses.numpy().astype(np.float32)
