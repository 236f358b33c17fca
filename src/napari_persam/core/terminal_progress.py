"""A plain-text progress bar for :class:`~napari_persam.core.progress.Progress` steps.

Used by scripts (``load_model(progress=True)``) and the command line; the widget
shows the same steps in napari's own progress bar instead.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from napari_persam.core.progress import Progress


class TerminalProgress:
    """Draws one line per task, redrawn in place on terminals, at most 10 times a second.

    Call it with each :class:`Progress`; call :meth:`close` at the end. On a
    stream that is not a terminal (a log file), only each task's start and end
    are written, so logs stay short.

    Parameters
    ----------
    stream : text stream, optional
        Where to draw; default ``sys.stderr``.
    width : int
        Characters of the bar itself.
    """

    def __init__(self, stream: TextIO | None = None, *, width: int = 30) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self._interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self._message: str | None = None
        self._last_draw = 0.0
        self._open_line = False

    def __call__(self, step: Progress) -> None:
        new_task = step.message != self._message
        if new_task:
            self._end_line()
            self._message = step.message
        finished = step.total > 0 and step.done >= step.total
        now = time.monotonic()
        if self._interactive:
            if new_task or finished or now - self._last_draw >= 0.1:
                self.stream.write("\r" + self.render(step))
                self.stream.flush()
                self._open_line = True
                self._last_draw = now
        elif new_task or finished:
            self.stream.write(self.render(step) + "\n")
            self.stream.flush()
        if finished:
            self._end_line()
            self._message = None

    def render(self, step: Progress) -> str:
        """One line: message, bar, percentage and, for big totals, megabytes."""
        filled = round(step.fraction * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        text = f"{step.message} [{bar}] {step.fraction:4.0%}"
        if step.total >= 1_000_000:  # byte counts (downloads, hashing)
            text += f" {step.done / 1e6:.1f}/{step.total / 1e6:.1f} MB"
        return text

    def _end_line(self) -> None:
        if self._open_line:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False

    def close(self) -> None:
        """Finish the current line."""
        self._end_line()
