"""The progress contract and the terminal bars (tqdm)."""

from __future__ import annotations

import io

import pytest

from napari_persam.core.progress import Progress, TerminalProgress, run


def _work(closed: list):
    try:
        for done in range(3):
            yield Progress(done, 3, "step")
        return "result"
    finally:
        closed.append(True)


def test_run_returns_the_result_and_closes_the_generator_when_the_callback_fails():
    closed: list = []
    seen = []
    assert run(_work(closed), on_progress=seen.append) == "result"
    assert [step.done for step in seen] == [0, 1, 2] and closed == [True]

    closed.clear()

    def fail(step):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(_work(closed), on_progress=fail)
    assert closed == [True]  # cleanup ran at once, not at garbage collection


def test_a_bar_per_task_with_megabytes_for_bytes():
    stream = io.StringIO()
    bar = TerminalProgress(stream)
    size = 40_000_000
    for done in range(0, size + 1, 10_000_000):
        bar(Progress(done, size, "downloading weights.pth"))
    bar(Progress(0, 1, "loading vit_b"))
    bar(Progress(1, 1, "loaded vit_b on cpu"))
    bar.close()
    text = stream.getvalue()
    assert "downloading weights.pth 100%" in text and "40.0/40.0 MB" in text
    assert "loaded vit_b on cpu 100%" in text
    assert "MB" not in text.split("loading vit_b")[1]  # counts, not bytes


def test_a_disabled_bar_writes_nothing():
    stream = io.StringIO()
    bar = TerminalProgress(stream, disable=True)
    bar(Progress(1, 2, "quiet"))
    bar.close()
    assert stream.getvalue() == ""
