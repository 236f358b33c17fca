"""Reading images and ground-truth masks from files, whatever their encoding.

Datasets store masks in many ways: 0/1, 0/255 or 0/65535 PNGs, 8- or 16-bit TIFFs,
palette PNGs whose pixel values are palette indices, instance label images, and
JPEGs whose lossy compression blurs the two values into many (they need a
threshold). :func:`read_mask` turns all of them into one (H, W) int32 label image
and says whether it holds a binary mask or instances.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: File suffixes read as images and masks (lower case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff")
LOSSY_SUFFIXES = (".jpg", ".jpeg")

#: JPEG masks: pixels brighter than this (on 0..255) are foreground.
DEFAULT_JPEG_THRESHOLD = 127


@dataclass(frozen=True)
class MaskImage:
    """A ground-truth mask as read from a file.

    Attributes
    ----------
    labels : (H, W) int32
        0 is background. For a binary mask the foreground is 1; for instance
        labels each object keeps its own id from the file.
    is_instances : bool
        True when the file holds more than one nonzero value (instance labels).
    """

    labels: np.ndarray
    is_instances: bool

    @property
    def foreground(self) -> np.ndarray:
        """(H, W) bool: any object."""
        return self.labels != 0


def read_array(path: str | os.PathLike) -> np.ndarray:
    """The pixel array of an image file, as stored.

    TIFFs are read with tifffile (any dtype, any number of dimensions); other
    formats with Pillow, keeping palette PNGs as palette indices and 16-bit PNGs
    as uint16.

    Raises
    ------
    ValueError
        If the file is missing or cannot be decoded, naming it.
    """
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{file} does not exist or is not a file.")
    try:
        if file.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            return np.asarray(tifffile.imread(file))
        from PIL import Image

        with Image.open(file) as image:
            return np.asarray(image)
    except Exception as error:  # Pillow and tifffile raise many exception types
        raise ValueError(f"Could not read {file}: {error}") from error


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as a 2D array: (H, W) grey or (H, W, C) with C channels last.

    A single-plane TIFF stored as (1, H, W) is squeezed; anything with more
    dimensions is refused with a message (stacks are evaluated in napari).
    """
    array = read_array(path)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and array.shape[-1] > 4 and array.shape[0] <= 4:
        array = np.moveaxis(array, 0, -1)  # TIFF stored channels first (C, H, W)
    if array.ndim not in (2, 3):
        raise ValueError(
            f"{Path(path).name} has shape {array.shape}; expected one 2D image (H, W) or "
            "(H, W, C). Save each slice of a stack as its own file, or compare stacks in "
            "napari with the Evaluate widget."
        )
    return array


def read_mask(path: str | os.PathLike, *, threshold: float | None = None) -> MaskImage:
    """Read a ground-truth mask and decode its convention.

    Parameters
    ----------
    path : path
        PNG, TIFF, BMP or JPEG file with one (H, W) mask. Colour masks (H, W, 3/4)
        are accepted: each distinct colour is one label, black is background.
    threshold : float, optional
        Binarise: pixels above it (in the file's values; colour masks by their
        channel mean) are foreground. Default: JPEG masks use
        ``DEFAULT_JPEG_THRESHOLD`` on their grey values (compression leaves no
        clean two values); lossless masks are taken as they are.

    Returns
    -------
    MaskImage
        Binary masks (two values, e.g. 0/1, 0/255, 0/65535) become 0/1; masks with
        more values are instance labels, each id kept.

    Raises
    ------
    ValueError
        For a file that cannot be read, a stack, float masks with many values and
        no threshold, or ids beyond int32.
    """
    file = Path(path)
    array = read_array(file)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    lossy = file.suffix.lower() in LOSSY_SUFFIXES
    if threshold is None and lossy:
        threshold = DEFAULT_JPEG_THRESHOLD
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        array = array[..., :3]
        if threshold is not None or _channels_equal(array):
            # Grey as the channel mean: JPEG noise differs per channel.
            array = array.mean(axis=-1) if threshold is not None else array[..., 0]
        else:
            array = _colour_ids(array)
    if array.ndim != 2:
        raise ValueError(
            f"Mask {file.name} has shape {array.shape}; expected one 2D mask (H, W). "
            "Save each slice of a stack as its own file."
        )
    if array.dtype.kind == "f" and np.isnan(array).any():
        raise ValueError(f"Mask {file.name} contains NaN; use 0 for background.")
    if threshold is not None:
        return MaskImage(labels=(array > threshold).astype(np.int32), is_instances=False)
    if array.dtype == np.bool_:
        return MaskImage(labels=array.astype(np.int32), is_instances=False)
    values = np.unique(array)
    nonzero = values[values != 0]
    if nonzero.size <= 1:
        return MaskImage(labels=(array != 0).astype(np.int32), is_instances=False)
    if array.dtype.kind == "f" and not np.all(np.mod(nonzero, 1) == 0):
        raise ValueError(
            f"Mask {file.name} is a float image with {nonzero.size} foreground values; "
            "give a threshold (--mask-threshold) to binarise it."
        )
    if values.min() < 0 or values.max() > np.iinfo(np.int32).max:
        raise ValueError(
            f"Mask {file.name} has label values from {values.min()} to {values.max()}; "
            "instance labels must be non-negative and fit in int32."
        )
    return MaskImage(labels=array.astype(np.int32), is_instances=True)


def _channels_equal(rgb: np.ndarray) -> bool:
    first = rgb[..., 0]
    return bool(np.array_equal(first, rgb[..., 1]) and np.array_equal(first, rgb[..., 2]))


def _colour_ids(rgb: np.ndarray) -> np.ndarray:
    """One integer per colour (black stays 0), so colour-coded masks become labels."""
    channels = rgb.astype(np.int64)
    if rgb.dtype.itemsize > 1:
        raise ValueError(
            "Colour masks with more than 8 bits per channel are not supported; "
            "save the mask as a grey label image."
        )
    return (channels[..., 0] << 16) | (channels[..., 1] << 8) | channels[..., 2]
