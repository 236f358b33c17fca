"""Inputs new users bring, through every command as they would type it (issue 13, items 1-5)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_persam.cli import main

TINY = ["--model", "tiny", "--device", "cpu", "--no-cache"]
SHAPE = (48, 64)


def _scene(seed: int = 0, shift: int = 0) -> np.ndarray:
    image = (np.random.default_rng(seed).random(SHAPE) * 60).astype(np.uint8)
    image[10 + shift : 30 + shift, 12:40] = 210
    return image


def _square_mask() -> np.ndarray:
    mask = np.zeros(SHAPE, np.uint8)
    mask[10:30, 12:40] = 255
    return mask


def _la(grey: np.ndarray) -> Image.Image:
    """Grey + alpha, as Fiji exports EM data."""
    return Image.fromarray(np.stack([grey, np.full_like(grey, 255)], -1), mode="LA")


def _soft_mask() -> np.ndarray:
    """A binary disc with anti-aliased edges (grey levels between 0 and 255)."""
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    radius = np.hypot(yy - 20, xx - 26)
    return np.clip((12.5 - radius) * 255, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------ 1. grey + alpha
def test_grey_alpha_pngs_learn_and_segment(tmp_path, capsys):
    _la(_scene()).save(tmp_path / "ref.png")
    _la(_square_mask()).save(tmp_path / "mask.png")
    _la(_scene(1, 3)).save(tmp_path / "target.png")
    refs = ["--reference", str(tmp_path / "ref.png"), "--mask", str(tmp_path / "mask.png")]
    assert main(["learn", *refs, "--out", str(tmp_path / "c.npz"), *TINY]) == 0
    out = tmp_path / "out"
    code = main(["segment", "--concept", str(tmp_path / "c.npz"), "--targets",
                 str(tmp_path / "target.png"), "--out", str(out), "--quiet", *TINY])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert np.asarray(Image.open(out / "target.png")).shape == SHAPE


def _dataset(root: Path, images: dict, masks: dict) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name, write in images.items():
        write(root / "images" / name)
    for name, write in masks.items():
        write(root / "masks" / name)
    return root


def test_evaluate_reads_grey_alpha_and_takes_channels(tmp_path, capsys):
    root = _dataset(
        tmp_path / "la",
        {f"{n}.png": (lambda p, n=n: _la(_scene(ord(n))).save(p)) for n in "ab"},
        {f"{n}.png": (lambda p: _la(_square_mask()).save(p)) for n in "ab"},
    )
    assert main(["evaluate", str(root), *TINY, "--quiet"]) == 0, capsys.readouterr().err

    five = np.stack([_scene(c) for c in range(5)], -1).astype(np.uint16)
    root = _dataset(
        tmp_path / "five",
        {f"{n}.tif": (lambda p: tifffile.imwrite(p, five)) for n in "ab"},
        {f"{n}.png": (lambda p: Image.fromarray(_square_mask()).save(p)) for n in "ab"},
    )
    assert main(["evaluate", str(root), *TINY, "--quiet"]) == 2
    assert "--channels" in capsys.readouterr().err  # the reference needs channels chosen
    assert main(["evaluate", str(root), *TINY, "--quiet", "--channels", "0", "1", "2"]) == 0


# ---------------------------------------------------- 2. masks that are not labels
def test_evaluate_thresholds_anti_aliased_masks_and_says_so(tmp_path, capsys):
    root = _dataset(
        tmp_path / "data",
        {f"{n}.png": (lambda p, n=n: Image.fromarray(_scene(ord(n))).save(p)) for n in "abc"},
        {f"{n}.png": (lambda p: Image.fromarray(_soft_mask()).save(p)) for n in "abc"},
    )
    out = tmp_path / "report"
    assert main(["evaluate", str(root), *TINY, "--quiet", "--out", str(out)]) == 0
    report = json.loads((out / "evaluation.json").read_text())
    assert report["mask_readings"] == {"thresholded above 127.5": 2}
    assert "ap50" not in report["summary"]  # no meaningless instance metrics
    assert all(image["true_instances"] == 1 for image in report["images"])
    markdown = (out / "evaluation.md").read_text()
    assert "thresholded above 127.5: 2" in markdown
    assert "--mask-threshold" in markdown and "--instances yes" in markdown
    assert "--mask-threshold" in capsys.readouterr().out


def test_one_stray_colour_pixel_does_not_switch_instance_metrics_on(tmp_path):
    def rgb_mask(path):
        rgb = np.zeros((*SHAPE, 3), np.uint8)
        rgb[10:30, 12:40] = 1
        rgb[2, 2] = (0, 1, 1)
        Image.fromarray(rgb).save(path)

    root = _dataset(
        tmp_path / "data",
        {f"{n}.png": (lambda p, n=n: Image.fromarray(_scene(ord(n))).save(p)) for n in "ab"},
        {f"{n}.png": rgb_mask for n in "ab"},
    )
    out = tmp_path / "report"
    assert main(["evaluate", str(root), *TINY, "--quiet", "--out", str(out)]) == 0
    report = json.loads((out / "evaluation.json").read_text())
    assert "ap50" not in report["summary"]
    assert report["images"][0]["true_instances"] == 1


# ------------------------------------------------- 3. one rule for stacks and channels
@pytest.fixture
def references(tmp_path) -> list[str]:
    Image.fromarray(_scene()).save(tmp_path / "ref.png")
    Image.fromarray(_square_mask()).save(tmp_path / "mask.png")
    return ["--reference", str(tmp_path / "ref.png"), "--mask", str(tmp_path / "mask.png")]


def _segment(references, target: Path, out: Path, *extra: str) -> tuple[int, dict]:
    code = main(["segment", *references, "--targets", str(target), "--out", str(out),
                 "--quiet", *TINY, *extra])  # fmt: skip
    return code, json.loads((out / "report.json").read_text())


def test_a_five_channel_tiff_is_one_image_that_asks_for_channels(tmp_path, references, capsys):
    five = np.stack([_scene(c) for c in range(5)], -1).astype(np.uint16) * 100
    tifffile.imwrite(tmp_path / "five.tif", five)
    code, report = _segment(references, tmp_path / "five.tif", tmp_path / "out")
    assert code == 1
    (item,) = report["items"]  # one image, not 48 slices
    assert item["slice"] is None
    assert "--channels" in item["error"] and "PerSAMConfig" not in item["error"]
    assert "--channels" in capsys.readouterr().err

    code, report = _segment(references, tmp_path / "five.tif", tmp_path / "out2",
                            "--channels", "0")  # fmt: skip
    assert code == 0 and report["summary"]["ok"] == 1
    assert tifffile.imread(tmp_path / "out2" / "five.tif").shape == SHAPE


@pytest.mark.parametrize("shape", [(*SHAPE, 1), (1, *SHAPE)])
def test_single_plane_tiffs_are_images_in_learn_and_segment(tmp_path, references, shape):
    data = _scene().reshape(shape)
    tifffile.imwrite(tmp_path / "one.tif", data)
    code, report = _segment(references, tmp_path / "one.tif", tmp_path / "out")
    assert code == 0
    assert [item["slice"] for item in report["items"]] == [None]
    assert tifffile.imread(tmp_path / "out" / "one.tif").shape == SHAPE
    mask = tmp_path / "mask.png"
    learned = ["learn", "--reference", str(tmp_path / "one.tif"), "--mask", str(mask)]
    assert main([*learned, "--out", str(tmp_path / "c.npz"), *TINY]) == 0


# ------------------------------------------------------------------ 4. real shapes
def test_a_shape_mismatch_names_the_real_shapes(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "ref.tif", _scene()[None])  # (1, 48, 64)
    Image.fromarray(np.ones((20, 20), np.uint8)).save(tmp_path / "mask.png")
    refs = ["--reference", str(tmp_path / "ref.tif"), "--mask", str(tmp_path / "mask.png")]
    assert main(["learn", *refs, "--out", str(tmp_path / "c.npz"), *TINY]) == 2
    err = capsys.readouterr().err
    assert "(20, 20)" in err and "(48, 64)" in err and "(1, 48)" not in err


# ------------------------------------------------------------ 5. folders for files
def test_folders_given_for_files_are_called_folders(tmp_path, references, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    image, mask = references[1], references[3]
    learn = ["learn", "--out", str(tmp_path / "c.npz"), *TINY]
    assert main([*learn, "--reference", str(folder), "--mask", mask]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main([*learn, "--reference", image, "--mask", mask, "--checkpoint", str(folder),
                 "--model", "vit_b"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "is a folder" in err and "does not exist" not in err
    segment = ["segment", "--targets", image, "--out", str(tmp_path / "out"), *TINY]
    assert main([*segment, "--concept", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "is a folder" in err and "does not exist" not in err
