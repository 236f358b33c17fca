"""``napari-persam evaluate`` end to end with the tiny random SAM."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from napari_persam.cli import main


def _dataset(root, names=("a", "b"), shape=(40, 48)):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8)).save(
            root / "images" / f"{name}.png"
        )
        mask = np.zeros(shape, dtype=np.uint8)
        mask[8:24, 10:30] = 255
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    return root


def test_evaluate_writes_json_and_markdown(tmp_path, capsys):
    root = _dataset(tmp_path / "data")
    out = tmp_path / "report"
    code = main(["evaluate", str(root), "--model", "tiny", "--device", "cpu", "--out", str(out)])
    assert code == 0
    data = json.loads((out / "evaluation.json").read_text())
    assert data["references"] == ["a"]
    assert data["model"] == "tiny"
    assert [image["name"] for image in data["images"]] == ["b"]
    assert 0.0 <= data["summary"]["dataset_iou"] <= 1.0
    markdown = (out / "evaluation.md").read_text()
    assert "| dataset_iou |" in markdown
    assert "| dataset_iou |" in capsys.readouterr().out
    # A second run refuses to overwrite the reports.
    again = main(["evaluate", str(root), "--model", "tiny", "--device", "cpu", "--out", str(out)])
    assert again == 2
    assert "not overwritten" in capsys.readouterr().err


def test_failed_image_gives_exit_code_1(tmp_path, capsys):
    root = _dataset(tmp_path / "data")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "masks" / "b.png")
    code = main(["evaluate", str(root), "--model", "tiny", "--device", "cpu", "--quiet"])
    assert code == 1
    assert "failed: b" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--reference", "nope"], "No image named 'nope'"),
        (["--model", "vit_x"], "Unknown model"),
        # offline in tests: the message says which file to put where
        (["--model", "vit_b"], "sam_vit_b_01ec64.pth"),
        (["--reference", "a", "--reference", "b"], "at least one more image"),
    ],
)
def test_bad_arguments_give_exit_code_2(tmp_path, capsys, extra, message):
    root = _dataset(tmp_path / "data")
    args = ["evaluate", str(root), "--device", "cpu"]
    if "--model" not in extra:
        args += ["--model", "tiny"]
    assert main(args + extra) == 2
    assert message in capsys.readouterr().err


def test_missing_dataset_folder(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nothing"), "--model", "tiny"]) == 2
    assert "images/ and masks/" in capsys.readouterr().err
