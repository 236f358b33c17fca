"""The ONNX export survives a process that holds the system's LLVM (napari's OpenGL)."""

from __future__ import annotations

import glob
import importlib.util
import subprocess
import sys

import pytest

from napari_persam.core.models.llvm_clash import (
    keep_triton_out_beside_system_llvm,
    system_llvm_loaded,
)

# The system's LLVM loaded as GLX loads Mesa's driver for napari's canvas (global
# symbols), then what the widget's worker does: load the model (torchvision is
# imported) and export the encoder for OpenVINO. Without the guard, the import of
# triton that both set off ends the process (signal 11).
_LOAD_AND_EXPORT_BESIDE_LLVM = """
import ctypes, sys
import napari_persam.core  # before the canvas: nothing to guard against yet
ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_GLOBAL)
from napari_persam.core import run
from napari_persam.core.config import PerSAMConfig
from napari_persam.core.engine_builder import EngineSpec, iter_load
spec = EngineSpec(model="tiny", device="cpu", disk_cache=False,
                  config=PerSAMConfig(encoder_backend="openvino"))
loaded = run(iter_load(spec))
print("loaded", type(loaded.iter_encoder).__name__)
"""


def _system_llvm() -> str | None:
    found = sorted(glob.glob("/usr/lib/*/libLLVM*.so*") + glob.glob("/usr/lib/libLLVM*.so*"))
    return found[0] if found else None


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="no triton installed")
@pytest.mark.skipif(_system_llvm() is None, reason="no system libLLVM (Mesa) on this machine")
def test_a_model_loads_and_exports_in_a_process_holding_the_system_llvm(tmp_path):
    import os

    env = {**os.environ, "NAPARI_PERSAM_CACHE": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", _LOAD_AND_EXPORT_BESIDE_LLVM, _system_llvm()],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "loaded" in done.stdout
    assert list(tmp_path.glob("encoders/*/*/encoder.onnx")), "no ONNX export was made"


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="no triton installed")
@pytest.mark.skipif(_system_llvm() is None, reason="no system libLLVM (Mesa) on this machine")
def test_importing_the_library_after_the_canvas_is_safe_too():
    # The napari console: the canvas (and its LLVM) first, then our library and a model.
    script = (
        "import ctypes, sys; ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_GLOBAL)\n"
        "from napari_persam.core.models import build_tiny_sam\n"
        "build_tiny_sam(seed=0, img_size=256); print('built')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, _system_llvm()], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and "built" in done.stdout, (done.returncode, done.stderr[-2000:])


def test_the_system_llvm_is_seen_in_the_memory_map(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("7f0 r-xp 00 08:01 1 /usr/lib/x86_64-linux-gnu/libLLVM-15.so.1\n")
    assert system_llvm_loaded(maps)
    maps.write_text("7f0 r-xp 00 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert not system_llvm_loaded(maps)
    assert not system_llvm_loaded(tmp_path / "absent")  # not Linux: nothing to guard


def test_triton_is_kept_out_only_beside_llvm(tmp_path, monkeypatch):
    maps = tmp_path / "maps"
    maps.write_text("")
    monkeypatch.delitem(sys.modules, "triton", raising=False)
    assert not keep_triton_out_beside_system_llvm(maps)
    assert "triton" not in sys.modules
    maps.write_text("7f0 r-xp 00 08:01 1 /usr/lib/libLLVM-15.so.1\n")
    assert keep_triton_out_beside_system_llvm(maps)
    with pytest.raises(ImportError):
        import triton  # noqa: F401
    assert keep_triton_out_beside_system_llvm(maps)  # again: still out
