"""The longest event-loop stall of napari while the PerSAM widget opens and while it runs.

A stall is time in which napari's window cannot repaint or react: the GUI thread
is busy, or another thread holds Python's lock. It is measured with a timer that
should fire every ``--tick`` ms on the GUI thread: the longest interval between
two firings, minus the tick, is the longest stall. With each interval the GUI
thread's own CPU time in it is recorded (``time.thread_time``): the longest stall's
CPU time says how much of it was the GUI thread working (our code, napari's) rather
than waiting (for Python's lock, or for a CPU on a loaded machine), and the most
GUI-thread CPU time in one interval is the longest stall an idle machine would
see from work on the GUI thread itself.

Each scenario runs in a fresh process, so opening the widget happens without
torch loaded, as when a user opens it from the Plugins menu:

* ``open``: the widget opens (through the manifest, as the menu does), then the
  event loop runs for a second, then the model and device are chosen;
* ``run 1``: the first Run (2D image, one object): it loads PyTorch and the model
  in the worker, learns the reference and segments the image;
* ``run 2``: a second Run on the same image (model and embedding cached).

``--torch-first`` imports torch before the viewer opens (as when another plugin
or the console has loaded it), which shows what is left of a first Run's stall
without torch's import.

Models: ``tiny`` (the test SAM) and ``vit_b`` with random weights (the compute of
the real one; no checkpoint is needed). Needs a display: run under ``xvfb-run``
on a headless machine::

    xvfb-run -a python benchmarks/gui_stalls.py --out benchmarks/results/gui_stalls.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCENARIO = "--scenario"


def measure(model: str, *, torch_first: bool, tick_ms: float) -> dict:
    """Run one scenario set in this process; returns the stalls in milliseconds."""
    if torch_first:
        import torch  # noqa: F401

    import napari
    import numpy as np
    from qtpy.QtCore import QElapsedTimer, QEventLoop, QTimer
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    rng = np.random.default_rng(0)
    image = (rng.random((384, 512)) * 60).astype(np.uint8)
    image[100:220, 150:330] = 210
    labels = np.zeros(image.shape, np.uint8)
    labels[120:200, 170:310] = 1
    viewer.add_image(image, name="image")
    viewer.add_labels(labels, name="reference")
    _wait(app, 0.5)

    gaps: list[tuple[float, float]] = []  # (wall ms, GUI-thread CPU ms) between ticks
    clock = QElapsedTimer()
    timer = QTimer()
    timer.setInterval(int(tick_ms))
    last = [0.0, 0.0]

    def on_tick() -> None:
        now, cpu = clock.nsecsElapsed() / 1e6, time.thread_time() * 1000
        gaps.append((now - last[0], cpu - last[1]))
        last[0], last[1] = now, cpu

    timer.timeout.connect(on_tick)

    def metered(action) -> dict:
        gaps.clear()
        clock.start()
        last[0], last[1] = 0.0, time.thread_time() * 1000
        timer.start()
        started = time.perf_counter()
        action()
        wall = time.perf_counter() - started
        _wait(app, 0.1)  # a few more ticks: a stall at the very end is measured too
        timer.stop()
        longest, longest_cpu = max(gaps, default=(0.0, 0.0))
        return {
            "longest_stall_ms": round(max(0.0, longest - tick_ms), 1),
            "longest_stall_gui_cpu_ms": round(longest_cpu, 1),
            "most_gui_cpu_between_ticks_ms": round(max((c for _, c in gaps), default=0.0), 1),
            "stalls_over_100ms": sum(1 for gap, _ in gaps if gap - tick_ms > 100),
            "wall_s": round(wall, 2),
        }

    widget_box: list = []

    def open_widget() -> None:
        def do_open() -> None:
            _, widget = viewer.window.add_plugin_dock_widget("napari-persam", "PerSAM")
            widget_box.append(widget)

        QTimer.singleShot(0, do_open)  # inside the event loop, like a menu click
        _wait(app, 1.0)  # the form is built a piece per turn meanwhile
        # Then the choices a user would make (asking for a control before the form
        # is built would build the rest at once, as a script needs it).
        widget = widget_box[0]
        widget.model.value = model
        widget.device.value = "cpu"
        widget.cache_on_disk.value = False
        if model != "tiny":
            widget.model_factory = _random_weights

    def run_once() -> None:
        widget = widget_box[0]
        loop = QEventLoop()

        def start() -> None:
            widget.run()
            if widget.worker is None:
                loop.quit()
                return
            widget.worker.finished.connect(lambda: QTimer.singleShot(50, loop.quit))

        QTimer.singleShot(0, start)
        loop.exec_() if hasattr(loop, "exec_") else loop.exec()
        if not widget.status.value.startswith("Done"):
            raise RuntimeError(f"the Run did not finish: {widget.status.value}")

    results = {
        "open": metered(open_widget),
        "run 1": metered(run_once),
        "run 2": metered(run_once),
    }
    viewer.close()
    return results


def _random_weights(name, *, checkpoint, device):
    """A model factory: the registry's architecture with random weights (no download)."""
    from napari_persam.core.models import build_model

    yield from ()
    return build_model(name, checkpoint=None, device=device or "cpu")


