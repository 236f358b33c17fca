"""``napari-persam segment`` end to end with the tiny random model."""

from __future__ import annotations

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


def _scene(rng: np.random.Generator, shift: int = 0) -> np.ndarray:
    image = (rng.random((40, 52)) * 60).astype(np.uint8)
    image[8 + shift : 24 + shift, 10:30] = 210
    return image


@pytest.fixture
def data(tmp_path, rng) -> Path:
    """references/ (image + mask), images/ (2 PNGs + 1 TIFF), stack.tif (3 slices)."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    Image.fromarray(_scene(rng)).save(root / "reference.png")
    mask = np.zeros((40, 52), dtype=np.uint8)
    mask[8:24, 10:30] = 1
    Image.fromarray(mask).save(root / "mask.png")
    Image.fromarray(_scene(rng, 2)).save(root / "images" / "a.png")
    Image.fromarray(_scene(rng, 6)).save(root / "images" / "b.jpg", quality=95)
    tifffile.imwrite(root / "images" / "c.tif", _scene(rng, 4).astype(np.uint16) * 100)
    stack = np.stack([_scene(rng, shift) for shift in (0, 3, 6)]).astype(np.uint16) * 50
    tifffile.imwrite(root / "stack.tif", stack, photometric="minisblack")
    return root


def _references(data: Path) -> list[str]:
    return ["--reference", str(data / "reference.png"), "--mask", str(data / "mask.png")]


def _segment(*args: str, cache: str | None = None) -> int:
    options = ["--cache", cache] if cache else ["--no-cache"]
    return main(["segment", "--model", "tiny", "--device", "cpu", "--quiet", *options, *args])


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


@pytest.mark.slow
def test_folder_and_stack_end_to_end_then_resume(data, tmp_path):
    out = tmp_path / "out"
    targets = ["--targets", str(data / "images"), str(data / "stack.tif")]
    assert _segment(*_references(data), *targets, "--out", str(out)) == 0

    assert sorted(p.name for p in out.iterdir()) == [
        ".napari-persam", "a.png", "b.png", "c.tif", "report.json", "stack.zarr",
    ]  # fmt: skip
    for name in ("a.png", "b.png"):
        labels = np.asarray(Image.open(out / name))
        assert labels.shape == (40, 52) and set(np.unique(labels)) <= {0, 1}
    assert tifffile.imread(out / "c.tif").shape == (40, 52)
    stack = zarr.open_array(str(out / "stack.zarr"), mode="r")
    assert stack.shape == (3, 40, 52) and stack.dtype == np.uint8 and stack.chunks == (1, 40, 52)

    report = _report(out)
    assert report["summary"] == {"ok": 6, "skipped": 0, "failed": 0}
    assert report["run"]["model"] == "tiny"
    for item in report["items"]:
        assert {"input", "slice", "output", "score", "area", "time_s"} <= set(item)
    slices = [item["slice"] for item in report["items"] if item["input"].endswith("stack.tif")]
    assert slices == [0, 1, 2]
    first = {(item["input"], item["slice"]): item["area"] for item in report["items"]}

    # Resume: finished outputs are skipped, a missing one is made again.
    (out / "a.png").unlink()
    (out / ".napari-persam" / "records" / "stack.zarr" / "1.json").unlink()
    assert _segment(*_references(data), *targets, "--out", str(out)) == 0
    report = _report(out)
    assert report["summary"] == {"ok": 2, "skipped": 4, "failed": 0}
    again = {(item["input"], item["slice"]): item["area"] for item in report["items"]}
    assert again == first  # skipped items keep their earlier numbers


@pytest.mark.slow
def test_concept_file_zarr_stack_and_label_value(data, tmp_path):
    concept = tmp_path / "concept.npz"
    assert main(["learn", *_references(data), "--out", str(concept), "--model", "tiny",
                 "--device", "cpu", "--no-cache", "--label-value", "3"]) == 0  # fmt: skip
    volume = tifffile.imread(data / "stack.tif")
    zarr.create_array(store=str(tmp_path / "volume.zarr"), data=volume, chunks=(2, 40, 52))
    out = tmp_path / "out"
    assert _segment("--concept", str(concept), "--targets", str(tmp_path / "volume.zarr"),
                    "--out", str(out)) == 0  # fmt: skip
    labels = zarr.open_array(str(out / "volume.zarr"), mode="r")[...]
    assert labels.shape == (3, 40, 52)
    assert set(np.unique(labels)) <= {0, 3}

    # Same slices from the TIFF stack with references give the same labels (as 0/1).
    assert _segment(*_references(data), "--targets", str(data / "stack.tif"),
                    "--out", str(tmp_path / "direct")) == 0  # fmt: skip
    direct = zarr.open_array(str(tmp_path / "direct" / "stack.zarr"), mode="r")[...]
    np.testing.assert_array_equal(labels == 3, direct == 1)


@pytest.mark.slow
def test_second_run_reads_embeddings_from_the_cache(data, tmp_path, monkeypatch):
    from napari_persam.core.engine import persam

    calls = []
    original = persam.encode_image

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(persam, "encode_image", counting)
    cache = str(tmp_path / "cache")
    targets = ["--targets", str(data / "images" / "a.png"), str(data / "stack.tif")]
    assert _segment(*_references(data), *targets, "--out", str(tmp_path / "one"), cache=cache) == 0
    assert len(calls) == 5  # reference + image + 3 slices
    assert _segment(*_references(data), *targets, "--out", str(tmp_path / "two"), cache=cache) == 0
    assert len(calls) == 5  # nothing encoded again
    for name in ("a.png",):
        np.testing.assert_array_equal(
            np.asarray(Image.open(tmp_path / "one" / name)),
            np.asarray(Image.open(tmp_path / "two" / name)),
        )


def test_failed_inputs_are_named_and_the_rest_written(data, tmp_path, capsys):
    (data / "images" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    targets = ["--targets", str(data / "images" / "a.png"), str(data / "images" / "broken.png")]
    assert _segment(*_references(data), *targets, "--out", str(out)) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "broken.png" in err
    assert (out / "a.png").exists()
    (failed,) = [item for item in _report(out)["items"] if item["status"] == "failed"]
    assert failed["input"].endswith("broken.png") and "error" in failed


@pytest.mark.slow
def test_killed_run_then_clean_rerun(data, tmp_path):
    out = tmp_path / "out"
    script = textwrap.dedent(
        f"""
        import os
        from napari_persam.core.batch import run
        from napari_persam.core.io import labels
        from napari_persam.cli import main

        calls = []

        def write_then_die(path, array):
            calls.append(path)
            if len(calls) == 2:  # killed while writing the second output
                partial = os.path.join(os.path.dirname(path), ".b.123.partial.png")
                open(partial, "wb").write(b"half")
                os._exit(9)
            labels.write_labels(path, array)

        run.write_labels = write_then_die
        main(["segment", "--model", "tiny", "--device", "cpu", "--no-cache", "--quiet",
              "--reference", {str(data / "reference.png")!r}, "--mask", {str(data / "mask.png")!r},
              "--targets", {str(data / "images")!r}, "--out", {str(out)!r}])
        """
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    killed = subprocess.run([sys.executable, "-c", script], env=env, timeout=300, check=False)
    assert killed.returncode == 9
    assert (out / "a.png").exists() and not (out / "b.png").exists()
    assert not (out / "report.json").exists()

    assert _segment(*_references(data), "--targets", str(data / "images"), "--out", str(out)) == 0
    report = _report(out)
    assert report["summary"] == {"ok": 2, "skipped": 1, "failed": 0}
    names = sorted(p.name for p in out.iterdir())  # the partial file is gone
    assert names == [".napari-persam", "a.png", "b.png", "c.tif", "report.json"]
    assert np.asarray(Image.open(out / "b.png")).shape == (40, 52)


def test_wrong_model_concept_exits_2_naming_both(data, tmp_path, capsys):
    from napari_persam.core.engine.concepts import Concept
    from napari_persam.core.io.concept_file import save_concept

    other = Concept(
        target_embedding=np.ones(256, np.float32), model_fingerprint="0" * 32, model_name="tiny"
    )
    path = save_concept(other, tmp_path / "other.npz")
    code = _segment("--concept", str(path), "--targets", str(data / "images"),
                    "--out", str(tmp_path / "out"))  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "learned with model 'tiny' [fingerprint 000000000000" in err
    assert "other weights" in err
    assert not list((tmp_path / "out").glob("*.png"))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--targets", "{data}/images"], "give --concept FILE or at least one --reference"),
        (["{refs}", "--concept", "{data}/c.npz", "--targets", "{data}/images"], "not both"),
        (["{refs}", "--targets", "{data}/nothing"], "no such file or folder"),
        (["{refs}", "--targets", "{data}/*.xyz"], "matches no image files"),
        (["--concept", "{data}/missing.npz", "--targets", "{data}/images"], "does not exist"),
        (["--concept", "{data}/mask.png", "--targets", "{data}/images"], "not a valid concept"),
        (["--concept", "{data}/c.npz", "--finetune", "--targets", "{data}/images"], "finetune"),
        (
            ["--concept", "{data}/c.npz", "--negative-mask", "{data}/mask.png", "--targets", "x"],
            "--negative-mask goes with --reference",
        ),
        (["{refs}", "--targets", "{data}/images", "--workers", "0"], "--workers must be"),
        (["{refs}", "--targets", "{data}/images", "--out", "{data}/images"], "in the output"),
        (["{refs}", "--targets", "{data}/images", "--out", "{data}/mask.png"], "is a file"),
        (["{refs}", "--targets", "{data}/images/a.png", "{data}/images/a.png"], None),
    ],
)
def test_bad_arguments_exit_2_with_a_message(data, tmp_path, capsys, arguments, message):
    refs = _references(data)
    expanded: list[str] = []
    for argument in arguments:
        if argument == "{refs}":
            expanded += refs
        else:
            expanded.append(argument.format(data=data))
    if "--out" not in expanded:
        expanded += ["--out", str(tmp_path / "out")]
    if message is None:  # a duplicate target is used once, not an error
        assert _segment(*expanded) == 0
        assert _report(tmp_path / "out")["summary"]["ok"] == 1
        return
    assert _segment(*expanded) == 2
    assert message in capsys.readouterr().err


def test_duplicate_output_names_are_refused(data, tmp_path, capsys):
    (data / "other").mkdir()
    Image.fromarray(_scene(np.random.default_rng(0))).save(data / "other" / "a.png")
    code = _segment(*_references(data), "--targets", str(data / "images"), str(data / "other"),
                    "--out", str(tmp_path / "out"))  # fmt: skip
    assert code == 2
    assert "would both be written" in capsys.readouterr().err


def test_instances_and_propagation_from_the_command_line(data, tmp_path):
    stack = np.stack([_scene(np.random.default_rng(z)) for z in range(3)])
    tifffile.imwrite(data / "stack.tif", stack, photometric="minisblack")
    out = tmp_path / "out"
    code = _segment(*_references(data), "--targets", str(data / "stack.tif"), "--instances",
                    "--stack-mode", "propagate", "--start-slice", "1",
                    "--out", str(out))  # fmt: skip
    assert code == 0
    labels = zarr.open_array(str(out / "stack.zarr"), mode="r")[...]
    assert labels.shape == stack.shape[:3] and labels.dtype == np.int32
    report = json.loads((out / "report.json").read_text())
    assert report["items"][0]["status"] == "ok"


def test_start_slice_needs_propagation(data, tmp_path, capsys):
    code = _segment(*_references(data), "--targets", str(data / "images"), "--start-slice", "2",
                    "--out", str(tmp_path / "out"))  # fmt: skip
    assert code == 2
    assert "--start-slice goes with --stack-mode propagate" in capsys.readouterr().err


def test_part_aware_prompts_and_negatives_from_the_command_line(data, tmp_path):
    negatives = np.zeros((40, 52), dtype=np.uint8)
    negatives[30:38, 36:50] = 1
    Image.fromarray(negatives).save(data / "not_this.png")
    out = tmp_path / "out"
    code = _segment(*_references(data), "--negative-mask", str(data / "not_this.png"),
                    "--prompt-mode", "part-aware", "--max-parts", "2",
                    "--targets", str(data / "images" / "a.png"), "--out", str(out))  # fmt: skip
    assert code == 0
    assert _report(out)["summary"]["ok"] == 1
    assert (out / "a.png").exists()


@pytest.fixture
def small_discs(tmp_path) -> Path:
    """A 700 x 700 field of 8-px discs (too small for the whole-image scale), one painted."""
    root = tmp_path / "discs"
    root.mkdir()
    rng = np.random.default_rng(7)
    image = np.clip(60 + rng.normal(0, 4, (700, 700)), 0, 255).astype(np.uint8)
    mask = np.zeros((700, 700), np.uint8)
    yy, xx = np.mgrid[:700, :700]
    for index, (y, x) in enumerate([(60, 60), (300, 420), (650, 200), (500, 650)]):
        disc = (yy - y) ** 2 + (xx - x) ** 2 <= 16
        image[disc] = 230
        if index == 0:
            mask[disc] = 1
    Image.fromarray(image).save(root / "field.png")
    Image.fromarray(mask).save(root / "mask.png")
    return root


def test_small_objects_are_segmented_in_tiles_and_the_report_says_so(small_discs, tmp_path):
    refs = ["--reference", str(small_discs / "field.png"), "--mask", str(small_discs / "mask.png")]
    target = ["--targets", str(small_discs / "field.png")]
    assert _segment(*refs, *target, "--out", str(tmp_path / "tiled")) == 0
    (item,) = _report(tmp_path / "tiled")["items"]
    assert item["tiles"] > 1 and 2.0 < item["pixels_per_cell"] < 6.0
    assert _report(tmp_path / "tiled")["run"]["encodings"]["total"] == item["tiles"]
    assert _segment(*refs, *target, "--tiling", "off", "--out", str(tmp_path / "whole")) == 0
    (item,) = _report(tmp_path / "whole")["items"]
    assert item["tiles"] == 1 and item["pixels_per_cell"] is None


def test_a_plan_beyond_max_tiles_stops_before_anything_is_written(small_discs, tmp_path, capsys):
    refs = ["--reference", str(small_discs / "field.png"), "--mask", str(small_discs / "mask.png")]
    out = tmp_path / "out"
    code = _segment(*refs, "--targets", str(small_discs / "field.png"), "--max-tiles", "2",
                    "--out", str(out))  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "--max-tiles" in err and "--object-cells" in err and "--tiling" in err
    assert not out.exists()


def test_a_concept_files_plan_beyond_max_tiles_stops_before_the_model_loads(
    small_discs, tmp_path, capsys, monkeypatch
):
    from napari_persam._cli import segment

    concept = tmp_path / "discs.npz"
    assert main(["learn", "--model", "tiny", "--device", "cpu", "--no-cache",
                 "--reference", str(small_discs / "field.png"),
                 "--mask", str(small_discs / "mask.png"), "--out", str(concept)]) == 0  # fmt: skip
    capsys.readouterr()

    def no_model(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the tile plan was checked")

    monkeypatch.setattr(segment, "load_engine", no_model)
    out = tmp_path / "out"
    code = _segment("--concept", str(concept), "--targets", str(small_discs / "field.png"),
                    "--max-tiles", "2", "--out", str(out))  # fmt: skip
    assert code == 2
    assert "--max-tiles" in capsys.readouterr().err
    assert not out.exists()
