"""What importing the plugin loads, and the guard against the triton/LLVM crash."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from napari_persam._widgets._imports import foreign_llvm_loaded

SRC = Path(__file__).resolve().parents[2] / "src"


def test_plugin_modules_do_not_import_torch():
    # napari imports these to list and open the plugin; torch must wait for Run.
    code = (
        "import sys; import napari_persam._widgets, napari_persam._sample_data; "
        "heavy = [m for m in ('torch', 'segment_anything') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(SRC)},
    )  # fmt: skip
    assert result.stdout.strip() == ""


def test_foreign_llvm_is_seen_in_the_memory_maps(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert not foreign_llvm_loaded(str(maps))
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libLLVM-15.so.1\n")
    assert foreign_llvm_loaded(str(maps))
    assert not foreign_llvm_loaded(str(tmp_path / "missing"))
