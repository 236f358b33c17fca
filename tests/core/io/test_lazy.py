"""Large targets read window by window: TIFF, zarr and OME-Zarr images and stacks."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from napari_persam.core.io.lazy import SliceView, open_image, open_stack
from napari_persam.core.io.targets import resolve_targets


class CountingArray:
    """A stored array that records every index it is read at."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.reads: list = []

    def __getitem__(self, key):
        self.reads.append(key)
        return self.data[key]


def test_a_window_of_a_channels_first_stack_reads_only_that_window():
    from napari_persam.core.io.layout import layout_of

    data = np.arange(4 * 3 * 50 * 60, dtype=np.uint16).reshape(4, 3, 50, 60)  # Z, C, Y, X
    stored = CountingArray(data)
    view = SliceView(stored, layout_of(data.shape, "ZCYX"), z=2)
    assert view.shape == (50, 60, 3)
    window = view[10:20, 30:45]
    np.testing.assert_array_equal(window, np.moveaxis(data[2], 0, -1)[10:20, 30:45])
    assert stored.reads == [(2, slice(None), slice(10, 20), slice(30, 45))]
    np.testing.assert_array_equal(np.asarray(view), np.moveaxis(data[2], 0, -1))


def test_tiff_stack_slices_are_lazy_views(tmp_path):
    stack = np.arange(3 * 40 * 50, dtype=np.uint16).reshape(3, 40, 50)
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack", tile=(16, 16))
    (target,) = resolve_targets([str(tmp_path / "s.tif")])
    view = open_stack(target)
    assert view.shape == (3, 40, 50) and len(view) == 3
    np.testing.assert_array_equal(view[1][5:25, 10:30], stack[1, 5:25, 10:30])
    np.testing.assert_array_equal(np.asarray(view[2]), stack[2])


def test_a_large_image_is_opened_lazily_and_a_small_one_read(tmp_path):
    image = np.arange(64 * 80, dtype=np.uint16).reshape(64, 80)
    tifffile.imwrite(tmp_path / "i.tif", image, tile=(16, 16))
    (target,) = resolve_targets([str(tmp_path / "i.tif")])
    assert isinstance(open_image(target), np.ndarray)
    lazy = open_image(target, lazy_pixels=100)
    assert isinstance(lazy, SliceView) and lazy.shape == (64, 80)
    np.testing.assert_array_equal(lazy[8:40, 16:48], image[8:40, 16:48])


def test_a_2d_zarr_array_is_an_image_target(tmp_path):
    zarr.create_array(store=str(tmp_path / "field.zarr"), data=np.ones((30, 40), np.uint8))
    (target,) = resolve_targets([str(tmp_path / "field.zarr")])
    assert target.kind == "zarr_image" and not target.is_stack
    assert open_image(target).shape == (30, 40)


def _ome_zarr(root, data, axes):
    group = zarr.open_group(str(root), mode="w")
    group.create_array("0", data=data)
    group.create_array("1", data=data[..., ::2, ::2])
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [{"name": name, "type": "space"} for name in axes],
            "datasets": [{"path": "0"}, {"path": "1"}],
        }
    ]


def test_an_ome_zarr_group_is_its_full_resolution_array_with_its_axes(tmp_path):
    data = np.arange(2 * 5 * 32 * 48, dtype=np.uint16).reshape(2, 5, 32, 48)  # C, Z, Y, X
    _ome_zarr(tmp_path / "volume.zarr", data, "czyx")
    (target,) = resolve_targets([str(tmp_path / "volume.zarr")])
    assert target.kind == "zarr_stack" and target.name == "volume" and target.axes == "CZYX"
    view = open_stack(target)
    assert view.shape == (5, 32, 48, 2)
    np.testing.assert_array_equal(view[3][4:8, 10:20], np.moveaxis(data[:, 3], 0, -1)[4:8, 10:20])


def test_a_plain_zarr_group_still_asks_for_an_array(tmp_path):
    from napari_persam.core.io.targets import TargetError

    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("raw", data=np.zeros((2, 8, 9), np.uint8))
    with pytest.raises(TargetError, match="zarr group"):
        resolve_targets([str(tmp_path / "g.zarr")])


def test_a_pyramidal_tiff_is_read_at_its_full_resolution(tmp_path):
    image = np.arange(600 * 500, dtype=np.uint16).reshape(600, 500)
    path = tmp_path / "pyramid.tif"
    with tifffile.TiffWriter(path) as tiff:
        tiff.write(image, tile=(128, 128), subifds=1)
        tiff.write(image[::2, ::2], tile=(128, 128), subfiletype=1)
    (target,) = resolve_targets([str(path)])
    opened = open_image(target, lazy_pixels=1000)  # lazy, window by window
    assert isinstance(opened, SliceView) and opened.shape == (600, 500)
    np.testing.assert_array_equal(opened[100:140, 20:90], image[100:140, 20:90])
