"""Writing outputs: label images, label stacks (zarr, one chunk per slice) and JSON.

Every file is written under a temporary name and renamed into place, so a killed
run never leaves a half-written file under a finished name. A stack's labels go
into a zarr array one slice at a time, so a stack larger than memory never has to
fit.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from napari_persam.core.errors import InputError, option
from napari_persam.core.io.images import TIFF_SUFFIXES

# Labels keep the input's suffix where it is lossless; JPEG and BMP inputs get PNG labels.
_LABEL_SUFFIX = {".tif": ".tif", ".tiff": ".tiff", ".png": ".png"}
#: Attribute that marks a zarr array as written by napari-persam (so resuming may reuse it).
ZARR_MARK = "napari_persam"
#: The largest label a PNG output holds (16 bits).
PNG_MAX_LABEL = int(np.iinfo(np.uint16).max)


def label_suffix(path: str) -> str:
    """Suffix of the label file written for an image (lossless: TIFF or PNG).

    A 2D zarr array (possibly huge) gets a TIFF, which has no size limit.
    """
    if os.path.isdir(path):
        return ".tif"
    return _LABEL_SUFFIX.get(Path(path).suffix.lower(), ".png")


def write_labels(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Write a (H, W) label image to a TIFF or PNG file atomically.

    TIFFs keep ``labels``' dtype. PNG holds at most 16 bits: uint8 labels stay
    8-bit, every other dtype is written as uint16 (so instance labels, int32 in
    memory, are uint16 in every PNG, whatever their count); values above 65535
    need a TIFF output and raise a ValueError.
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

            if labels.max(initial=0) > PNG_MAX_LABEL or labels.min(initial=0) < 0:
                raise ValueError(
                    f"Label values up to {int(labels.max())} do not fit a 16-bit PNG; give the "
                    "image as a TIFF to get a TIFF output."
                )
            png = labels if labels.dtype == np.uint8 else labels.astype(np.uint16)
            Image.fromarray(png).save(tmp, format="PNG")
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
            raise InputError(
                f"{target!r} already exists and is not napari-persam's labels of "
                f"{source!r} with shape {shape}; move it away or choose {option('out')}."
            )
        return
    from napari_persam.core.io.zarr_arrays import create_array

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
