"""The napari manifest and the sample data it contributes (no viewer needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from napari_persam._sample_data import blobs_with_reference, coins_with_reference

ROOT = Path(__file__).resolve().parents[2]


def test_npe2_validate_passes():
    result = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", str(ROOT / "napari.yaml")],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def test_the_packaged_manifest_is_the_top_level_one():
    packaged = ROOT / "src" / "napari_persam" / "napari.yaml"
    assert packaged.resolve() == (ROOT / "napari.yaml").resolve()


def test_manifest_contributes_the_widget_and_two_samples():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(ROOT / "napari.yaml")
    assert [w.display_name for w in manifest.contributions.widgets] == ["PerSAM", "Evaluate"]
    assert {s.key for s in manifest.contributions.sample_data} == {"coins", "blobs3d"}


def test_coins_sample_has_one_painted_coin():
    (image, image_meta, image_kind), (labels, labels_meta, labels_kind) = coins_with_reference()
    assert (image_kind, labels_kind) == ("image", "labels")
    assert (image_meta["name"], labels_meta["name"]) == ("coins", "coins reference")
    assert labels.shape == image.shape == (303, 384) and labels.dtype == np.uint8
    assert set(np.unique(labels)) == {0, 1}
    # The painting lies on a coin, which is brighter than the background.
    assert image[labels == 1].mean() > image[labels == 0].mean() + 30


def test_blobs_sample_is_painted_on_its_middle_slice_only():
    (image, image_meta, _), (labels, labels_meta, _) = blobs_with_reference()
    assert image.shape == labels.shape == (24, 160, 160) and image.dtype == np.float32
    assert image_meta["scale"] == labels_meta["scale"]
    painted = [z for z in range(labels.shape[0]) if labels[z].any()]
    assert painted == [12]
    assert image[labels == 1].mean() > 2 * image[labels == 0].mean()
    again, _, _ = blobs_with_reference()[0]
    np.testing.assert_array_equal(again, image)  # seeded
