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
