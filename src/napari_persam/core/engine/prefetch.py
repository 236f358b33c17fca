"""Reading the next input while the current one is encoded.

Encoding a slice keeps the CPU busy for seconds; reading the next one (a TIFF page,
a zarr chunk, a dask task) mostly waits on the disk or decompresses outside the
GIL. :func:`prefetched` overlaps the two with one helper thread, in order, so a
stack is encoded slice after slice without waiting for its reads.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def prefetched(
    items: Iterable[T], load: Callable[[T], R], *, ahead: int = 1
) -> Iterator[tuple[T, R]]:
    """``(item, load(item))`` for each item in order, loading ``ahead`` items early.

    ``load`` runs in one helper thread; an exception it raises is raised here when
    its item's turn comes (not before). Closing the iterator (the caller stops or
    is cancelled) drops the loads not yet started and waits for the running one.
    """
    if ahead < 1:
        for item in items:
            yield item, load(item)
        return
    source = iter(items)
    queue: deque[tuple[T, Future]] = deque()
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-persam-read")
    try:

        def refill(size: int) -> None:
            while len(queue) < size:
                try:
                    item = next(source)
                except StopIteration:
                    return
                queue.append((item, executor.submit(load, item)))

        refill(ahead + 1)
        while queue:
            item, future = queue.popleft()
            refill(ahead)  # the next reads run while the caller works on this item
            yield item, future.result()
    finally:
        for _, future in queue:
            future.cancel()
        executor.shutdown(wait=True)
