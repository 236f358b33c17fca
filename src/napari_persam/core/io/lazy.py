"""Reading large targets window by window: TIFF images and stacks, zarr and OME-Zarr.

A 20-GB volume never has to fit in memory: a stack is a :class:`StackView` whose
slices are :class:`SliceView` objects, and a large 2D image is opened as a lazy
array (tifffile's zarr view of the file, or the zarr array itself). Indexing any of
them reads only the chunks of the window asked for, in the standard (Y, X[, C])
form of :mod:`.layout`; ``numpy.asarray`` reads the whole slice or image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_persam.core.io.images import read_image
from napari_persam.core.io.layout import Layout, layout_of
from napari_persam.core.io.targets import Target

#: Images with more pixels than this are opened lazily (read window by window).
LAZY_PIXELS = 64_000_000


class SliceView:
    """One slice (or one 2D image) of a stored array, in (Y, X[, C]) form, read on demand.

    Parameters
    ----------
    array : array-like
        The stored array (zarr: slicing it reads only the chunks needed).
    layout : Layout
        Its layout.
    z : int or None
        The slice; ``None`` for a 2D image.
    """

    def __init__(self, array: Any, layout: Layout, z: int | None = None) -> None:
        self.array = array
        self.layout = layout
        self.z = z
        shape = layout.shape[1:] if layout.is_stack else layout.shape
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(array.dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key) -> np.ndarray:
        """``key``: a tuple of slices over (Y, X[, C]); returns a numpy array."""
        if not isinstance(key, tuple):
            key = (key,)
        wanted = dict(zip("YXC", key))
        where = []
        for axis in self.layout.axes:
            if axis == "Z":
                where.append(self.z)
            elif axis == "1":
                where.append(0)
            else:
                where.append(wanted.get(axis, slice(None)))
        block = np.asarray(self.array[tuple(where)])
        letters = [
            a for a, w in zip(self.layout.axes, where) if a in "YXC" and not isinstance(w, int)
        ]
        order = [letters.index(axis) for axis in "YXC" if axis in letters]
        return np.transpose(block, order)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[(slice(None), slice(None))]
        return whole if dtype is None else whole.astype(dtype)


class StackView:
    """A stack on disk in the standard (Z, Y, X[, C]) form, one slice at a time.

    ``view[z]`` is slice ``z`` as a :class:`SliceView` (nothing read yet; index it
    for a window, or ``numpy.asarray`` it for the whole slice); ``shape`` and
    ``len`` come from the file's header.
    """

    def __init__(self, array: Any, layout: Layout) -> None:
        self.array = array
        self.layout = layout

    @property
    def shape(self) -> tuple[int, ...]:
        return self.layout.shape

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.layout.depth

    def __getitem__(self, index: int) -> SliceView:
        depth = len(self)
        if not -depth <= int(index) < depth:
            raise IndexError(f"slice {index} is outside the stack's {depth} slices")
        return SliceView(self.array, self.layout, int(index) % depth)


def _zarr_array(target: Target) -> tuple[Any, Layout]:
    import zarr

    if target.kind in ("zarr_stack", "zarr_image"):
        array = zarr.open_array(target.path, mode="r")
        return array, layout_of(array.shape, target.axes, name=target.name)
    import tifffile

    with tifffile.TiffFile(target.path) as tiff:
        series = tiff.series[0]
        layout = layout_of(series.shape, str(series.axes), name=Path(target.path).name)
        store = series.aszarr(level=0)  # a pyramid's full resolution
    return zarr.open(store, mode="r"), layout


def open_stack(target: Target) -> StackView:
    """A lazily read (Z, Y, X[, C]) view of a stack target."""
    if not target.is_stack:
        raise ValueError(f"{target.path!r} is not a stack.")
    return StackView(*_zarr_array(target))


def stack_shape(target: Target) -> tuple[int, ...]:
    """Standard shape (Z, Y, X[, C]) of a stack target without reading its pixels."""
    return open_stack(target).shape


def read_slice(target: Target, index: int) -> np.ndarray:
    """Slice ``index`` of a stack target, (Y, X) or (Y, X, C); only that slice is read."""
    return np.asarray(open_stack(target)[index])


def open_image(target: Target, *, lazy_pixels: int = LAZY_PIXELS):
    """A 2D image target: a numpy array, or a lazy :class:`SliceView` when it is large.

    Large TIFFs and zarr arrays are read window by window by the tiled engine, so
    an 8192 x 8192 field never needs a full copy in memory beside its tiles.
    """
    if target.is_stack:
        raise ValueError(f"{target.path!r} is a stack, not an image.")
    suffix = Path(target.path).suffix.lower()
    if target.kind == "image" and suffix not in (".tif", ".tiff"):
        return read_image(target.path)
    array, layout = _zarr_array(target)
    height, width = layout.shape[:2]
    if height * width <= lazy_pixels:
        return np.asarray(SliceView(array, layout))
    return SliceView(array, layout)


def target_shape(target: Target) -> tuple[int, ...]:
    """Standard shape of a target, (Y, X[, C]) or (Z, Y, X[, C]), from its header only."""
    if target.kind == "image":
        from napari_persam.core.io.images import stored_layout

        return stored_layout(target.path).shape
    return _zarr_array(target)[1].shape