def _wait(app, seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.002)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "vit_b"])
    parser.add_argument("--tick-ms", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=1, help="fresh processes per case")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--compare",
        type=Path,
        default=None,
        metavar="SRC",
        help="also run each case with the package in SRC (another version's src/ folder), "
        "interleaved with this one, for a ratio under the same load",
    )
    parser.add_argument(
        "--fresh-cache",
        action="store_true",
        help="give each process an empty cache folder, so that the first Run also exports "
        "the image encoder for OpenVINO (as on a user's first Run with a new model)",
    )
    parser.add_argument(SCENARIO, nargs=2, metavar=("MODEL", "TORCH_FIRST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scenario:
        model, torch_first = args.scenario[0], args.scenario[1] == "1"
        print(json.dumps(measure(model, torch_first=torch_first, tick_ms=args.tick_ms)))
        return 0

    here = str(Path(__file__).resolve().parents[1] / "src")
    sources = {"this": here, **({"compared": str(args.compare.resolve())} if args.compare else {})}
    cases = []
    for model in args.models:
        for torch_first in (False, True):
            for repeat in range(args.repeats):
                for version, source in sources.items():
                    command = [sys.executable, __file__, SCENARIO, model, str(int(torch_first)),
                               "--tick-ms", str(args.tick_ms)]  # fmt: skip
                    env = {**os.environ, "PYTHONPATH": source}
                    cache = tempfile.mkdtemp(prefix="gui-stalls-") if args.fresh_cache else None
                    if cache is not None:
                        env["NAPARI_PERSAM_CACHE"] = cache
                    try:
                        done = subprocess.run(
                            command, capture_output=True, text=True, check=False, env=env
                        )
                    finally:
                        if cache is not None:
                            shutil.rmtree(cache, ignore_errors=True)
                    if done.returncode != 0:
                        print(done.stderr[-3000:], file=sys.stderr)
                        return 1
                    result = json.loads(done.stdout.strip().splitlines()[-1])
                    cases.append({"version": version, "model": model, "torch_first": torch_first,
                                  "repeat": repeat, "stalls": result})  # fmt: skip
                    print(_line(cases[-1]), flush=True)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "tick_ms": args.tick_ms,
        "fresh_cache": args.fresh_cache,
        "cases": cases,
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


def _line(case: dict) -> str:
    parts = [
        f"{name}: {v['longest_stall_ms']:.0f} ms (GUI CPU {v['longest_stall_gui_cpu_ms']:.0f}"
        f", most {v['most_gui_cpu_between_ticks_ms']:.0f}; {v['wall_s']:.1f} s)"
        for name, v in case["stalls"].items()
    ]
    first = "torch imported first" if case["torch_first"] else "fresh process"
    return f"{case['version']:8s} {case['model']:6s} {first:21s} " + "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
