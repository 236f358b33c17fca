"""The widget's device list before torch is loaded: a guess that never imports torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import napari_persam
from napari_persam.core import devices

SRC = str(Path(napari_persam.__file__).resolve().parents[1])


def test_gpus_the_driver_lists_are_offered(monkeypatch):
    real = os.listdir

    def listdir(path):
        if str(path) == "/proc/driver/nvidia/gpus":
            return ["0000:01:00.0", "0000:41:00.0"]
        return real(path)

    monkeypatch.setattr(devices.os, "listdir", listdir)
    monkeypatch.setattr(devices.platform, "system", lambda: "Linux")
    assert devices.likely_devices() == ["cuda:0", "cuda:1", "cpu"]


def test_apple_silicon_offers_mps(monkeypatch):
    monkeypatch.setattr(devices.os, "listdir", lambda path: (_ for _ in ()).throw(OSError()))
    monkeypatch.setattr(devices.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(devices.platform, "machine", lambda: "arm64")
    assert devices.likely_devices() == ["mps", "cpu"]


def test_the_guess_imports_no_torch():
    code = (
        "import sys; from napari_persam.core.devices import likely_devices; "
        "names = likely_devices(); print(names[-1], 'torch' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert result.stdout.split() == ["cpu", "False"]
