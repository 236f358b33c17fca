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
    gap: float = 6.0,
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
            grown = _shape_mask(shape, centre, r + gap, "disc") | mask
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


# ---------------------------------------------------------------------------
# A "semantic" SAM for instance, class and stack tests: the stand-in encoder plus
# a prompt encoder that passes coordinates through and a mask decoder that grows
# a region of similar feature cells from the positive point. Its masks mean
# something, so counting and tracking objects can be asserted on. It runs only
# with target-guided attention and the semantic prompt switched off (those steps
# need segment_anything's real decoder and are tested with it).
# ---------------------------------------------------------------------------


class PassThroughPromptEncoder(torch.nn.Module):
    """Encodes each point as (x, y, label) in the first three channels of a token."""

    def __init__(self, *, img_size: int, grid: int, channels: int = 256) -> None:
        super().__init__()
        self.image_embedding_size = (grid, grid)
        self.input_image_size = (img_size, img_size)
        self.mask_input_size = (4 * grid, 4 * grid)
        self.channels = channels

    def get_dense_pe(self) -> torch.Tensor:
        return torch.zeros(1, self.channels, *self.image_embedding_size)

    def forward(self, points, boxes, masks):
        tokens = []
        if points is not None:
            coords, labels = points
            token = torch.zeros(*labels.shape, self.channels)
            token[..., 0:2] = coords.float()
            token[..., 2] = labels.float()
            tokens.append(token)
        if boxes is not None:
            corners = torch.zeros(boxes.shape[0], 2, self.channels)
            corners[..., 0:2] = boxes.reshape(-1, 2, 2).float()
            corners[:, 0, 2], corners[:, 1, 2] = 2, 3  # SAM's box corner labels
            tokens.append(corners)
        sparse = torch.cat(tokens, dim=1)
        dense = torch.zeros(sparse.shape[0], self.channels, *self.image_embedding_size)
        return sparse, dense


