"""Files in and out of batch runs: finding targets, reading images and slices, writing labels.

Targets are 2D image files (TIFF, PNG, JPEG, BMP), TIFF stacks and zarr arrays.
Stacks are read one slice at a time (a TIFF through tifffile's zarr view, so
compressed and tiled files work too) and written one slice at a time into a zarr
array with one chunk per slice, so a stack larger than memory never has to fit.
Every file written is written under a temporary name and renamed into place, so a
killed run never leaves a half-written file under a finished name.
"""

from __future__ import annotations

import glob
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff")
# Labels keep the input's suffix where it is lossless; JPEG and BMP inputs get PNG labels.
_LABEL_SUFFIX = {".tif": ".tif", ".tiff": ".tiff", ".png": ".png"}
_GLOB_CHARACTERS = "*?["
#: Attribute that marks a zarr array as written by napari-persam (so resuming may reuse it).
ZARR_MARK = "napari_persam"


class TargetError(ValueError):
    """A ``--targets`` entry that names nothing usable (a bad argument, not a failed input)."""


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
        saying what was expected.
    """
    found: dict[str, Target] = {}
    for spec in specs:
        if any(character in spec for character in _GLOB_CHARACTERS) and not os.path.exists(spec):
            matches = sorted(glob.glob(spec, recursive=True))
            usable = [match for match in matches if _target_or_none(match) is not None]
            if not usable:
                raise TargetError(
                    f"--targets {spec!r} matches no image files ({', '.join(IMAGE_SUFFIXES)}) "
                    "or zarr arrays."
                )
            for match in usable:
                target = _target_or_none(match)
                assert target is not None
                found.setdefault(os.path.abspath(match), target)
            continue
        if not os.path.exists(spec):
            raise TargetError(f"--targets {spec!r}: no such file or folder.")
        target = _target_or_none(spec)
        if target is not None:
            found.setdefault(os.path.abspath(spec), target)
            continue
        if os.path.isdir(spec):
            if _zarr_node_type(spec) == "group":
                arrays = ", ".join(sorted(_zarr_children(spec))) or "none"
                raise TargetError(
                    f"--targets {spec!r} is a zarr group, not an array; name the array inside "
                    f"it, e.g. {os.path.join(spec, 'NAME')} (arrays here: {arrays})."
                )
            children = sorted(os.listdir(spec))
            inside = [
                target
                for child in children
                if (target := _target_or_none(os.path.join(spec, child))) is not None
            ]
            if not inside:
                raise TargetError(
                    f"--targets {spec!r} is a folder without image files "
                    f"({', '.join(IMAGE_SUFFIXES)}) or zarr arrays."
                )
            for target in inside:
                found.setdefault(os.path.abspath(target.path), target)
            continue
        raise TargetError(
            f"--targets {spec!r} is not an image file; use {', '.join(IMAGE_SUFFIXES)}, "
            "a TIFF stack or a zarr array."
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
    if suffix in TIFF_SUFFIXES and _tiff_is_stack(path):
        kind = "tiff_stack"
    return Target(path=path, kind=kind, name=Path(path).stem)


def _strip_suffix(name: str, suffix: str) -> str:
    return name[: -len(suffix)] if name.lower().endswith(suffix) and name != suffix else name


def _tiff_is_stack(path: str) -> bool:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            shape = tiff.series[0].shape
    except Exception:  # unreadable: reported when the image is read, as a failed input
        return False
    return is_stack_shape(shape)


def is_stack_shape(shape: Sequence[int]) -> bool:
    """Whether an array of ``shape`` is a stack: (Z, H, W) or (Z, H, W, 3|4), not (H, W, 3|4)."""
    if len(shape) == 3:
        return shape[-1] not in (3, 4)
    return len(shape) == 4 and shape[-1] in (3, 4)


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
def read_image(path: str | os.PathLike) -> np.ndarray:
    """A 2D image file as an array: (H, W) grey or (H, W, C); palette images become RGB."""
    source = os.fspath(path)
    if Path(source).suffix.lower() in TIFF_SUFFIXES:
        import tifffile

        return np.asarray(tifffile.imread(source))
    from PIL import Image

    with Image.open(source) as image:
        if image.mode == "P":
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        return np.asarray(image)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask file as (H, W) bool, nonzero = object.

    Palette PNGs count palette indices (not colours); RGB masks count any nonzero
    channel; JPEG masks, blurred by compression, are thresholded at 128.
    """
    source = os.fspath(path)
    suffix = Path(source).suffix.lower()
    if suffix in TIFF_SUFFIXES:
        import tifffile

        array = np.asarray(tifffile.imread(source))
    else:
        from PIL import Image

        with Image.open(source) as image:
            array = np.asarray(image)
    if array.ndim == 3:
        array = array[..., :3].max(axis=-1) if array.shape[-1] in (3, 4) else array
    if array.ndim != 2:
        raise ValueError(f"Mask {source!r} has shape {array.shape}; a 2D mask (H, W) is needed.")
    if suffix in (".jpg", ".jpeg"):
        return array >= 128
    return array != 0


