"""Synthetic scenes and a stand-in image encoder whose features mean something.

Random SAM weights give meaningless features, so whether PerSAM finds the right
object is tested with an encoder that describes each 16x16 patch by its colour
(mean per channel) and texture (standard deviation per channel), embedded in 256
dimensions by a fixed orthonormal map. Cosine similarity between such features
is high for patches of the same colour and texture, as SAM's is for the same
kind of object.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


class ColourTextureEncoder(torch.nn.Module):
    """Stand-in for SAM's image encoder: (B, 3, S, S) -> (B, 256, S/16, S/16)."""

    def __init__(self, *, img_size: int = 1024, patch: int = 16, out_chans: int = 256) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch = patch
        generator = torch.Generator().manual_seed(0)
        basis, _ = torch.linalg.qr(torch.randn(out_chans, 6, generator=generator))
        self.register_buffer("basis", basis)  # (256, 6) orthonormal columns

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled_mean = torch.nn.functional.avg_pool2d(x, self.patch)
        pooled_sq = torch.nn.functional.avg_pool2d(x * x, self.patch)
        std = (pooled_sq - pooled_mean**2).clamp_min(0).sqrt()
        described = torch.cat([pooled_mean, 2.0 * std], dim=1)  # (B, 6, g, g)
        return torch.einsum("cd,bdhw->bchw", self.basis, described)


def standin_sam(seed: int = 0, *, img_size: int = 512):
    """A SAM whose image encoder is :class:`ColourTextureEncoder` (decoder random).

    ``img_size`` 512 (a 32 x 32 grid) keeps the decoder four times cheaper than
    SAM's 1024 while keeping its resize-and-pad geometry.
    """
    from segment_anything.modeling import Sam

    from napari_persam.core.models import build_tiny_sam

    tiny = build_tiny_sam(seed=seed, img_size=img_size)
    return Sam(
        image_encoder=ColourTextureEncoder(img_size=img_size),
        prompt_encoder=tiny.prompt_encoder,
        mask_decoder=tiny.mask_decoder,
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()


@dataclass(frozen=True)
class Look:
    """Colour (RGB 0-255) and texture (stripe contrast, 0 = flat) of an object."""

    colour: tuple[int, int, int]
    texture: float


TARGET = Look((210, 40, 40), 70.0)  # striped red
DISTRACTORS = (
    Look((210, 40, 40), 0.0),  # flat red: same colour, other texture
    Look((40, 170, 60), 70.0),  # striped green: same texture, other colour
    Look((60, 60, 200), 0.0),  # flat blue
)


def _paint(image: np.ndarray, mask: np.ndarray, look: Look, rng: np.random.Generator) -> None:
    yy, xx = np.nonzero(mask)
    period = rng.uniform(3.0, 5.0)
    stripes = np.sign(np.sin((xx + yy) * (2 * np.pi / period)))
    for channel in range(3):
        values = look.colour[channel] + look.texture * stripes + rng.normal(0, 4, yy.size)
        image[yy, xx, channel] = np.clip(values, 0, 255)


def _shape_mask(
    shape: tuple[int, int], centre: tuple[float, float], radius: float, kind: str
) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    dy, dx = yy - centre[0], xx - centre[1]
    if kind == "disc":
        return dy**2 + dx**2 <= radius**2
    return (np.abs(dy) <= radius * 0.9) & (np.abs(dx) <= radius * 0.9)


def make_scene(
    seed: int,
    *,
    shape: tuple[int, int] = (256, 256),
    n_targets: int = 1,
    distractors: tuple[Look, ...] = DISTRACTORS,
    target: Look = TARGET,
    radius: tuple[float, float] = (18.0, 26.0),
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded scene: ``n_targets`` objects of the target look among distractors.

    Returns
    -------
    image : (H, W, 3) uint8
    labels : (H, W) int32, 1..n_targets for target objects, 0 elsewhere
    """
    rng = np.random.default_rng(seed)
    image = np.empty((*shape, 3), dtype=np.float64)
    grey = rng.uniform(90, 160)
    image[:] = grey + rng.normal(0, 5, (*shape, 1))
    labels = np.zeros(shape, dtype=np.int32)
    occupied = np.zeros(shape, dtype=bool)
    looks = [target] * n_targets + list(distractors)
    placed = 0
    for index, look in enumerate(looks):
        for _attempt in range(200):
            r = rng.uniform(*radius)
            centre = (rng.uniform(r + 2, shape[0] - r - 2), rng.uniform(r + 2, shape[1] - r - 2))
            mask = _shape_mask(shape, centre, r, rng.choice(["disc", "square"]))
            grown = _shape_mask(shape, centre, r + 6, "disc") | mask
            if not (grown & occupied).any():
                break
        else:
            continue  # no room left: fewer objects, still a valid scene
        occupied |= mask
        _paint(image, mask, look, rng)
        if index < n_targets:
            placed += 1
            labels[mask] = placed
    return np.clip(image, 0, 255).astype(np.uint8), labels
