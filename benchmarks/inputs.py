"""Benchmark inputs: real images from ``<repo>/../shared/data`` when present, else generated.

Encoding cost does not depend on image content (every image is resized to SAM's
1024 px input), but the rest does a little (mask sizes, components), so real
images are preferred.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_persam.core.io.images import read_image, read_mask

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@dataclass(frozen=True)
class BenchInputs:
    """Images for one benchmark run.

    Attributes
    ----------
    reference : (H, W, 3) uint8, reference_mask : (H, W) bool
    targets : list of (H', W', 3) uint8
    stack : (Z, Y, X) array, stack_mask : (Y, X) bool for slice 0
    source : str
        Where the images came from, for the report.
    """

    reference: np.ndarray
    reference_mask: np.ndarray
    targets: list[np.ndarray]
    stack: np.ndarray
    stack_mask: np.ndarray
    source: str


def _rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def _shared(n_targets: int, n_slices: int, data: Path) -> BenchInputs | None:
    perseg = data / "perseg_examples"
    isbi = data / "isbi2012_em_membranes" / "stack3d"
    if not (perseg / "images").is_dir() or not isbi.is_dir():
        return None
    import tifffile

    names = ["cat_00", "cat_01", "cat_02"][: n_targets + 1]
    images = [_rgb(read_image(perseg / "images" / f"{name}.jpg")) for name in names]
    mask = read_mask(perseg / "masks" / f"{names[0]}.png").foreground
    volume = tifffile.imread(isbi / "train-volume.tif")[:n_slices]
    labels = tifffile.imread(isbi / "train-labels.tif")[0]
    shape = images[0].shape
    return BenchInputs(
        reference=images[0],
        reference_mask=mask,
        targets=images[1:],
        stack=volume,
        stack_mask=labels == 0,  # the membrane network
        source=(
            f"shared data: PerSeg {', '.join(names)} ({shape[1]}x{shape[0]} px; the first is "
            f"the reference) and {len(volume)} slices of the ISBI 2012 EM stack "
            f"({volume.shape[2]}x{volume.shape[1]} px)"
        ),
    )


def _generated(n_targets: int, n_slices: int, size: int, seed: int = 0) -> BenchInputs:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]

    def scene(cy: float, cx: float, r: float) -> tuple[np.ndarray, np.ndarray]:
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        image = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
        image[mask] = (200, 120, 40)
        return image, mask

    reference, mask = scene(size * 0.4, size * 0.5, size * 0.2)
    targets = [scene(size * 0.6, size * 0.4, size * 0.15)[0] for _ in range(n_targets)]
    stack = rng.integers(0, 255, (n_slices, size // 2, size // 2), dtype=np.uint8)
    stack_mask = np.zeros(stack.shape[1:], dtype=bool)
    stack_mask[size // 8 : size // 4, size // 8 : size // 4] = True
    return BenchInputs(
        reference=reference,
        reference_mask=mask,
        targets=targets,
        stack=stack,
        stack_mask=stack_mask,
        source=f"generated: {n_targets + 1} images of {size}x{size} px and a "
        f"{n_slices}x{size // 2}x{size // 2} stack",
    )


def load_inputs(
    *, n_targets: int, n_slices: int, generated_size: int, use_shared: bool = True
) -> BenchInputs:
    """Real inputs when ``../shared/data`` is there (and wanted), generated ones otherwise."""
    if use_shared and SHARED_DATA.is_dir():
        found = _shared(n_targets, n_slices, SHARED_DATA)
        if found is not None:
            return found
    return _generated(n_targets, n_slices, generated_size)