def open_stack(target: Target) -> Any:
    """A lazily read array for a stack target (zarr array; slicing reads only what is asked)."""
    import zarr

    if target.kind == "zarr_stack":
        return zarr.open_array(target.path, mode="r")
    if target.kind == "tiff_stack":
        import tifffile

        with tifffile.TiffFile(target.path) as tiff:
            store = tiff.series[0].aszarr()
        return zarr.open(store, mode="r")
    raise ValueError(f"{target.path!r} is not a stack.")


def stack_shape(target: Target) -> tuple[int, ...]:
    """Shape of a stack target without reading its pixels."""
    if target.kind == "tiff_stack":
        import tifffile

        with tifffile.TiffFile(target.path) as tiff:
            return tuple(int(v) for v in tiff.series[0].shape)
    return tuple(int(v) for v in open_stack(target).shape)


def read_slice(target: Target, index: int) -> np.ndarray:
    """Slice ``index`` of a stack target, (H, W) or (H, W, C); only that slice is read."""
    if target.kind == "tiff_stack":
        import tifffile

        with tifffile.TiffFile(target.path) as tiff:
            series = tiff.series[0]
            # One page per slice is the common layout and the cheapest read.
            if len(series.pages) == series.shape[0]:
                return np.asarray(series.pages[index].asarray())
            store = series.aszarr()
            import zarr

            return np.asarray(zarr.open(store, mode="r")[index])
    return np.asarray(open_stack(target)[index])


# ------------------------------------------------------------------------- writing
def label_suffix(path: str) -> str:
    """Suffix of the label file written for an image file (lossless: TIFF or PNG)."""
    return _LABEL_SUFFIX.get(Path(path).suffix.lower(), ".png")


def write_labels(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Write a (H, W) label image to a TIFF or PNG file atomically.

    PNG holds at most 16 bits: labels above 65535 need a TIFF output.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.{uuid.uuid4().hex}.partial{target.suffix}")
    try:
        if target.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            tifffile.imwrite(tmp, labels, compression="zlib")
        else:
            from PIL import Image

            if labels.max(initial=0) > np.iinfo(np.uint16).max:
                raise ValueError(
                    f"{int(labels.max())} labels do not fit a 16-bit PNG; write TIFF outputs."
                )
            small = labels.astype(np.uint8 if labels.max(initial=0) <= 255 else np.uint16)
            Image.fromarray(small).save(tmp, format="PNG")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, content: Any) -> None:
    """Write JSON atomically (temporary file in the same folder, then rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
    try:
        tmp.write_text(json.dumps(content, indent=2), encoding="utf-8")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def create_label_stack(
    path: str | os.PathLike, *, shape: tuple[int, int, int], dtype: np.dtype, source: str
) -> None:
    """Create (or check, when resuming) the zarr array a stack's labels go to.

    One chunk per slice: each slice is written independently, by whichever
    process segmented it.

    Raises
    ------
    ValueError
        If something not written by napari-persam for ``source``, or with another
        shape, is already at ``path`` (it is never overwritten).
    """
    import zarr

    target = os.fspath(path)
    if os.path.exists(target):
        try:
            existing = zarr.open_array(target, mode="r")
            mark = dict(existing.attrs).get(ZARR_MARK, {})
        except Exception:
            existing, mark = None, {}
        if (
            existing is None
            or mark.get("source") != os.path.abspath(source)
            or tuple(existing.shape) != tuple(shape)
            or existing.dtype != np.dtype(dtype)
        ):
            raise ValueError(
                f"{target!r} already exists and is not napari-persam's labels of "
                f"{source!r} with shape {shape}; move it away or choose another --out."
            )
        return
    from napari_persam.core.zarr_arrays import create_array

    create_array(
        os.fspath(target),
        shape=shape,
        chunks=(1, *shape[1:]),
        dtype=dtype,
        fill_value=0,
        attributes={ZARR_MARK: {"source": os.path.abspath(source)}},
    )


def write_label_slice(path: str | os.PathLike, index: int, labels: np.ndarray) -> None:
    """Write slice ``index`` of a label stack made by :func:`create_label_stack`."""
    import zarr

    array = zarr.open_array(os.fspath(path), mode="r+")
    array[index] = labels.astype(array.dtype, copy=False)
