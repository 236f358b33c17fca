"""The one reader of images and masks, for every entry point.

``learn``, ``segment``, ``evaluate`` and the Python API read files through
:func:`read_image` and :func:`read_mask` only, so a file is the same array
everywhere. What an array is (image, stack, channels) follows :mod:`.layout`.

Images: TIFFs through tifffile (any dtype and layout), other formats through
Pillow: palette images become RGB(A), grey+alpha (``LA``) becomes grey (alpha is
not image content, as for RGBA), 16-bit PNGs stay uint16.

Masks come in many encodings: 0/1, 0/255 or 0/65535, palette indices, instance
label images, colour-coded labels, anti-aliased edges, JPEG noise. A mask is read
as labels only when it clearly is a label image: integer values, each forming an
object, that is a region at least 3 pixels thick, or one small solid blob (at
least 2 x 2 pixels, filling half its box). A value that is neither is an edge
shade or a stray pixel, not an object. Otherwise the mask is thresholded halfway
between its lowest and highest value. :class:`MaskImage` says which
reading was used, so a report can tell the user how to force the other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_persam.core.errors import InputError, option
from napari_persam.core.io.layout import Layout, layout_of

#: File suffixes read as images and masks (lower case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff")
LOSSY_SUFFIXES = (".jpg", ".jpeg")

#: JPEG masks: pixels brighter than this (on 0..255) are foreground.
DEFAULT_JPEG_THRESHOLD = 127

#: Readings of a mask file (:attr:`MaskImage.reading`).
BINARY = "binary"
LABELS = "labels"
THRESHOLD = "threshold"


@dataclass(frozen=True)
class MaskImage:
    """A mask as read from a file.

    Attributes
    ----------
    labels : (H, W) int32
        0 is background. For a binary mask the foreground is 1; for labels each
        object keeps its own value from the file.
    is_instances : bool
        True when read as labels with more than one nonzero value.
    reading : {"binary", "labels", "threshold"}
        How the file was read: two values (binary), a label image, or thresholded.
    threshold : float or None
        The threshold used for the ``"threshold"`` reading.
    note : str
        Why that reading (empty when the file left no choice).
    """

    labels: np.ndarray
    is_instances: bool
    reading: str = BINARY
    threshold: float | None = None
    note: str = ""

    @property
    def foreground(self) -> np.ndarray:
        """(H, W) bool: any object."""
        return self.labels != 0

    def summary(self) -> str:
        """A few words on how the file was read ("binary", "labels", "thresholded above 127")."""
        if self.reading == THRESHOLD:
            return f"thresholded above {self.threshold:g}"
        return self.reading


# ------------------------------------------------------------------------ files
def check_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path if it is a file; an InputError saying what it is otherwise."""
    file = Path(path)
    if file.is_dir():
        raise InputError(f"{file} is a folder, not a file; name an image file inside it.")
    if not file.exists():
        raise InputError(f"{file} does not exist.")
    return file


def read_stored(path: str | os.PathLike) -> tuple[np.ndarray, str | None]:
    """The pixel array of a file as stored, and its axis names when the file has them.

    Raises
    ------
    InputError
        If the file is missing, is a folder or cannot be decoded, naming it.
    """
    file = check_file(path)
    try:
        if file.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(file) as tiff:
                series = tiff.series[0]
                return np.asarray(series.asarray()), str(series.axes)
        from PIL import Image

        with Image.open(file) as image:
            return _pillow_array(image), None
    except InputError:
        raise
    except Exception as error:  # Pillow and tifffile raise many exception types
        raise InputError(f"Could not read {file}: {error}") from error


def stored_layout(path: str | os.PathLike) -> Layout:
    """The :class:`Layout` of an image file, reading only its header where possible."""
    file = check_file(path)
    try:
        if file.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(file) as tiff:
                series = tiff.series[0]
                return layout_of(series.shape, str(series.axes), name=file.name)
        from PIL import Image

        with Image.open(file) as image:
            bands = len(image.getbands())
            shape = (image.height, image.width) + ((bands,) if bands > 1 else ())
            return layout_of(shape, name=file.name)
    except InputError:
        raise
    except Exception as error:
        raise InputError(f"Could not read {file}: {error}") from error


