"""Dask runs: two local worker processes give the same files as one process."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_persam.core.batch.cluster import DaskRunner, engine_for
from napari_persam.core.config import PerSAMConfig
from napari_persam.core.engine_builder import EngineSpec


def _dataset(folder: Path, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir()
    for index in range(2):
        image = (rng.random((40, 52)) * 60).astype(np.uint8)
        image[8 + index * 4 : 24 + index * 4, 10:30] = 210
        Image.fromarray(image).save(folder / f"image{index}.png")
    stack = (rng.random((2, 40, 52)) * 900).astype(np.uint16)
    tifffile.imwrite(folder / "stack.tif", stack)
    (folder / "broken.png").write_bytes(b"not a png")
    reference = (rng.random((40, 52)) * 60).astype(np.uint8)
    reference[8:24, 10:30] = 210
    mask = np.zeros((40, 52), dtype=np.uint8)
    mask[8:24, 10:30] = 1
    return reference, mask


def _files(out: Path) -> dict[str, np.ndarray]:
    import zarr

    found = {path.name: np.asarray(Image.open(path)) for path in out.glob("*.png")}
    found.update({path.name: zarr.open_array(path, mode="r")[...] for path in out.glob("*.zarr")})
    return found


def test_the_engine_is_built_once_per_process_and_spec():
    spec = EngineSpec(model="tiny", device="cpu", disk_cache=False)
    assert engine_for(spec) is engine_for(spec)
    other = dataclasses.replace(spec, config=PerSAMConfig(refinement_steps=1))
    assert engine_for(other) is not engine_for(spec)


def test_freed_memory_is_kept_only_in_worker_processes_we_started(monkeypatch):
    from napari_persam.core.batch import cluster

    calls = []
    monkeypatch.setattr(cluster, "keep_freed_memory", lambda **kw: calls.append(kw))
    monkeypatch.setattr(cluster, "_ENGINES", {})
    monkeypatch.delenv(cluster._OWNED_WORKER, raising=False)
    spec = EngineSpec(model="tiny", device="cpu", disk_cache=False)
    engine_for(spec)  # the caller's process, or a worker of the user's own cluster
    assert calls == []
    monkeypatch.setenv(cluster._OWNED_WORKER, "1")  # as LocalCluster(env=...) sets it
    monkeypatch.setattr(cluster, "_ENGINES", {})
    engine_for(spec)
    assert calls == [{"single_arena": True}]


def test_dask_runner_rejects_unclear_requests():
    with pytest.raises(ValueError, match="either workers"):
        DaskRunner()
    with pytest.raises(ValueError, match="1 or more"):
        DaskRunner(workers=0)


@pytest.mark.slow
def test_two_local_workers_equal_one_process(tmp_path, rng, monkeypatch, capsys):
    from napari_persam.cli import main

    reference, mask = _dataset(tmp_path / "data", rng)
    Image.fromarray(reference).save(tmp_path / "reference.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    common = [
        "segment", "--reference", str(tmp_path / "reference.png"),
        "--mask", str(tmp_path / "mask.png"), "--targets", str(tmp_path / "data"),
        "--model", "tiny", "--device", "cpu", "--no-cache", "--quiet",
        # PyTorch on both sides: the workers are other processes, which the tests'
        # "auto means torch" fixture does not reach.
        "--encoder-backend", "torch",
    ]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "one")]) == 1  # broken.png fails

    workers_seen: list[list[str]] = []
    original = DaskRunner.model_identity

    def spy(self, request):
        workers_seen.append(list(self.client.scheduler_info()["workers"]))
        return original(self, request)

    monkeypatch.setattr(DaskRunner, "model_identity", spy)
    assert main([*common, "--out", str(tmp_path / "two"), "--workers", "2"]) == 1
    (addresses,) = workers_seen
    assert len(addresses) == 2
    assert all(address.startswith("tcp://127.0.0.1:") for address in addresses)
    assert "broken.png" in capsys.readouterr().err

    local = json.loads((tmp_path / "one" / "report.json").read_text())["items"]
    remote = json.loads((tmp_path / "two" / "report.json").read_text())["items"]
    assert sorted(r["status"] for r in local) == ["failed", "ok", "ok", "ok", "ok"]
    failed = next(r for r in remote if r["status"] == "failed")
    assert "broken.png" in failed["input"] and "failed 2 times" in failed["error"]
    for ours, theirs in zip(local, remote):
        assert (ours["input"], ours["slice"]) == (theirs["input"], theirs["slice"])
        assert ours["status"] == theirs["status"]
        assert ours.get("score") == theirs.get("score")  # bit for bit
        assert ours.get("area") == theirs.get("area")
    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert sorted(one) == sorted(two) == ["image0.png", "image1.png", "stack.zarr"]
    for name in one:
        np.testing.assert_array_equal(one[name], two[name])
    assert any(array.any() for array in one.values())  # something was segmented


def test_unreachable_scheduler_gives_a_clear_error():
    runner = DaskRunner(scheduler="tcp://127.0.0.1:9", timeout_s=1)
    with pytest.raises(ValueError, match="Could not reach the Dask scheduler"):
        with runner:
            pass
