import numpy as np
import pytest

from napari_persam.core.engine.images import prepare_image, prepare_mask


def test_uint8_rgb_is_used_as_is():
    image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    out = prepare_image(image)
    assert out.dtype == np.uint8 and out.shape == (4, 5, 3)
    np.testing.assert_array_equal(out, image)


def test_grey_becomes_three_equal_channels():
    image = np.arange(20, dtype=np.uint8).reshape(4, 5)
    out = prepare_image(image)
    assert out.shape == (4, 5, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], image)
    np.testing.assert_array_equal(prepare_image(image[..., None]), out)


def test_uint16_is_scaled_by_robust_percentiles(rng):
    image = rng.integers(1000, 2000, size=(64, 64)).astype(np.uint16)
    image[0, 0] = 65535  # one hot pixel must not squash the contrast
    out = prepare_image(image)[..., 0]
    assert out.min() == 0 and out.max() == 255
    # the bulk of the values spreads over the range instead of sitting near 0
    assert np.median(out) > 100


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64, np.int8])
def test_other_dtypes_become_uint8(dtype, rng):
    image = (rng.normal(size=(32, 48)) * 50).astype(dtype)
    out = prepare_image(image)
    assert out.dtype == np.uint8 and out.shape == (32, 48, 3)
    assert out.max() == 255 and out.min() == 0


def test_float_scaling_is_monotonic(rng):
    image = rng.uniform(0, 1, size=(16, 16)).astype(np.float32)
    out = prepare_image(image)[..., 0].astype(int)
    order = np.argsort(image.ravel())
    assert np.all(np.diff(out.ravel()[order]) >= 0)


def test_bool_image_is_0_or_255():
    image = np.zeros((8, 8), dtype=bool)
    image[2:4, 2:4] = True
    out = prepare_image(image)
    assert set(np.unique(out)) == {0, 255}


def test_binary_and_constant_images_keep_their_structure():
    binary = np.zeros((20, 20), dtype=np.uint16)
    binary[:2, :2] = 1  # 1% of pixels: both percentiles are 0
    assert prepare_image(binary)[0, 0, 0] == 255
    assert prepare_image(np.full((5, 5), 7.0)).max() == 0


def test_rgba_drops_alpha():
    image = np.zeros((4, 4, 4), dtype=np.uint8)
    image[..., 0] = 10
    image[..., 3] = 255
    out = prepare_image(image)
    assert out.shape == (4, 4, 3)
    assert (out[..., 0] == 10).all() and (out[..., 1:] == 0).all()


def test_channel_choice():
    image = np.stack([np.full((4, 4), value, dtype=np.uint8) for value in range(6)], axis=-1)
    np.testing.assert_array_equal(prepare_image(image, channels=(5, 0, 2))[0, 0], [5, 0, 2])
    assert (prepare_image(image, channels=(4,)) == 4).all()
    with pytest.raises(ValueError, match="do not exist"):
        prepare_image(image, channels=(6,))


@pytest.mark.parametrize("channels", [2, 5, 7])
def test_unusual_channel_counts_need_a_choice(channels):
    with pytest.raises(ValueError, match="channels="):
        prepare_image(np.zeros((8, 8, channels), dtype=np.uint8))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_refused(bad):
    image = np.ones((8, 8), dtype=np.float32)
    image[3, 3] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        prepare_image(image)


def test_wrong_dimensions_and_dtypes_are_refused():
    with pytest.raises(ValueError, match="one slice at a time"):
        prepare_image(np.zeros((2, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="2D image"):
        prepare_image(np.zeros(8, dtype=np.uint8))
    with pytest.raises(ValueError, match="not numeric"):
        prepare_image(np.array([["a", "b"], ["c", "d"]]))


def test_prepare_image_does_not_modify_input(rng):
    image = rng.integers(0, 4000, size=(10, 10)).astype(np.uint16)
    before = image.copy()
    prepare_image(image)
    np.testing.assert_array_equal(image, before)


def test_masks():
    mask = np.zeros((6, 7), dtype=np.uint16)
    mask[1, 1] = 3
    out = prepare_mask(mask, (6, 7, 3))
    assert out.dtype == bool and out.sum() == 1
    with pytest.raises(ValueError, match="empty"):
        prepare_mask(np.zeros((6, 7)), (6, 7))
    with pytest.raises(ValueError, match="shape"):
        prepare_mask(mask, (7, 6))
    with pytest.raises(ValueError, match="2D"):
        prepare_mask(mask[None], (6, 7))
    with pytest.raises(ValueError, match="NaN"):
        prepare_mask(np.full((6, 7), np.nan), (6, 7))
