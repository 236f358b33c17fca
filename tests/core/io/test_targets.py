"""Finding targets (files, globs, folders, TIFF stacks, zarr arrays) and reading stack slices."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from napari_persam.core.io.lazy import read_slice
from napari_persam.core.io.targets import TargetError, resolve_targets


def test_resolve_targets_kinds_globs_folders_and_errors(tmp_path):
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(tmp_path / "b.png")
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((8, 9, 3), np.uint8))
    tifffile.imwrite(
        tmp_path / "stack.tif", np.zeros((4, 8, 9), np.uint16), photometric="minisblack"
    )
    zarr.create_array(store=str(tmp_path / "vol.zarr"), data=np.zeros((2, 8, 9), np.uint8))
    group = zarr.open_group(str(tmp_path / "group.zarr"), mode="w")
    group.create_array("raw", data=np.zeros((2, 8, 9), np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")

    found = resolve_targets([str(tmp_path)])
    assert [(t.name, t.kind) for t in found] == [
        ("b", "image"),
        ("rgb", "image"),
        ("stack", "tiff_stack"),
        ("vol", "zarr_stack"),
    ]
    assert [t.name for t in resolve_targets([str(tmp_path / "*.tif")])] == ["rgb", "stack"]
    (inner,) = resolve_targets([str(tmp_path / "group.zarr" / "raw")])
    assert inner.kind == "zarr_stack" and inner.name == "raw"
    with pytest.raises(TargetError, match=r"zarr group.*raw"):
        resolve_targets([str(tmp_path / "group.zarr")])
    with pytest.raises(TargetError, match="not an image file"):
        resolve_targets([str(tmp_path / "notes.txt")])


def test_tiff_slices_are_read_one_at_a_time(tmp_path):
    stack = np.arange(3 * 8 * 9, dtype=np.uint16).reshape(3, 8, 9)
    tifffile.imwrite(tmp_path / "s.tif", stack, compression="zlib", photometric="minisblack")
    (target,) = resolve_targets([str(tmp_path / "s.tif")])
    np.testing.assert_array_equal(read_slice(target, 2), stack[2])
