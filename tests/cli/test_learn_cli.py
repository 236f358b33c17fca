"""``napari-persam learn``: concept files from references, bad arguments exit with 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_persam.cli import main
from napari_persam.core.io.concept_file import read_concept_file


@pytest.fixture
def reference(tmp_path, rng) -> tuple[Path, Path]:
    image = (rng.random((40, 52)) * 60).astype(np.uint8)
    image[8:24, 10:30] = 210
    mask = np.zeros((40, 52), dtype=np.uint8)
    mask[8:24, 10:30] = 255
    Image.fromarray(image).save(tmp_path / "reference.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return tmp_path / "reference.png", tmp_path / "mask.png"


def _learn(reference: tuple[Path, Path], out: Path, *extra: str) -> int:
    image, mask = reference
    return main(
        [
            "learn", "--reference", str(image), "--mask", str(mask), "--out", str(out),
            "--model", "tiny", "--device", "cpu", "--no-cache", *extra,
        ]
    )  # fmt: skip


def test_learn_writes_a_concept_file(reference, tmp_path):
    from napari_persam.core.engine.embeddings import model_fingerprint
    from napari_persam.core.models import build_tiny_sam

    assert _learn(reference, tmp_path / "cells", "--label-value", "4") == 0
    content = read_concept_file(tmp_path / "cells.npz")
    assert content.model_name == "tiny"
    assert content.model_fingerprint == model_fingerprint(build_tiny_sam())  # the registry's
    assert content.label_values == [4]
    assert content.config is not None
    (concept,) = content.concepts.values()
    assert concept.target_embedding.shape == (256,)
    assert not concept.is_finetuned


def test_learn_finetuned_and_overwrite_rules(reference, tmp_path, capsys):
    out = tmp_path / "f.npz"
    assert _learn(reference, out, "--finetune", "--finetune-steps", "5") == 0
    (concept,) = read_concept_file(out).concepts.values()
    assert concept.mask_weights is not None and concept.mask_weights.shape == (3,)
    before = out.read_bytes()
    assert _learn(reference, out) == 2
    assert "exists" in capsys.readouterr().err
    assert out.read_bytes() == before  # nothing the user made is overwritten
    assert _learn(reference, out, "--overwrite") == 0


def test_bad_arguments_exit_2_with_a_message(reference, tmp_path, capsys):
    image, mask = reference
    assert main(["learn", "--reference", str(image), "--out", str(tmp_path / "c")]) == 2
    assert "1 --reference but 0 --mask" in capsys.readouterr().err
    missing = ["--reference", str(tmp_path / "nope.png"), "--mask", str(mask)]
    assert main(["learn", *missing, "--out", str(tmp_path / "c"), "--model", "tiny"]) == 2
    assert "no such file" in capsys.readouterr().err

    empty = tmp_path / "empty.png"
    Image.fromarray(np.zeros((40, 52), dtype=np.uint8)).save(empty)
    assert _learn((image, empty), tmp_path / "c") == 2
    assert "mask is empty" in capsys.readouterr().err

    args = ["learn", "--reference", str(image), "--mask", str(mask), "--out", str(tmp_path / "c")]
    assert main([*args, "--model", "nonsense"]) == 2
    assert "Unknown model 'nonsense'" in capsys.readouterr().err
    assert main([*args, "--model", "vit_b"]) == 2  # offline here: the checkpoint cannot come
    message = capsys.readouterr().err
    assert "sam_vit_b_01ec64.pth" in message and "put it in" in message
    with pytest.raises(SystemExit) as exit_info:  # argparse's own checks
        main(["learn", "--reference", str(image)])
    assert exit_info.value.code == 2
    assert not (tmp_path / "c.npz").exists()


def test_prompt_mode_max_parts_and_negative_mask(reference, tmp_path, capsys):
    negatives = np.zeros((40, 52), dtype=np.uint8)
    negatives[28:38, 34:50] = 255  # "not this", away from the object
    Image.fromarray(negatives).save(tmp_path / "not_this.png")
    out = tmp_path / "parts.npz"
    args = ("--prompt-mode", "part-aware", "--max-parts", "3")
    assert _learn(reference, out, *args, "--negative-mask", str(tmp_path / "not_this.png")) == 0
    assert "1 negative region" in capsys.readouterr().err
    content = read_concept_file(out)
    assert content.config.prompt_mode == "part-aware" and content.config.max_parts == 3
    (concept,) = content.concepts.values()
    assert concept.negative_prototypes.shape == (1, 256)
    assert set(concept.part_groups.tolist()) <= {2, 3}

    overlapping = negatives.copy()
    overlapping[8:24, 10:30] = 255  # over the object
    Image.fromarray(overlapping).save(tmp_path / "overlap.png")
    assert _learn(reference, tmp_path / "x", "--negative-mask", str(tmp_path / "overlap.png")) == 2
    err = capsys.readouterr().err
    assert "overlap the reference object" in err and "--negative-mask" in err
    assert not (tmp_path / "x.npz").exists()
    twice = ("--negative-mask", "none", "--negative-mask", "none")
    assert _learn(reference, tmp_path / "x", *twice) == 2
    assert "2 --negative-mask but 1 --reference" in capsys.readouterr().err
    assert _learn(reference, tmp_path / "x", "--max-parts", "0") == 2
    assert "--max-parts must be 1 or more" in capsys.readouterr().err
    assert _learn(reference, tmp_path / "none", "--negative-mask", "none") == 0
    (concept,) = read_concept_file(tmp_path / "none.npz").concepts.values()
    assert concept.negative_prototypes is None


def test_the_part_ranges_and_the_instance_distance(reference, tmp_path, capsys):
    out = tmp_path / "ranges.npz"
    args = ("--prompt-mode", "part-aware", "--min-parts", "2", "--max-parts", "3",
            "--max-negative-parts", "0", "--instance-max-distance", "0.5")  # fmt: skip
    assert _learn(reference, out, *args) == 0
    config = read_concept_file(out).config
    assert (config.min_parts, config.max_parts) == (2, 3)
    assert (config.min_negative_parts, config.max_negative_parts) == (0, 0)
    assert config.instance_max_distance == 0.5
    (concept,) = read_concept_file(out).concepts.values()
    assert set(concept.part_groups.tolist()) <= {2, 3}

    # One end given alone moves the other along, as the widget's range does.
    assert _learn(reference, tmp_path / "high", "--min-parts", "7") == 0
    config = read_concept_file(tmp_path / "high.npz").config
    assert (config.min_parts, config.max_parts) == (7, 7)
    capsys.readouterr()
    for bad, said in (
        (("--min-parts", "4", "--max-parts", "2"), "--min-parts 4 is above --max-parts 2"),
        (("--min-parts", "0"), "--min-parts must be 1 or more"),
        (("--max-negative-parts", "-1"), "--max-negative-parts must be 0 or more"),
        (("--instance-max-distance", "0"), "--instance-max-distance must be positive"),
    ):
        assert _learn(reference, tmp_path / "bad", *bad) == 2
        assert said in capsys.readouterr().err
    assert not (tmp_path / "bad.npz").exists()
