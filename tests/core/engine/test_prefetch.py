"""Reading ahead in a helper thread, in order, errors at their item's turn."""

import threading

import pytest

from napari_persam.core.engine.prefetch import prefetched


def test_items_come_in_order_with_their_loads():
    assert list(prefetched(range(5), lambda x: x * x)) == [(i, i * i) for i in range(5)]
    assert list(prefetched([], str)) == []
    assert list(prefetched("ab", str.upper, ahead=0)) == [("a", "A"), ("b", "B")]


def test_the_next_load_runs_while_the_caller_works():
    started = {i: threading.Event() for i in range(3)}

    def load(i):
        started[i].set()
        return i

    for item, _ in prefetched(range(3), load):
        if item < 2:
            assert started[item + 1].wait(5), "the next item was not loaded ahead"


def test_a_failed_load_raises_at_its_turn_and_closing_stops_loading():
    loaded = []

    def load(i):
        loaded.append(i)
        if i == 2:
            raise OSError("unreadable slice 2")
        return i

    got = []
    with pytest.raises(OSError, match="slice 2"):
        for _item, value in prefetched(range(10), load):
            got.append(value)
    assert got == [0, 1]
    assert max(loaded) <= 3  # at most one item beyond the failing one was started
    loads = prefetched(range(100), lambda i: loaded.append(i) or i)
    next(loads)
    loads.close()
    assert len(loaded) < 10
