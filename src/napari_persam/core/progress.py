"""The progress contract shared by the widget, the command line and scripts.

Long work is a generator that yields :class:`Progress` and *returns* its result
(``StopIteration.value``). The widget wraps the same generator in napari's
``thread_worker``; scripts and tests call :func:`run` to drain it.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """One step of long work.

    Attributes
    ----------
    done, total : int
        Units finished so far and units in all (slices, images, bytes...).
    message : str
        Short text for a progress bar.
    index : int or None
        Which item (slice or image index) ``result`` belongs to, if any.
    result : object or None
        A partial result that is ready now, so callers can show results as they
        arrive and keep them when the work is cancelled.
    """

    done: int
    total: int
    message: str = ""
    index: int | None = None
    result: Any = None

    @property
    def fraction(self) -> float:
        return 1.0 if self.total <= 0 else min(1.0, self.done / self.total)


ProgressGenerator = Generator[Progress, None, T]


def run(
    work: Generator[Progress, None, T],
    *,
    on_progress: Callable[[Progress], None] | None = None,
) -> T:
    """Drain a progress generator and return its result.

    Parameters
    ----------
    work : generator
        Yields :class:`Progress`, returns the result.
    on_progress : callable, optional
        Called with each yielded :class:`Progress` (e.g. to print or update a bar).
    """
    try:
        while True:
            try:
                step = next(work)
            except StopIteration as stop:
                return stop.value
            if on_progress is not None:
                on_progress(step)
    finally:
        # If on_progress raised, the generator's own cleanup (a partial download,
        # an open file) runs now rather than whenever it is garbage collected.
        work.close()


class TerminalProgress:
    """Shows :class:`Progress` steps as tqdm bars on a terminal: one bar per task.

    A new ``message`` starts a new bar (downloading, then verifying, then loading);
    steps whose ``total`` is above one million are taken as bytes and shown in MB.
    On a stream that is not a terminal (a log file) tqdm still writes each bar's
    final state, so logs say what happened without a redraw per step.

    Parameters
    ----------
    stream : text stream, optional
        Where to draw; default ``sys.stderr``.
    disable : bool, optional
        True hides every bar.
    """

    def __init__(self, stream: Any = None, *, disable: bool = False) -> None:
        import sys

        self.stream = stream if stream is not None else sys.stderr
        self.disable = disable
        self._bar: Any = None
        self._message: str | None = None
        self._bytes = False

    def __call__(self, step: Progress) -> None:
        if step.message != self._message or self._bar is None:
            self._open(step)
        self._bar.total = self._units(max(step.total, step.done, 1))
        self._bar.n = self._units(step.done)
        self._bar.refresh()
        if step.total > 0 and step.done >= step.total:
            self._close_bar()

    def _open(self, step: Progress) -> None:
        from tqdm import tqdm

        self._close_bar()
        self._message = step.message
        self._bytes = step.total >= 1_000_000
        self._bar = tqdm(
            total=self._units(max(step.total, 1)),
            desc=step.message,
            unit="MB" if self._bytes else "",
            bar_format=(
                "{desc} {percentage:3.0f}%|{bar:30}| {n:.1f}/{total:.1f} MB"
                if self._bytes
                else "{desc} {percentage:3.0f}%|{bar:30}| {n_fmt}/{total_fmt}"
            ),
            file=self.stream,
            disable=self.disable,
            leave=True,
            mininterval=0.1,
        )

    def _units(self, count: int) -> float | int:
        return count / 1e6 if self._bytes else count

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._message = None

    def close(self) -> None:
        """Finish the current bar."""
        self._close_bar()
