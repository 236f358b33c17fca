"""Sample data that works offline, each with a painted reference ready for Run.

Only numpy and scikit-image (no torch): napari lists and opens samples without
loading the model.
"""

from __future__ import annotations

import numpy as np

#: Where the reference coin is painted in ``skimage.data.coins()``: (y, x) centre
#: and radius in pixels (the coin in the second row, third column).
COIN_CENTRE = (127, 154)
COIN_RADIUS = 17

#: The generated stack: (Z, Y, X) shape and voxel size (Z, Y, X) -- anisotropic, like
#: a confocal stack, so output layers visibly have to copy the image's scale.
BLOBS_SHAPE = (24, 160, 160)
BLOBS_SCALE = (2.0, 1.0, 1.0)


def coins_with_reference() -> list[tuple]:
    """scikit-image's coins (303, 384) uint8, and one coin painted with label 1.

    Returns
    -------
    list of napari LayerData tuples
        An image layer "coins" and a Labels layer "coins reference" (303, 384)
        uint8 with a disk of value 1 inside one coin.
    """
    from skimage.data import coins

    image = coins()
    labels = np.zeros(image.shape, dtype=np.uint8)
    labels[_disk(image.shape, COIN_CENTRE, COIN_RADIUS)] = 1
    return [
        (image, {"name": "coins"}, "image"),
        (labels, {"name": "coins reference"}, "labels"),
    ]


def blobs_with_reference() -> list[tuple]:
    """A (24, 160, 160) float32 stack of bright blobs, one painted on the middle slice.

    Returns
    -------
    list of napari LayerData tuples
        An image layer "blobs" and a Labels layer "blobs reference" (24, 160, 160)
        uint8 with label 1 on the cross-section of one blob in slice 12; both with
        scale (2, 1, 1) (Z, Y, X).
    """
    image, centres, radii = make_blobs(shape=BLOBS_SHAPE, seed=0)
    middle = BLOBS_SHAPE[0] // 2
    # The blob whose centre is nearest the middle slice has its widest cross-section there.
    chosen = int(np.argmin(np.abs(centres[:, 0] - middle)))
    centre, radius = centres[chosen], radii[chosen]
    section = radius**2 - (middle - centre[0]) ** 2
    labels = np.zeros(BLOBS_SHAPE, dtype=np.uint8)
    labels[middle][_disk(BLOBS_SHAPE[1:], centre[1:], 0.8 * np.sqrt(section))] = 1
    return [
        (image, {"name": "blobs", "scale": BLOBS_SCALE}, "image"),
        (labels, {"name": "blobs reference", "scale": BLOBS_SCALE}, "labels"),
    ]


def make_blobs(
    *, shape: tuple[int, int, int] = BLOBS_SHAPE, count: int = 40, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blurred bright balls on a noisy background, like stained nuclei.

    Parameters
    ----------
    shape : (Z, Y, X)
    count : int
        How many blobs to try to place (overlapping ones are skipped).
    seed : int
        Same seed, same stack.

    Returns
    -------
    image : (Z, Y, X) float32 in [0, 1]
    centres : (N, 3) float, (z, y, x) in voxels
    radii : (N,) float, in voxels (in z, in units of slices)
    """
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape, dtype=np.float32)
    volume = np.zeros(shape, dtype=np.float32)
    centres: list[np.ndarray] = []
    radii: list[float] = []
    for _ in range(count):
        radius = float(rng.uniform(6.0, 10.0))
        centre = np.array([rng.uniform(radius / 2, shape[0] - radius / 2)] + [
            rng.uniform(radius, side - radius) for side in shape[1:]
        ])  # fmt: skip
        if any(np.linalg.norm(centre - c) < radius + r + 2 for c, r in zip(centres, radii)):
            continue
        inside = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 < radius**2
        volume[inside] = rng.uniform(0.6, 1.0)
        centres.append(centre)
        radii.append(radius)
    volume = gaussian_filter(volume, sigma=1.5)
    volume += rng.normal(0.0, 0.03, size=shape).astype(np.float32)
    volume = np.clip(volume, 0.0, 1.0).astype(np.float32)
    return volume, np.array(centres), np.array(radii)


def _disk(shape: tuple[int, ...], centre, radius: float) -> np.ndarray:
    """(Y, X) bool: pixels closer than ``radius`` to ``centre`` (y, x)."""
    y, x = np.ogrid[: shape[0], : shape[1]]
    return (y - centre[0]) ** 2 + (x - centre[1]) ** 2 < radius**2
