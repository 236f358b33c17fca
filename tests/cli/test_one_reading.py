"""Every entry point reads a file the same way: learn, segment, evaluate and the API.

A palette PNG, a colour-coded mask and a channels-first TIFF are the files the two
old readers disagreed on. Each entry point hands the engine exactly the arrays that
:func:`napari_persam.core.io.images.read_image` and ``read_mask`` give.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_persam.cli import main
from napari_persam.core.engine.persam import PerSAM
from napari_persam.core.io.images import read_image, read_mask

COMMON = ["--model", "tiny", "--device", "cpu", "--no-cache"]


@pytest.fixture
def files(tmp_path, rng):
    """(palette PNG image, channels-first TIFF image, colour mask), all 40 x 52."""
    indices = rng.integers(0, 4, (40, 52), dtype=np.uint8)
    palette = Image.fromarray(indices, mode="P")
    palette.putpalette([0, 0, 0, 200, 30, 30, 30, 200, 30, 30, 30, 200] + [0] * 756)
    palette.save(tmp_path / "palette.png")
    planes = rng.integers(0, 4000, (3, 40, 52), dtype=np.uint16)
    tifffile.imwrite(
        tmp_path / "planes.tif", planes, photometric="minisblack", metadata={"axes": "CYX"}
    )
    colours = np.zeros((40, 52, 3), np.uint8)
    colours[5:20, 5:25] = (255, 0, 0)
    colours[25:35, 30:48] = (0, 0, 255)
    Image.fromarray(colours).save(tmp_path / "colours.png")
    return tmp_path / "palette.png", tmp_path / "planes.tif", tmp_path / "colours.png"


@pytest.fixture
def seen(monkeypatch):
    """The arrays the engine is given by learn() and segment()."""
    record = {"learn": [], "segment": []}
    learn, segment = PerSAM.learn, PerSAM.segment

    def spy_learn(self, image, mask=None):
        pairs = list(image) if mask is None else [(image, mask)]
        record["learn"].extend((np.asarray(i).copy(), np.asarray(m).copy()) for i, m in pairs)
        return learn(self, image, mask)

    def spy_segment(self, image, concept):
        record["segment"].append(np.asarray(image).copy())
        return segment(self, image, concept)

    monkeypatch.setattr(PerSAM, "learn", spy_learn)
    monkeypatch.setattr(PerSAM, "segment", spy_segment)
    return record


def test_the_three_files_read_as_meant(files):
    palette, planes, colours = files
    assert read_image(palette).shape == (40, 52, 3)  # palette images become RGB
    assert read_image(planes).shape == (40, 52, 3)  # channels first, as the file says
    mask = read_mask(colours)
    assert mask.is_instances and len(np.unique(mask.labels)) == 3  # two colours, two objects


@pytest.mark.parametrize("image_index", [0, 1])
def test_learn_segment_and_evaluate_hand_the_engine_the_same_arrays(
    files, seen, tmp_path, image_index
):
    image_path, colours = files[image_index], files[2]
    image, mask = read_image(image_path), read_mask(colours).foreground

    assert main(["learn", "--reference", str(image_path), "--mask", str(colours),
                 "--out", str(tmp_path / "c.npz"), *COMMON]) == 0  # fmt: skip
    assert main(["segment", "--concept", str(tmp_path / "c.npz"), "--targets", str(image_path),
                 "--out", str(tmp_path / "out"), "--quiet", *COMMON]) == 0  # fmt: skip
    dataset = tmp_path / "dataset"
    (dataset / "images").mkdir(parents=True)
    (dataset / "masks").mkdir()
    for name in ("a", "b"):
        (dataset / "images" / f"{name}{image_path.suffix}").write_bytes(image_path.read_bytes())
        (dataset / "masks" / f"{name}.png").write_bytes(colours.read_bytes())
    assert main(["evaluate", str(dataset), "--quiet", "--instances", "no", *COMMON]) == 0

    learned, segmented = seen["learn"], seen["segment"]
    assert len(learned) == 2 and len(segmented) == 2  # learn + evaluate; segment + evaluate
    for got_image, got_mask in learned:
        np.testing.assert_array_equal(got_image, image)
        np.testing.assert_array_equal(got_mask, mask)
    for got in segmented:
        np.testing.assert_array_equal(got, image)
