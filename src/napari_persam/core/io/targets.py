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

from napari_persam.core.errors import InputError
from napari_persam.core.io.images import IMAGE_SUFFIXES, TIFF_SUFFIXES, stored_layout
from napari_persam.core.io.layout import layout_of

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
    kind : {"image", "zarr_image", "tiff_stack", "zarr_stack"}
        A 2D image (grey, RGB(A) or more channels) in a file or a zarr array, or a
        stack sliced along its slice axis.
    name : str
        Base name of its outputs (file name without suffix).
    axes : str or None
        Axis letters the data states (OME-Zarr's ``axes``), else ``None``.
    """

    path: str
    kind: str
    name: str
    axes: str | None = None

    @property
    def is_stack(self) -> bool:
        return self.kind.endswith("_stack")


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
            ome = _ome_zarr_target(spec)
            if ome is not None:
                found.setdefault(os.path.abspath(ome.path), ome)
                continue
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
            return _zarr_target(path, _strip_suffix(stem, ".zarr"), axes=None)
        return _ome_zarr_target(path)
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


def _zarr_target(path: str, name: str, *, axes: str | None) -> Target | None:
    try:
        import zarr

        shape = zarr.open_array(path, mode="r").shape
        layout = layout_of(shape, axes, name=name)
    except Exception:  # unreadable or not an image: not a target
        return None
    return Target(path=path, kind="zarr_stack" if layout.is_stack else "zarr_image", name=name,
                  axes=axes)  # fmt: skip


def _ome_zarr_target(path: str) -> Target | None:
    """The full-resolution array of an OME-Zarr image group, with its axis names."""
    attributes = _zarr_attributes(path)
    multiscales = attributes.get("multiscales") or attributes.get("ome", {}).get("multiscales")
    if not isinstance(multiscales, list) or not multiscales:
        return None
    first = multiscales[0]
    datasets = first.get("datasets") or []
    if not datasets or "path" not in datasets[0]:
        return None
    axes = "".join(
        (axis["name"] if isinstance(axis, dict) else str(axis))[:1].upper()
        for axis in first.get("axes", [])
    )
    stem = _strip_suffix(Path(path.rstrip("/\\")).name, ".zarr")
    array = os.path.join(path, str(datasets[0]["path"]))
    return _zarr_target(array, stem, axes=axes or None)


def _zarr_attributes(path: str) -> dict:
    for name, key in (("zarr.json", "attributes"), (".zattrs", None)):
        file = os.path.join(path, name)
        if os.path.isfile(file):
            try:
                with open(file, encoding="utf-8") as stream:
                    content = json.load(stream)
            except (OSError, ValueError):
                return {}
            content = content.get(key, {}) if key else content
            return content if isinstance(content, dict) else {}
    return {}


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
