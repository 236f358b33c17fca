"""A dataset for evaluation: a folder of images and masks paired by file name."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from napari_persam.core.errors import InputError
from napari_persam.core.io.images import IMAGE_SUFFIXES


@dataclass(frozen=True)
class Sample:
    """One image of a dataset and its ground-truth mask file."""

    name: str
    image_path: Path
    mask_path: Path


@dataclass(frozen=True)
class Dataset:
    """A folder of paired images and masks.

    Attributes
    ----------
    root : Path
    samples : tuple of Sample
        Sorted by name.
    unpaired : tuple of str
        Image file names without a mask (skipped, reported).
    """

    root: Path
    samples: tuple[Sample, ...]
    unpaired: tuple[str, ...] = ()

    def find(self, name: str) -> Sample:
        """The sample called ``name`` (stem or file name of the image)."""
        for sample in self.samples:
            if name in (sample.name, sample.image_path.name):
                return sample
        known = ", ".join(sample.name for sample in self.samples[:10])
        more = " ..." if len(self.samples) > 10 else ""
        raise InputError(f"No image named {name!r} in {self.root}; images are: {known}{more}")


def _files_by_stem(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            if path.stem in files:
                raise InputError(
                    f"{folder} holds two files named {path.stem!r} ({files[path.stem].name} and "
                    f"{path.name}); keep one so images and masks pair up unambiguously."
                )
            files[path.stem] = path
    return files


def load_dataset(folder: str | os.PathLike) -> Dataset:
    """Pair ``folder/images/*`` with ``folder/masks/*`` by file stem.

    Raises
    ------
    ValueError
        If a subfolder is missing, or no image has a mask, saying what was found.
    """
    root = Path(folder)
    images_dir, masks_dir = root / "images", root / "masks"
    for sub in (images_dir, masks_dir):
        if not sub.is_dir():
            raise InputError(
                f"{sub} is not a folder: a dataset is a folder with images/ and masks/ "
                "subfolders whose files share names (images/a.jpg with masks/a.png)."
            )
    images = _files_by_stem(images_dir)
    masks = _files_by_stem(masks_dir)
    samples = tuple(
        Sample(name=stem, image_path=path, mask_path=masks[stem])
        for stem, path in images.items()
        if stem in masks
    )
    if not samples:
        raise InputError(
            f"No image in {images_dir} has a mask of the same name in {masks_dir} "
            f"({len(images)} images, {len(masks)} masks; suffixes {', '.join(IMAGE_SUFFIXES)})."
        )
    unpaired = tuple(path.name for stem, path in images.items() if stem not in masks)
    return Dataset(root=root, samples=samples, unpaired=unpaired)
