import numpy as np

from napari_persam.core.engine.postprocess import remove_small_components, tight_box


def test_small_components_are_removed_and_input_kept():
    mask = np.zeros((100, 100), dtype=bool)
    mask[10:40, 10:40] = True  # 900 px
    mask[80:83, 80:83] = True  # 9 px
    mask[60, 5] = True  # 1 px
    before = mask.copy()
    out = remove_small_components(mask, min_area_fraction=0.001)  # 10 px
    assert out[10:40, 10:40].all()
    assert not out[80:83, 80:83].any() and not out[60, 5]
    np.testing.assert_array_equal(mask, before)
    np.testing.assert_array_equal(remove_small_components(mask, min_area_fraction=0.0), mask)


def test_diagonal_pixels_form_one_component():
    mask = np.zeros((10, 10), dtype=bool)
    for i in range(5):
        mask[i, i] = True  # 5 px connected diagonally
    out = remove_small_components(mask, min_area_fraction=0.05)  # 5 px needed
    assert out.sum() == 5


def test_tight_box():
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 3:9] = True
    np.testing.assert_array_equal(tight_box(mask), [2, 3, 4, 8])
    assert tight_box(np.zeros((3, 3), dtype=bool)) is None
