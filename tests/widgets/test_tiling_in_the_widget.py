"""Small objects in a large image, through the widget: scale, tiles and their progress."""

from __future__ import annotations

import numpy as np

from tests.widgets._helpers import run_and_wait


def _field():
    rng = np.random.default_rng(3)
    image = np.clip(60 + rng.normal(0, 4, (700, 700)), 0, 255).astype(np.uint8)
    labels = np.zeros((700, 700), np.uint8)
    yy, xx = np.mgrid[:700, :700]
    for index, (y, x) in enumerate([(60, 60), (300, 420), (650, 200)]):
        disc = (yy - y) ** 2 + (xx - x) ** 2 <= 16
        image[disc] = 230
        if index == 0:
            labels[disc] = 1
    return image, labels


def test_a_run_says_its_scale_and_tiles_and_the_bar_counts_them(viewer, open_widget, qtbot):
    image, labels = _field()
    viewer.add_image(image, name="field")
    viewer.add_labels(labels, name="ref")
    widget = open_widget()
    assert widget.tiling.value == "auto" and widget.tile_side.native.isHidden()
    steps = []
    widget.run_button.native.click()
    widget.worker.yielded.connect(steps.append)
    with qtbot.waitSignal(widget.worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(lambda: not widget.running, timeout=5_000)
    assert "px per cell" in widget.tiling_info.value
    assert "tiles of" in widget.tiling_info.value and "encoding" in widget.tiling_info.value
    tiles = [step for step in steps if "tile" in step.message and step.result is None]
    assert len(tiles) > 1 and tiles[-1].done == tiles[-1].total
    assert viewer.layers["field PerSAM"].data.shape == (700, 700)
    np.testing.assert_array_equal(viewer.layers["ref"].data, labels)  # never modified


def test_tiling_off_and_a_tile_size_reach_the_run(viewer, open_widget, qtbot):
    image, labels = _field()
    viewer.add_image(image, name="field")
    viewer.add_labels(labels, name="ref")
    widget = open_widget()
    widget.tiling.value = "off"
    run_and_wait(qtbot, widget, timeout=120_000)
    assert widget.job.config.tiling == "off"
    assert "whole image at once" in widget.tiling_info.value
    widget.tiling.value = "tile size"
    assert not widget.tile_side.native.isHidden()
    widget.tile_side.value = 448
    run_and_wait(qtbot, widget, timeout=120_000)
    assert widget.job.config.tiling == 448
    assert "tiles of 448 px" in widget.tiling_info.value