def _pillow_array(image) -> np.ndarray:
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB")
    array = np.asarray(image)
    if image.mode in ("LA", "La", "PA"):
        array = array[..., 0]  # grey + alpha: alpha is not image content
    return array


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as one 2D image: (H, W) grey or (H, W, C) with channels last.

    Raises
    ------
    InputError
        If the file cannot be read or holds a stack (use a stack reader for those).
    """
    file = Path(path)
    array, axes = read_stored(file)
    layout = layout_of(array.shape, axes, name=file.name)
    if layout.is_stack:
        raise InputError(
            f"{file.name} is a stack of {layout.depth} slices (shape {array.shape}); one 2D "
            "image (H, W) or (H, W, C) is needed here. Save the slice you mean as its own "
            "file, or segment the stack as a target."
        )
    return layout.standardise(array)


# ------------------------------------------------------------------------ masks
def read_mask(
    path: str | os.PathLike,
    *,
    threshold: float | None = None,
    labels: bool | None = None,
) -> MaskImage:
    """Read a mask file and decide how it is encoded.

    Parameters
    ----------
    path : path
        PNG, TIFF, BMP or JPEG with one (H, W) mask. Colour masks (H, W, 3/4) are
        accepted: each distinct colour is one label, black is background.
    threshold : float, optional
        Binarise: pixels above it (in the file's values; colour masks by their
        channel mean) are foreground. Default: JPEG masks use
        :data:`DEFAULT_JPEG_THRESHOLD` (compression leaves no clean values); other
        masks are read as labels when they clearly are a label image, and
        thresholded halfway between their lowest and highest value otherwise.
    labels : bool, optional
        ``True`` reads the values as labels even when they do not look like one
        (each value an object); ``False`` never does. Ignored with ``threshold``.

    Raises
    ------
    InputError
        For a file that cannot be read, a stack, NaN values, or label values
        beyond int32, saying what to do.
    """
    file = Path(path)
    array, axes = read_stored(file)
    layout = layout_of(array.shape, axes, name=file.name)
    if layout.is_stack:
        raise InputError(
            f"Mask {file.name} is a stack of {layout.depth} slices (shape {array.shape}); "
            "one 2D mask (H, W) is needed. Save each slice's mask as its own file."
        )
    array = layout.standardise(array)
    colour = array.ndim == 3 and array.shape[-1] in (3, 4)
    if array.ndim == 3:
        array = _colour_mask(array, file.name, by_value=threshold is not None)
        colour = colour and array.dtype == np.int64  # distinct colours became ids
    if array.dtype.kind == "f" and np.isnan(array).any():
        raise InputError(f"Mask {file.name} contains NaN; use 0 for background.")
    if threshold is None and labels is not True and file.suffix.lower() in LOSSY_SUFFIXES:
        threshold = DEFAULT_JPEG_THRESHOLD
        note = "JPEG masks are always thresholded (compression blurs their values)"
        return _thresholded(array, threshold, note=note)
    if threshold is not None:
        return _thresholded(array, float(threshold), note="")
    if array.dtype == np.bool_:
        return MaskImage(array.astype(np.int32), is_instances=False)
    values = np.unique(array)
    nonzero = values[values != 0]
    if nonzero.size <= 1:
        return MaskImage((array != 0).astype(np.int32), is_instances=False)
    whole = array.dtype.kind in "biu" or bool(np.all(np.mod(nonzero, 1) == 0))
    if labels is True:
        if not whole:
            raise InputError(
                f"Mask {file.name} holds fractional values ({nonzero.size} distinct); it "
                f"cannot be read as labels. Give {option('mask_threshold')} to binarise it."
            )
        return _as_labels(array, values, file.name, note="read as labels as asked")
    if labels is None and whole:
        shapeless = _values_not_objects(array, nonzero)
        if not shapeless:
            return _as_labels(array, values, file.name, note="")
        example = ", ".join(f"{value:g}" for value in shapeless[:3])
        note = (
            f"not read as labels: value(s) {example}"
            f"{' ...' if len(shapeless) > 3 else ''} form no object (edge shades or stray "
            "pixels)"
        )
    elif labels is None:
        note = "not read as labels: fractional values"
    else:
        note = "not read as labels, as asked"
    if colour:
        return _thresholded(array, 0.0, note=note)  # colour ids have no order: any colour
    low, high = float(values.min()), float(values.max())
    return _thresholded(array, (low + high) / 2, note=note)


def _thresholded(array: np.ndarray, threshold: float, *, note: str) -> MaskImage:
    binary = (array > threshold).astype(np.int32)
    return MaskImage(binary, is_instances=False, reading=THRESHOLD, threshold=threshold, note=note)


def _as_labels(array: np.ndarray, values: np.ndarray, name: str, *, note: str) -> MaskImage:
    if values.min() < 0 or values.max() > np.iinfo(np.int32).max:
        raise InputError(
            f"Mask {name} has label values from {values.min()} to {values.max()}; labels "
            "must be non-negative and fit in int32. Give "
            f"{option('mask_threshold')} to binarise it."
        )
    return MaskImage(array.astype(np.int32), is_instances=True, reading=LABELS, note=note)


def _values_not_objects(array: np.ndarray, values: np.ndarray) -> list[float]:
    """Nonzero values that form no object (see the module docstring)."""
    thin = _values_without_interior(array, values)
    if not thin:
        return []
    from skimage.measure import label, regionprops

    subset = np.where(np.isin(array, thin), array, 0)
    regions: dict[float, list] = {}
    for region in regionprops(label(subset, background=0, connectivity=2)):
        y0, x0, y1, x1 = region.bbox
        value = float(subset[region.coords[0][0], region.coords[0][1]])
        regions.setdefault(value, []).append((region.area, y1 - y0, x1 - x0))
    bad = []
    for value in thin:
        parts = regions.get(value, [])
        blob = (
            len(parts) == 1
            and parts[0][0] >= 4
            and min(parts[0][1:]) >= 2
            and parts[0][0] >= 0.5 * parts[0][1] * parts[0][2]
        )
        if not blob:
            bad.append(value)
    return bad


def _values_without_interior(array: np.ndarray, values: np.ndarray) -> list[float]:
    """Nonzero values with no pixel whose 8 neighbours all share its value."""
    if min(array.shape) < 3:
        return [float(value) for value in values]
    core = array[1:-1, 1:-1]
    same = core != 0
    height, width = array.shape
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if dy == dx == 1:
                continue
            same &= array[dy : height - 2 + dy, dx : width - 2 + dx] == core
    inside = set(np.unique(core[same]).tolist())
    return [float(value) for value in values if value.item() not in inside]


def _colour_mask(array: np.ndarray, name: str, *, by_value: bool) -> np.ndarray:
    """A (H, W, C) mask as one (H, W) array: grey if channels agree, colour ids otherwise."""
    channels = array.shape[-1]
    if channels == 2:
        return array[..., 0]  # grey + alpha
    if channels not in (3, 4):
        raise InputError(
            f"Mask {name} has {channels} channels (shape {array.shape}); a mask is one "
            "(H, W) image, grey or colour-coded."
        )
    rgb = array[..., :3]
    first = rgb[..., 0]
    if np.array_equal(first, rgb[..., 1]) and np.array_equal(first, rgb[..., 2]):
        return first
    if by_value:
        return rgb.mean(axis=-1)  # grey as the channel mean: JPEG noise differs per channel
    if rgb.dtype.itemsize > 1:
        raise InputError(
            f"Colour mask {name} has more than 8 bits per channel; save it as a grey label "
            f"image, or give {option('mask_threshold')} to binarise it."
        )
    wide = rgb.astype(np.int64)
    return (wide[..., 0] << 16) | (wide[..., 1] << 8) | wide[..., 2]
