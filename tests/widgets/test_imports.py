"""What importing the plugin loads (the triton/LLVM guard: tests/core/models/test_llvm_clash.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
