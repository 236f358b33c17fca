"""What an array read from a file is: one image or a stack, and where its channels are.

One rule for every entry point (``learn``, ``segment``, ``evaluate``, the API), so a
file is never an image to one command and a stack to another. Standard forms:

* an image is (Y, X) or (Y, X, C), channels last;
* a stack is (Z, Y, X) or (Z, Y, X, C), slices first.

Axis names are trusted only when a file states them: ImageJ and OME metadata
(``Z``, ``C``, ``T``...) and TIFF colour samples (``S``). Where a file names no
axes (tifffile calls them ``Q``; PNGs, plain zarr arrays), the shape decides, after
axes of length 1 are dropped:

* 2 axes: an image;
* 3 axes (a, b, c): channels last when c is at most 4, or at most
  :data:`MAX_CHANNELS` and a quarter of the shorter side or less ((288, 384, 5)
  is a 5-channel image); otherwise a stack of a slices ((5, 288, 384));
* 4 axes (z, y, x, c) with c as above: a stack with channels; other 4-axis
  shapes, and 5 or more axes, are refused with a message saying what to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_persam.core.errors import InputError

#: The most channels an unnamed last axis may have.
MAX_CHANNELS = 16
#: Axis letters that hold channels, and that hold slices (tifffile's names).
CHANNEL_AXES = "SC"
SPATIAL_AXES = "YX"
#: Axis letters that carry no information about what the axis is.
UNNAMED_AXES = "Q"


@dataclass(frozen=True)
class Layout:
    """How a stored array maps to the standard image or stack form.

    Attributes
    ----------
    kind : {"image", "stack"}
    stored_shape : tuple of int
        The array's shape as stored.
    axes : str
        One letter per stored axis: ``Z`` (slices), ``Y``, ``X``, ``C`` (channels)
        or ``1`` (length one, dropped).
    """

    kind: str
    stored_shape: tuple[int, ...]
    axes: str

    @property
    def shape(self) -> tuple[int, ...]:
        """The standard shape: (Y, X[, C]) or (Z, Y, X[, C])."""
        sizes = dict(zip(self.axes, self.stored_shape))
        return tuple(sizes[axis] for axis in self._order)

    @property
    def is_stack(self) -> bool:
        return self.kind == "stack"

    @property
    def depth(self) -> int:
        """Slices of a stack (1 for an image)."""
        return self.shape[0] if self.is_stack else 1

    @property
    def _order(self) -> str:
        return "".join(axis for axis in "ZYXC" if axis in self.axes)

    def standardise(self, array: np.ndarray) -> np.ndarray:
        """``array`` (as stored) in the standard order, length-one axes dropped."""
        array = np.asarray(array)
        if array.shape != self.stored_shape:
            raise ValueError(f"array of shape {array.shape} is not {self.stored_shape}")
        kept = [i for i, axis in enumerate(self.axes) if axis != "1"]
        squeezed = array.reshape([array.shape[i] for i in kept])
        letters = [self.axes[i] for i in kept]
        return np.transpose(squeezed, [letters.index(axis) for axis in self._order])

    def standardise_slice(self, plane: np.ndarray) -> np.ndarray:
        """One slice of a stack, as read by indexing the stored array at its Z position.

        ``plane`` holds the stored axes other than Z, in stored order.
        """
        if not self.is_stack:
            raise ValueError("standardise_slice is for stacks")
        letters = [axis for axis in self.axes if axis != "Z"]
        shape = [size for size, axis in zip(self.stored_shape, self.axes) if axis != "Z"]
        plane = np.asarray(plane).reshape(shape)
        kept = [i for i, axis in enumerate(letters) if axis != "1"]
        plane = plane.reshape([shape[i] for i in kept])
        names = [letters[i] for i in kept]
        return np.transpose(plane, [names.index(axis) for axis in "YXC" if axis in names])

    @property
    def z_axis(self) -> int:
        """Index of the slice axis in the stored array."""
        return self.axes.index("Z")


def layout_of(shape: Sequence[int], axes: str | None = None, *, name: str = "the array") -> Layout:
    """The :class:`Layout` of an array of ``shape``; ``axes`` as the file names them.

    Parameters
    ----------
    shape : sequence of int
        Stored shape.
    axes : str, optional
        One letter per axis from the file's metadata (tifffile's ``series.axes``).
        Letters that name nothing (``Q``) leave the decision to the shape.
    name : str
        How to name the array in messages (its file name).

    Raises
    ------
    InputError
        For arrays that are neither an image nor a stack, saying what was found.
    """
    shape = tuple(int(size) for size in shape)
    if axes is not None and len(axes) == len(shape) and _named(axes):
        return _from_axes(shape, axes.upper(), name)
    return _from_shape(shape, name)


def _named(axes: str) -> bool:
    """Whether ``axes`` says more than tifffile's shape-only guess (Q..QYX)."""
    letters = set(axes.upper())
    return bool(letters - set(UNNAMED_AXES + SPATIAL_AXES)) or not letters & set(UNNAMED_AXES)


def _from_axes(shape: tuple[int, ...], axes: str, name: str) -> Layout:
    letters = []
    for size, axis in zip(shape, axes):
        if axis in SPATIAL_AXES:
            letters.append(axis)
        elif size == 1:
            letters.append("1")
        elif axis in CHANNEL_AXES:
            letters.append("C")
        else:
            letters.append("Z")
    if letters.count("Y") != 1 or letters.count("X") != 1:
        return _from_shape(shape, name)
    if letters.count("C") > 1:
        raise InputError(
            f"{name} has colour samples and channels ({_describe(shape, axes)}); save one "
            "channel, or one RGB image, per file."
        )
    if letters.count("Z") > 1:
        raise InputError(
            f"{name} has more than one axis of slices ({_describe(shape, axes)}), e.g. time "
            "and depth; save one stack (Z, Y, X) per file, or one time point per file."
        )
    kind = "stack" if "Z" in letters else "image"
    return Layout(kind, shape, "".join(letters))


def _from_shape(shape: tuple[int, ...], name: str) -> Layout:
    kept = [size for size in shape if size != 1]
    letters = ["1"] * len(shape)
    positions = [i for i, size in enumerate(shape) if size != 1]
    if len(kept) < 2:
        # A line or a single pixel: keep the last two axes as (Y, X) so the size check
        # downstream names the real shape ("too thin").
        positions = list(range(len(shape)))[-2:]
        kept = [shape[i] for i in positions]
        if len(positions) < 2:
            raise InputError(f"{name} has shape {shape}; an image needs two dimensions (Y, X).")
    if len(kept) == 2:
        names = "YX"
    elif len(kept) == 3:
        names = "YXC" if _channels_last(kept) else "ZYX"
    elif len(kept) == 4 and _channels_last(kept[1:]):
        names = "ZYXC"
    else:
        raise InputError(
            f"{name} has shape {shape}, which is neither an image (Y, X[, C]) nor a stack "
            "(Z, Y, X[, C]) without axis names; save it with its axes (an ImageJ or OME "
            "TIFF), or as one stack or image per file."
        )
    for position, letter in zip(positions, names):
        letters[position] = letter
    kind = "stack" if "Z" in names else "image"
    return Layout(kind, shape, "".join(letters))


def _channels_last(shape: Sequence[int]) -> bool:
    height, width, last = shape[-3], shape[-2], shape[-1]
    return last <= 4 or (last <= MAX_CHANNELS and 4 * last <= min(height, width))


def _describe(shape: tuple[int, ...], axes: str) -> str:
    return ", ".join(f"{axis}={size}" for axis, size in zip(axes, shape))
