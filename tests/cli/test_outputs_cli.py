"""Nothing the user made is lost or misread: outputs, concepts and checkpoints (issue 13)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

import napari_persam
from napari_persam.cli import main

SRC = str(Path(napari_persam.__file__).resolve().parents[1])
TINY = ["--model", "tiny", "--device", "cpu", "--no-cache"]
SHAPE = (40, 52)


def _scene(seed: int = 0) -> np.ndarray:
    image = (np.random.default_rng(seed).random(SHAPE) * 60).astype(np.uint8)
    image[8:24, 10:30] = 210
    return image


@pytest.fixture
def data(tmp_path) -> Path:
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    Image.fromarray(_scene()).save(root / "reference.png")
    mask = np.zeros(SHAPE, np.uint8)
    mask[8:24, 10:30] = 1
    Image.fromarray(mask).save(root / "mask.png")
    Image.fromarray(_scene(1)).save(root / "images" / "a.png")
    Image.fromarray(_scene(2)).save(root / "images" / "b.jpg", quality=95)
    return root


def _refs(data: Path) -> list[str]:
    return ["--reference", str(data / "reference.png"), "--mask", str(data / "mask.png")]


def _segment(*args: str) -> int:
    return main(["segment", "--quiet", *TINY, *args])


def _concept(data: Path, tmp_path: Path, **changes) -> Path:
    """A concept file learned with the tiny model, its metadata changed by ``changes``."""
    path = tmp_path / "concept.npz"
    assert main(["learn", *_refs(data), "--out", str(path), *TINY]) == 0
    if not changes:
        return path
    with np.load(path) as archive:
        arrays = {key: archive[key] for key in archive.files}
    metadata = json.loads(arrays.pop("metadata").tobytes())
    for key, value in changes.items():
        if key == "label_value":
            metadata["classes"][0]["label_value"] = value
            metadata["label_values"] = [value]
        else:
            arrays[key] = value
    text = json.dumps(metadata).encode()
    np.savez(path, metadata=np.frombuffer(text, np.uint8), **arrays)
    return path


# ------------------------------------------------------------------- 6-8. concepts
def test_a_tampered_concept_file_gets_one_message(data, tmp_path, capsys):
    path = tmp_path / "bad.npz"
    text = json.dumps({"format": "napari-persam concept", "format_version": 1}).encode()
    np.savez(path, metadata=np.frombuffer(text, np.uint8))
    code = _segment("--concept", str(path), "--targets", str(data / "images"),
                    "--out", str(tmp_path / "out"))  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "is not a valid concept file: the metadata has no 'model'" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "change",
    [
        {"class_0/target_embedding": np.ones(10, np.float32),
         "class_0/shot_embeddings": np.ones((1, 10), np.float32)},
        {"class_0/target_embedding": np.full(256, np.nan, np.float32)},
        {"label_value": 0},
    ],
)  # fmt: skip
def test_concepts_that_would_give_wrong_results_exit_2(data, tmp_path, capsys, change):
    path = _concept(data, tmp_path, **change)
    out = tmp_path / "out"
    assert (
        _segment("--concept", str(path), "--targets", str(data / "images"), "--out", str(out)) == 2
    )
    assert "is not a valid concept file" in capsys.readouterr().err
    assert not out.exists()


def test_a_concept_of_another_model_is_refused_before_any_download(data, tmp_path, capsys):
    path = _concept(data, tmp_path)
    out = tmp_path / "out"
    code = main(["segment", "--concept", str(path), "--model", "vit_t", "--device", "cpu",
                 "--targets", str(data / "images"), "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "learned with model 'tiny', not with 'vit_t'" in err and "--model 'tiny'" in err
    assert "mobile_sam.pt" not in err and "download" not in err.lower()


# ------------------------------------------------------------ 9. the user's files
def test_a_report_json_of_the_user_s_is_never_replaced(data, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text('{"my": "notes"}')
    code = _segment(*_refs(data), "--targets", str(data / "images" / "a.png"), "--out", str(out))
    assert code == 2
    assert "report.json exists and was not written by napari-persam" in capsys.readouterr().err
    assert (out / "report.json").read_text() == '{"my": "notes"}'
    assert sorted(path.name for path in out.iterdir()) == ["report.json"]


def test_our_own_report_is_replaced_by_the_next_run(data, tmp_path):
    out = tmp_path / "out"
    targets = ["--targets", str(data / "images" / "a.png"), "--out", str(out)]
    assert _segment(*_refs(data), *targets) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["format"] == "napari-persam segment report"
    legacy = {key: report[key] for key in ("run", "summary", "items")}  # as 0.x wrote it
    (out / "report.json").write_text(json.dumps(legacy))
    assert _segment(*_refs(data), *targets) == 0
    assert json.loads((out / "report.json").read_text())["summary"]["skipped"] == 1


def test_learn_overwrite_replaces_only_concept_files(data, tmp_path, capsys):
    precious = tmp_path / "precious.npz"
    np.savez(precious, measurements=np.arange(5))
    before = precious.read_bytes()
    learn = ["learn", *_refs(data), "--out", str(precious), "--overwrite", *TINY]
    assert main(learn) == 2
    assert "is not a concept file; it is kept" in capsys.readouterr().err
    assert precious.read_bytes() == before


# -------------------------------------------------------- 10. inputs in the output
def test_an_output_folder_holding_the_inputs_is_refused_at_the_first_run(data, capsys):
    images = data / "images"
    assert _segment(*_refs(data), "--targets", str(images), "--out", str(images)) == 2
    assert "is in the output folder" in capsys.readouterr().err
    assert sorted(path.name for path in images.iterdir()) == ["a.png", "b.jpg"]


def test_outputs_found_again_by_a_glob_are_not_inputs(data, tmp_path):
    pattern = str(data / "**" / "*.png")
    out = data / "results"
    assert _segment(*_refs(data), "--targets", pattern, "--out", str(out)) == 0
    first = json.loads((out / "report.json").read_text())["summary"]
    assert _segment(*_refs(data), "--targets", pattern, "--out", str(out)) == 0
    again = json.loads((out / "report.json").read_text())["summary"]
    assert again == {"ok": 0, "skipped": first["ok"], "failed": 0}


# -------------------------------------------------------- 11. unwritable --out
def test_an_out_under_a_file_is_refused_before_any_work(data, tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("mine")
    targets = ["--targets", str(data / "images")]
    assert _segment(*_refs(data), *targets, "--out", str(blocker / "out")) == 2
    err = capsys.readouterr().err
    assert "cannot be created" in err and "is a file, not a folder" in err
    learn = ["learn", *_refs(data), "--out", str(blocker / "c.npz"), *TINY]
    assert main(learn) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_an_unwritable_out_is_refused_before_the_model_loads(data, tmp_path, capsys, monkeypatch):
    from napari_persam.core.io import folders

    loaded = []
    monkeypatch.setattr(folders, "writable_problem", lambda folder: "Permission denied")
    monkeypatch.setattr("napari_persam._cli.common.load_engine", lambda *a, **k: loaded.append(1))
    targets = ["--targets", str(data / "images")]
    assert _segment(*_refs(data), *targets, "--out", str(tmp_path / "out")) == 2
    assert "is not writable" in capsys.readouterr().err
    assert main(["learn", *_refs(data), "--out", str(tmp_path / "c.npz"), *TINY]) == 2
    assert "Permission denied" in capsys.readouterr().err
    root = tmp_path / "dataset"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name in ("a", "b"):
        Image.fromarray(_scene()).save(root / "images" / f"{name}.png")
        Image.fromarray((_scene() > 100).astype(np.uint8)).save(root / "masks" / f"{name}.png")
    assert main(["evaluate", str(root), *TINY, "--out", str(tmp_path / "report")]) == 2
    assert "is not writable" in capsys.readouterr().err
    assert not loaded


# --------------------------------------------------------- 12. a read-only cache
def test_a_cache_that_cannot_be_written_is_warned_about_once(data, tmp_path, capsys, monkeypatch):
    from napari_persam.core.io.disk_cache import DiskEmbeddingCache

    def denied(self, folder, signature, value):
        raise PermissionError(13, "Permission denied", str(folder))

    monkeypatch.setattr(DiskEmbeddingCache, "_write", denied)
    code = main(["segment", "--quiet", "--model", "tiny", "--device", "cpu", *_refs(data),
                 "--cache", str(tmp_path / "cache"), "--targets", str(data / "images"),
                 "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    assert err.count("warning: Could not write to the embedding cache") == 1
    assert "Traceback" not in err


# ------------------------------------------------- 13. a kill between file and record
@pytest.mark.slow
def test_a_kill_between_an_output_and_its_record_does_not_block_resume(data, tmp_path):
    out = tmp_path / "out"
    script = textwrap.dedent(
        f"""
        import os
        from napari_persam.core.batch import run
        from napari_persam.core.io import labels
        from napari_persam.cli import main

        def die_before_the_finished_record(path, content):
            if content.get("status") == "ok":
                os._exit(9)  # the label file is in place; its finished record is not
            labels.write_json(path, content)

        run.write_json = die_before_the_finished_record
        main(["segment", "--model", "tiny", "--device", "cpu", "--no-cache", "--quiet",
              "--reference", {str(data / "reference.png")!r}, "--mask", {str(data / "mask.png")!r},
              "--targets", {str(data / "images" / "a.png")!r}, "--out", {str(out)!r}])
        """
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    killed = subprocess.run([sys.executable, "-c", script], env=env, timeout=300, check=False)
    assert killed.returncode == 9 and (out / "a.png").exists()
    targets = ["--targets", str(data / "images" / "a.png"), "--out", str(out)]
    assert _segment(*_refs(data), *targets) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["summary"] == {"ok": 1, "skipped": 0, "failed": 0}


# ---------------------------------------------------------- 14-15. label values
def test_label_values_beyond_16_bits_get_32_bit_outputs_or_a_message(data, tmp_path, capsys):
    path = _concept(data, tmp_path, label_value=70_000)
    tifffile.imwrite(tmp_path / "t.tif", _scene(1))
    out = tmp_path / "out"
    assert _segment("--concept", str(path), "--targets", str(tmp_path / "t.tif"),
                    "--out", str(out)) == 0  # fmt: skip
    labels = tifffile.imread(out / "t.tif")
    assert labels.dtype == np.int32 and set(np.unique(labels)) <= {0, 70_000}
    assert _segment("--concept", str(path), "--targets", str(data / "images"),
                    "--out", str(tmp_path / "png")) == 2  # fmt: skip
    assert "PNGs, which hold 16 bits" in capsys.readouterr().err
    assert not (tmp_path / "png").exists()


def test_instance_outputs_have_the_documented_dtypes(data, tmp_path):
    tifffile.imwrite(tmp_path / "t.tif", _scene(1))
    stack = np.stack([_scene(z) for z in range(2)])
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    out = tmp_path / "out"
    targets = [str(data / "images" / "a.png"), str(tmp_path / "t.tif"), str(tmp_path / "s.tif")]
    assert _segment(*_refs(data), "--instances", "--targets", *targets, "--out", str(out)) == 0
    assert np.asarray(Image.open(out / "a.png")).dtype == np.uint16  # not uint8 for few ids
    assert tifffile.imread(out / "t.tif").dtype == np.int32
    assert zarr.open_array(str(out / "s.zarr"), mode="r").dtype == np.int32
    help_text = io.StringIO()
    with pytest.raises(SystemExit):
        sys.stdout, saved = help_text, sys.stdout
        try:
            main(["segment", "--help"])
        finally:
            sys.stdout = saved
    assert "int32 in TIFF and zarr outputs, uint16 in PNG outputs" in " ".join(
        help_text.getvalue().split()
    )
    docs = Path(__file__).resolve().parents[2] / "docs" / "command_line.md"
    assert "uint16 in PNG outputs" in " ".join(docs.read_text().split())


# ----------------------------------------------------------- 16. not a checkpoint
def test_random_bytes_are_not_a_checkpoint(data, tmp_path, capsys):
    noise = tmp_path / "weights.pth"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    code = main(["learn", *_refs(data), "--out", str(tmp_path / "c.npz"), "--model", "vit_b",
                 "--device", "cpu", "--no-cache", "--checkpoint", str(noise)])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "is not a PyTorch checkpoint" in err
    assert "weights_only" not in err and "pickled" not in err
