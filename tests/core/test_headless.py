"""The core works with napari, qtpy and magicgui unavailable."""

import subprocess
import sys
import textwrap


def test_core_imports_and_runs_without_gui_packages():
    script = textwrap.dedent(
        """
        import sys
        for name in ("napari", "qtpy", "magicgui", "PyQt5", "PyQt6", "PySide2", "PySide6"):
            sys.modules[name] = None  # any import of them now raises ImportError
        import numpy as np
        from napari_persam.core import PerSAM, PerSAMConfig
        from napari_persam.core.models import build_tiny_sam
        engine = PerSAM(build_tiny_sam(img_size=256), config=PerSAMConfig(), device="cpu")
        image = np.random.default_rng(0).integers(0, 255, (64, 80), dtype=np.uint8)
        mask = np.zeros((64, 80), dtype=bool)
        mask[10:30, 20:50] = True
        seg = engine.segment(image, engine.learn(image, mask))
        assert seg.mask.shape == (64, 80)
        loaded = [m for m in ("napari", "qtpy", "magicgui") if sys.modules.get(m) is not None]
        assert not loaded, loaded
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("ok")


def test_importing_the_package_does_not_import_torch():
    script = (
        "import sys, napari_persam, napari_persam.core; "
        "print('torch' in sys.modules, 'segment_anything' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]
