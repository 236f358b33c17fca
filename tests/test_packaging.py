"""The manifest napari loads is the top-level napari.yaml, installed or editable."""

import subprocess
import sys
import zipfile
from importlib import resources
from importlib.metadata import entry_points
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_entry_point_names_the_packaged_manifest():
    (entry,) = [e for e in entry_points(group="napari.manifest") if e.name == "napari-persam"]
    assert entry.value == "napari_persam:napari.yaml"
    packaged = resources.files("napari_persam") / "napari.yaml"
    assert packaged.read_text() == (ROOT / "napari.yaml").read_text()


def test_npe2_loads_the_top_level_manifest():
    from npe2 import PluginManifest

    installed = PluginManifest.from_distribution("napari-persam")
    top_level = PluginManifest.from_file(ROOT / "napari.yaml")
    assert installed.name == top_level.name == "napari-persam"
    assert installed.contributions == top_level.contributions


@pytest.mark.slow
def test_built_wheel_ships_the_top_level_manifest(tmp_path):
    pytest.importorskip("hatchling")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("napari_persam-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = archive.read("napari_persam/napari.yaml").decode()
        entry_points_txt = next(n for n in archive.namelist() if n.endswith("entry_points.txt"))
        entry_text = archive.read(entry_points_txt).decode()
    assert shipped == (ROOT / "napari.yaml").read_text()
    assert "napari-persam = napari_persam:napari.yaml" in entry_text
