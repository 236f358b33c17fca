"""The one image and mask reader: encodings, layouts, and the readings it reports."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_persam.core.errors import InputError
from napari_persam.core.io.images import read_image, read_mask


def _binary(shape=(12, 16)):
    mask = np.zeros(shape, dtype=bool)
    mask[3:8, 4:10] = True
    return mask


@pytest.mark.parametrize(
    ("suffix", "dtype", "value"),
    [
        (".png", np.uint8, 1),
        (".png", np.uint8, 255),
        (".png", np.uint16, 65535),
        (".tif", np.uint8, 255),
        (".tif", np.uint16, 65535),
        (".tif", np.uint16, 1),
    ],
)
def test_binary_masks_of_any_encoding_read_as_0_1(tmp_path, suffix, dtype, value):
    mask = _binary()
    path = tmp_path / f"mask{suffix}"
    data = mask.astype(dtype) * dtype(value)
    if suffix == ".tif":
        tifffile.imwrite(path, data)
    else:
        Image.fromarray(data).save(path)
    read = read_mask(path)
    assert not read.is_instances
    assert read.labels.dtype == np.int32
    np.testing.assert_array_equal(read.labels, mask.astype(np.int32))


def test_palette_png_reads_palette_indices(tmp_path):
    image = Image.fromarray(_binary().astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)
    image.save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png").foreground, _binary())


def test_jpeg_masks_are_thresholded(tmp_path):
    mask = np.zeros((64, 64), dtype=bool)
    mask[16:48, 10:40] = True
    rgb = np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=-1)
    Image.fromarray(rgb).save(tmp_path / "m.jpg", quality=60)
    assert len(np.unique(np.asarray(Image.open(tmp_path / "m.jpg")))) > 2  # lossy
    read = read_mask(tmp_path / "m.jpg")
    assert not read.is_instances
    assert (read.foreground != mask).mean() < 0.01


def test_instance_labels_keep_their_ids(tmp_path):
    labels = np.zeros((10, 10), dtype=np.uint16)
    labels[1:3, 1:3] = 7
    labels[5:9, 5:9] = 300
    Image.fromarray(labels).save(tmp_path / "m.png")
    read = read_mask(tmp_path / "m.png")
    assert read.is_instances
    assert set(np.unique(read.labels)) == {0, 7, 300}


def test_explicit_threshold_binarises_instances(tmp_path):
    labels = np.array([[0, 5], [10, 20]], dtype=np.uint8)
    Image.fromarray(labels).save(tmp_path / "m.png")
    read = read_mask(tmp_path / "m.png", threshold=7)
    np.testing.assert_array_equal(read.labels, [[0, 0], [1, 1]])


def test_stack_masks_are_refused_with_advice(tmp_path):
    tifffile.imwrite(
        tmp_path / "m.tif", np.zeros((3, 8, 8), dtype=np.uint8), photometric="minisblack"
    )
    with pytest.raises(ValueError, match="each slice"):
        read_mask(tmp_path / "m.tif")


def test_unreadable_file_is_named(tmp_path):
    (tmp_path / "m.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"m\.png"):
        read_mask(tmp_path / "m.png")


def test_read_image_squeezes_single_plane_tiff(tmp_path):
    tifffile.imwrite(tmp_path / "i.tif", np.zeros((1, 8, 9), dtype=np.uint16))
    assert read_image(tmp_path / "i.tif").shape == (8, 9)


def test_read_mask_handles_jpeg_and_rgb(tmp_path):
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    Image.fromarray(mask).save(tmp_path / "m.jpg", quality=70)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.jpg").foreground, mask > 0)
    Image.fromarray(np.stack([mask * 0, mask, mask * 0], -1)).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "rgb.png").foreground, mask > 0)


# --------------------------------------------------------- what new users brought
def test_grey_plus_alpha_png_is_grey_as_image_and_as_mask(tmp_path):
    # PIL mode "LA": Fiji exports EM data like this; alpha is not image content.
    grey = np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)
    alpha = np.full_like(grey, 255)
    Image.fromarray(np.stack([grey, alpha], -1), mode="LA").save(tmp_path / "em.png")
    np.testing.assert_array_equal(read_image(tmp_path / "em.png"), grey)
    mask = (grey > 100).astype(np.uint8) * 255
    Image.fromarray(np.stack([mask, alpha], -1), mode="LA").save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png").foreground, grey > 100)


def test_an_anti_aliased_binary_mask_is_thresholded_not_read_as_instances(tmp_path):
    yy, xx = np.mgrid[:64, :64]
    radius = np.hypot(yy - 32, xx - 32)
    soft = np.clip((20.5 - radius) * 255, 0, 255).astype(np.uint8)
    assert len(np.unique(soft)) > 10  # grey levels along the edge
    Image.fromarray(soft).save(tmp_path / "m.png")
    read = read_mask(tmp_path / "m.png")
    assert not read.is_instances and read.reading == "threshold"
    assert read.threshold == pytest.approx(127.5)
    assert "no object" in read.note
    np.testing.assert_array_equal(read.foreground, soft > 127.5)
    forced = read_mask(tmp_path / "m.png", labels=True)
    assert forced.is_instances and forced.reading == "labels"


def test_one_stray_colour_pixel_does_not_make_an_rgb_mask_instances(tmp_path):
    rgb = np.zeros((20, 20, 3), np.uint8)
    rgb[4:15, 4:15] = 1
    rgb[2, 2] = (0, 1, 1)
    Image.fromarray(rgb).save(tmp_path / "m.png")
    read = read_mask(tmp_path / "m.png")
    assert not read.is_instances
    assert read.foreground.sum() == 11 * 11 + 1  # any colour is the object


def test_real_instance_labels_with_small_objects_stay_labels(tmp_path):
    labels = np.zeros((30, 30), np.uint16)
    labels[2:4, 2:4] = 3  # a 2 x 2 object
    labels[10:20, 10:20] = 9
    labels[22:28, 3:12] = 40
    Image.fromarray(labels).save(tmp_path / "m.png")
    read = read_mask(tmp_path / "m.png")
    assert read.is_instances and read.reading == "labels"
    assert set(np.unique(read.labels)) == {0, 3, 9, 40}


@pytest.mark.parametrize("shape", [(24, 32, 1), (24, 32, 5), (1, 24, 32)])
def test_single_plane_and_multichannel_tiffs_are_images(tmp_path, shape):
    data = np.arange(np.prod(shape), dtype=np.uint16).reshape(shape)
    tifffile.imwrite(tmp_path / "i.tif", data)
    image = read_image(tmp_path / "i.tif")
    assert image.shape[:2] == (24, 32)
    assert image.ndim == (3 if shape[-1] == 5 else 2)


def test_a_stack_given_as_an_image_names_its_real_shape(tmp_path):
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((4, 24, 32), np.uint8), photometric="minisblack")
    with pytest.raises(InputError, match=r"stack of 4 slices \(shape \(4, 24, 32\)\)"):
        read_image(tmp_path / "s.tif")


def test_a_folder_is_reported_as_a_folder(tmp_path):
    with pytest.raises(InputError, match="is a folder, not a file"):
        read_image(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        read_mask(tmp_path / "missing.png")


def test_channels_first_tiff_with_named_axes(tmp_path):
    data = np.arange(3 * 24 * 32, dtype=np.uint16).reshape(3, 24, 32)
    tifffile.imwrite(tmp_path / "c.tif", data, photometric="minisblack", metadata={"axes": "CYX"})
    np.testing.assert_array_equal(read_image(tmp_path / "c.tif"), np.moveaxis(data, 0, -1))
