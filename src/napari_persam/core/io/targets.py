"""Finding the inputs of a batch run, and reading stacks one slice at a time.

Targets are 2D image files (TIFF, PNG, JPEG, BMP), TIFF stacks and zarr arrays;
what is a stack follows the one rule of :mod:`.layout`. Stacks are read one slice
at a time (a TIFF through tifffile's zarr view, so compressed and tiled files work
too), so a stack larger than memory never has to fit.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_persam.core.errors import InputError
from napari_persam.core.io.images import IMAGE_SUFFIXES, TIFF_SUFFIXES, stored_layout
from napari_persam.core.io.layout import Layout, layout_of

_GLOB_CHARACTERS = "*?["


class TargetError(InputError):
    """A target spec that names nothing usable (a bad argument, not a failed input)."""


@dataclass(frozen=True)
class Target:
    """One input found on disk.

    Attributes
    ----------
    path : str
        The file or zarr array folder.
    kind : {"image", "tiff_stack", "zarr_stack"}
        A 2D image (grey or RGB(A)), or a stack sliced along its first axis.
    name : str
        Base name of its outputs (file name without suffix).
    """

    path: str
    kind: str
    name: str

    @property
    def is_stack(self) -> bool:
        return self.kind != "image"


# ------------------------------------------------------------------------- finding
def resolve_targets(specs: Sequence[str]) -> list[Target]:
    """Turn paths, globs, folders, TIFF stacks and zarr arrays into targets.

    Parameters
    ----------
    specs : sequence of str
        Each one a file, a glob pattern (``"data/*.png"``, ``"**"`` recurses), a
        folder (its image files and zarr arrays, not recursing), a TIFF stack, or a
        zarr array folder (``STORE.zarr`` or ``STORE.zarr/path/to/array``).

    Returns
    -------
    list of Target
        In the order given, each spec's matches sorted by name; duplicates dropped.

    Raises
    ------
    TargetError
        When a spec matches nothing or names something that is not an image,
        saying what was expected (the message starts with the spec).
    """
    found: dict[str, Target] = {}
    for spec in specs:
        if any(character in spec for character in _GLOB_CHARACTERS) and not os.path.exists(spec):
            matches = sorted(glob.glob(spec, recursive=True))
            usable = [match for match in matches if _target_or_none(match) is not None]
            if not usable:
                raise TargetError(
                    f"{spec!r} matches no image files ({', '.join(IMAGE_SUFFIXES)}) or zarr arrays."
                )
            for match in usable:
                target = _target_or_none(match)
                assert target is not None
                found.setdefault(os.path.abspath(match), target)
            continue
        if not os.path.exists(spec):
            raise TargetError(f"{spec!r}: no such file or folder.")
        target = _target_or_none(spec)
        if target is not None:
            found.setdefault(os.path.abspath(spec), target)
            continue
        if os.path.isdir(spec):
            if _zarr_node_type(spec) == "group":
                arrays = ", ".join(sorted(_zarr_children(spec))) or "none"
                raise TargetError(
                    f"{spec!r} is a zarr group, not an array; name the array inside it, e.g. "
                    f"{os.path.join(spec, 'NAME')} (arrays here: {arrays})."
                )
            children = sorted(os.listdir(spec))
            inside = [
                target
                for child in children
                if (target := _target_or_none(os.path.join(spec, child))) is not None
            ]
            if not inside:
                raise TargetError(
                    f"{spec!r} is a folder without image files ({', '.join(IMAGE_SUFFIXES)}) "
                    "or zarr arrays."
                )
            for target in inside:
                found.setdefault(os.path.abspath(target.path), target)
            continue
        raise TargetError(
            f"{spec!r} is not an image file; use {', '.join(IMAGE_SUFFIXES)}, a TIFF stack "
            "or a zarr array."
        )
    return list(found.values())


def _target_or_none(path: str) -> Target | None:
    stem = Path(path.rstrip("/\\")).name
    if os.path.isdir(path):
        if _zarr_node_type(path) == "array":
            return Target(path=path, kind="zarr_stack", name=_strip_suffix(stem, ".zarr"))
        return None
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        return None
    kind = "image"
    if suffix in TIFF_SUFFIXES and _is_stack(path):
        kind = "tiff_stack"
    return Target(path=path, kind=kind, name=Path(path).stem)


def _strip_suffix(name: str, suffix: str) -> str:
    return name[: -len(suffix)] if name.lower().endswith(suffix) and name != suffix else name


def _is_stack(path: str) -> bool:
    try:
        return stored_layout(path).is_stack
    except InputError:  # unreadable or unusable: reported when it is read, as a failed input
        return False


def _zarr_node_type(path: str) -> str | None:
    v3 = os.path.join(path, "zarr.json")
    if os.path.isfile(v3):
        try:
            with open(v3, encoding="utf-8") as stream:
                return str(json.load(stream).get("node_type"))
        except (OSError, ValueError):
            return None
    if os.path.isfile(os.path.join(path, ".zarray")):
        return "array"
    if os.path.isfile(os.path.join(path, ".zgroup")):
        return "group"
    return None


def _zarr_children(path: str) -> list[str]:
    return [
        child
        for child in os.listdir(path)
        if _zarr_node_type(os.path.join(path, child)) in ("array", "group")
    ]


# ------------------------------------------------------------------------- reading
class StackView:
    """A stack on disk in the standard (Z, Y, X[, C]) form, read one slice at a time.

    ``view[z]`` reads slice ``z`` only and returns it as a numpy (Y, X[, C]) array;
    ``shape`` and ``len`` come from the file's header.

    Parameters
    ----------
    array : array-like
        The stored array (a zarr array; slicing it reads only what is asked).
    layout : Layout
        Its layout (see :mod:`.layout`).
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

    def __getitem__(self, index: int) -> np.ndarray:
        depth = len(self)
        if not -depth <= int(index) < depth:
            raise IndexError(f"slice {index} is outside the stack's {depth} slices")
        where = [slice(None)] * len(self.layout.stored_shape)
        where[self.layout.z_axis] = int(index) % depth
        return self.layout.standardise_slice(np.asarray(self.array[tuple(where)]))


def open_stack(target: Target) -> StackView:
    """A lazily read (Z, Y, X[, C]) view of a stack target."""
    import zarr

    if target.kind == "zarr_stack":
        array = zarr.open_array(target.path, mode="r")
        return StackView(array, layout_of(array.shape, name=target.name))
    if target.kind == "tiff_stack":
        import tifffile

        with tifffile.TiffFile(target.path) as tiff:
            series = tiff.series[0]
            layout = layout_of(series.shape, str(series.axes), name=Path(target.path).name)
            store = series.aszarr()
        return StackView(zarr.open(store, mode="r"), layout)
    raise ValueError(f"{target.path!r} is not a stack.")


def stack_shape(target: Target) -> tuple[int, ...]:
    """Standard shape (Z, Y, X[, C]) of a stack target without reading its pixels."""
    if target.kind == "tiff_stack":
        return stored_layout(target.path).shape
    return open_stack(target).shape


def read_slice(target: Target, index: int) -> np.ndarray:
    """Slice ``index`` of a stack target, (Y, X) or (Y, X, C); only that slice is read."""
    return open_stack(target)[index]