class RegionGrowingDecoder(torch.nn.Module):
    """Mask = the connected cells that look like the cell under the positive point.

    ``typical=True`` first moves to the cell near the point most like its
    neighbours (for large objects clicked at their rim); objects of a few cells
    (small ones at their learned scale) are grown from the cell under the point.
    """

    def __init__(
        self, *, img_size: int, grid: int, similarity: float = 0.9, typical: bool = True
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.grid = grid
        self.similarity = similarity
        self.typical = typical

    def _typical_cell(self, features: torch.Tensor, x: int, y: int) -> tuple[int, int]:
        """The cell near (x, y) most like its neighbours: a point on an object's edge
        still grows the object, as SAM still segments an object clicked at its rim."""
        best, best_score = (x, y), -2.0
        for cy in range(max(0, y - 1), min(self.grid, y + 2)):
            for cx in range(max(0, x - 1), min(self.grid, x + 2)):
                window = features[:, max(0, cy - 1) : cy + 2, max(0, cx - 1) : cx + 2]
                score = float(torch.einsum("c,chw->hw", features[:, cy, cx], window).mean())
                if score > best_score:
                    best, best_score = (cx, cy), score
        return best

    def forward(
        self,
        image_embeddings,
        image_pe,
        sparse_prompt_embeddings,
        dense_prompt_embeddings,
        multimask_output,
    ):
        features = torch.nn.functional.normalize(image_embeddings[0], dim=0)  # (C, g, g)
        scale = self.grid / self.img_size
        masks = []
        for tokens in sparse_prompt_embeddings:
            labels = tokens[:, 2].round().long()
            cells = (tokens[:, :2] * scale).long().clamp(0, self.grid - 1)  # (x, y)
            region = self._grown(features, cells, labels)
            corners = cells[(labels == 2) | (labels == 3)]
            if len(corners) == 2:
                (x0, y0), (x1, y1) = corners.tolist()
                inside = np.zeros_like(region)
                inside[y0 : y1 + 1, x0 : x1 + 1] = True
                region &= inside
            low = np.kron(region, np.ones((4, 4), dtype=bool))
            masks.append(torch.from_numpy(np.where(low, 10.0, -10.0)).float())
        count = 3 if multimask_output else 1
        stacked = torch.stack(masks)[:, None].expand(-1, count, -1, -1).contiguous()
        return stacked, torch.full((len(masks), count), 0.9)

    def _grown(self, features: torch.Tensor, cells: torch.Tensor, labels: torch.Tensor):
        """(g, g) bool: the region grown from the first positive point."""
        from scipy import ndimage

        region = np.zeros((self.grid, self.grid), dtype=bool)
        positive = cells[labels == 1]
        if len(positive):
            x, y = positive[0].tolist()
            if self.typical:
                x, y = self._typical_cell(features, x, y)
            alike = torch.einsum("c,chw->hw", features[:, y, x], features) > self.similarity
            components, _ = ndimage.label(alike.numpy())
            if components[y, x]:
                region = components == components[y, x]
        return region


def semantic_sam(*, img_size: int = 1024, typical: bool = True, similarity: float = 0.9):
    """A SAM made of the stand-ins above (no random parts).

    ``similarity``: how alike (cosine) a cell must be to the seed cell to join its region.
    """
    from segment_anything.modeling import Sam

    grid = img_size // 16
    return Sam(
        image_encoder=ColourTextureEncoder(img_size=img_size),
        prompt_encoder=PassThroughPromptEncoder(img_size=img_size, grid=grid),
        mask_decoder=RegionGrowingDecoder(
            img_size=img_size, grid=grid, similarity=similarity, typical=typical
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()


def paint_object(
    image: np.ndarray, centre: tuple[float, float], radius: float, look: Look, seed: int
) -> np.ndarray:
    """Paint a disc of ``look`` into ``image`` in place and return its mask."""
    mask = _shape_mask(image.shape[:2], centre, radius, "disc")
    rng = np.random.default_rng(seed)
    canvas = image.astype(np.float64)
    _paint(canvas, mask, look, rng)
    image[:] = np.clip(canvas, 0, 255).astype(np.uint8)
    return mask


def plain_background(shape: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(120 + rng.normal(0, 5, (*shape, 3)), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------
# Objects of two parts, and a decoder that listens to every point, for part-aware
# prompting (P²SAM): SAM segments the union of what several positive points show
# and leaves out what a negative point shows; the region-growing decoder above only
# follows the first positive point.
# ---------------------------------------------------------------------------

RING = Look((210, 40, 40), 70.0)  # striped red rim
CORE = Look((60, 60, 200), 0.0)  # flat blue centre
LOOK_ALIKE = Look((230, 95, 40), 70.0)  # striped orange: close to the striped red


class PartsRegionGrowingDecoder(RegionGrowingDecoder):
    """Mask = the union of the regions grown from every positive point, minus the
    regions that hold a negative point."""

    def _region(self, features: torch.Tensor, cell: tuple[int, int]) -> np.ndarray:
        from scipy import ndimage

        x, y = self._typical_cell(features, *cell)
        alike = torch.einsum("c,chw->hw", features[:, y, x], features) > self.similarity
        components, _ = ndimage.label(alike.numpy())
        if not components[y, x]:
            return np.zeros((self.grid, self.grid), dtype=bool)
        return components == components[y, x]

    def _grown(self, features: torch.Tensor, cells: torch.Tensor, labels: torch.Tensor):
        region = np.zeros((self.grid, self.grid), dtype=bool)
        for cell in cells[labels == 1].tolist():
            region |= self._region(features, cell)
        for x, y in cells[labels == 0].tolist():
            if region[y, x]:
                region &= ~self._region(features, (x, y))
                region[y, x] = False
        return region


def parts_sam(*, img_size: int = 1024):
    """:func:`semantic_sam` with :class:`PartsRegionGrowingDecoder`."""
    from segment_anything.modeling import Sam

    grid = img_size // 16
    return Sam(
        image_encoder=ColourTextureEncoder(img_size=img_size),
        prompt_encoder=PassThroughPromptEncoder(img_size=img_size, grid=grid),
        mask_decoder=PartsRegionGrowingDecoder(img_size=img_size, grid=grid),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()


def paint_two_part_object(
    image: np.ndarray,
    centre: tuple[float, float],
    radius: float,
    *,
    core_fraction: float = 0.5,
    rim: Look = RING,
    core: Look = CORE,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint a disc of ``rim`` with a core of ``core`` into ``image`` in place.

    Returns the whole object's mask and the core's mask, (H, W) bool each.
    """
    whole = paint_object(image, centre, radius, rim, seed)
    inner = paint_object(image, centre, radius * core_fraction, core, seed + 1)
    return whole, inner


def disc_field(
    size=(4096, 4096),
    *,
    spacing: int = 230,
    seed: int = 0,
    levels: tuple[float, float, float] = (60, 4, 230),
    dtype=np.uint8,
):
    """Bright discs 12-16 px across on a darker noisy field, one per grid cell, jittered.

    ``levels``: background mean, its noise and the discs' value. Returns the (H, W)
    image of ``dtype`` and the (H, W) int32 disc label image (1..N).
    """
    rng = np.random.default_rng(seed)
    height, width = size
    background, noise, bright = levels
    top = np.iinfo(dtype).max
    image = np.clip(background + rng.normal(0, noise, size), 0, top).astype(dtype)
    labels = np.zeros(size, np.int32)
    count = 0
    for cy in range(spacing // 2, height - 12, spacing):
        for cx in range(spacing // 2, width - 12, spacing):
            y = int(np.clip(cy + rng.integers(-spacing // 4, spacing // 4), 10, height - 11))
            x = int(np.clip(cx + rng.integers(-spacing // 4, spacing // 4), 10, width - 11))
            radius = rng.uniform(6.0, 8.0)
            yy, xx = np.mgrid[y - 9 : y + 10, x - 9 : x + 10]
            inside = (yy - y) ** 2 + (xx - x) ** 2 <= radius**2
            count += 1
            image[yy[inside], xx[inside]] = bright
            labels[yy[inside], xx[inside]] = count
    return image, labels
