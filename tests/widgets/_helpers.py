"""Helpers shared by the widget tests."""

from __future__ import annotations

import numpy as np


def run_and_wait(qtbot, widget, *, timeout: int = 60_000):
    """Press Run and wait for the worker to finish; returns the worker."""
    widget.run_button.native.click()
    worker = widget.worker
    assert worker is not None, f"Run did not start: {widget.status.value}"
    # The widget starts its worker from the event loop, so connecting here is in time.
    with qtbot.waitSignal(worker.finished, timeout=timeout):
        pass
    qtbot.waitUntil(lambda: not widget.running, timeout=5_000)
    return worker


def squares(shape: tuple[int, ...], *, seed: int = 0) -> np.ndarray:
    """A float32 image of bright squares on noise, (Y, X) or (Z, Y, X)."""
    rng = np.random.default_rng(seed)
    image = rng.normal(0.1, 0.02, size=shape).astype(np.float32)
    height, width = shape[-2:]
    for top in range(4, height - 12, 16):
        for left in range(4, width - 12, 16):
            image[..., top : top + 8, left : left + 8] += 0.8
    return image
