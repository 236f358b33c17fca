"""Extension modules map their libraries without Python's lock, and load as before."""

from __future__ import annotations

import ctypes
import importlib.util
import itertools
import subprocess
import sys
import textwrap
import threading
import time
from importlib.machinery import ExtensionFileLoader

import pytest

from napari_persam.core.models import gil_free_loading
from napari_persam.core.models.gil_free_loading import extensions_load_without_gil

pytestmark = pytest.mark.skipif(
    not gil_free_loading.available(), reason="no dlopen on this platform"
)


_CANDIDATES = ("_sqlite3", "_curses", "_dbm", "_lzma", "_bz2", "_decimal", "_tkinter")


def _unimported_extension() -> str:
    """A standard-library extension module that is a shared library here."""
    for name in _CANDIDATES:
        spec = importlib.util.find_spec(name)
        if spec is not None and type(spec.loader) is ExtensionFileLoader:
            return name
    pytest.skip("no standard-library extension module is a shared library here")


def test_an_extension_module_loads_through_it_and_works() -> None:
    script = textwrap.dedent(
        f"""
        import importlib.util, sys
        from importlib.machinery import ExtensionFileLoader
        from napari_persam.core.models import gil_free_loading as g
        names = [n for n in {_CANDIDATES!r} if n not in sys.modules]
        names = [n for n in names if type(getattr(importlib.util.find_spec(n), "loader", None))
                 is ExtensionFileLoader]
        if not names:
            print("none")
            raise SystemExit(0)
        with g.extensions_load_without_gil() as active:
            module = importlib.import_module(names[0])
            assert active and any(isinstance(f, g._GilFreeFinder) for f in sys.meta_path)
        assert type(module.__loader__) is g._GilFreeExtensionLoader, module.__loader__
        assert not any(isinstance(f, g._GilFreeFinder) for f in sys.meta_path)
        print(module.__name__ == names[0], len(dir(module)) > 3)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    if done.stdout.strip() == "none":
        pytest.skip("every standard-library extension module is imported already")
    assert done.stdout.split() == ["True", "True"]


def test_the_library_is_mapped_first_with_cpythons_flags(monkeypatch) -> None:
    calls = []
    real = gil_free_loading._DLOPEN

    def spy(path: bytes, flags: int) -> int:
        calls.append((path, flags))
        return real(path, flags)

    monkeypatch.setattr(gil_free_loading, "_DLOPEN", spy)
    name = _unimported_extension()
    spec = importlib.util.find_spec(name)
    with extensions_load_without_gil():
        found = gil_free_loading._GilFreeFinder().find_spec(name)
    assert isinstance(found.loader, gil_free_loading._GilFreeExtensionLoader)
    assert found.origin == spec.origin
    module = importlib.util.module_from_spec(found)  # runs create_module, not the import
    assert calls == [(spec.origin.encode(), sys.getdlopenflags())]
    assert module.__name__ == name


def test_other_threads_run_while_a_library_is_mapped(monkeypatch) -> None:
    # A "dlopen" that takes 0.6 s as a foreign call, as libtorch_cpu's mapping does: the
    # ticking thread must keep ticking (it could not if the GIL were held throughout).
    libc = ctypes.CDLL(None)
    real = gil_free_loading._DLOPEN

    def slow_dlopen(path: bytes, flags: int) -> int:
        libc.usleep(600_000)
        return real(path, flags)

    monkeypatch.setattr(gil_free_loading, "_DLOPEN", slow_dlopen)
    name = _unimported_extension()
    spec = gil_free_loading._GilFreeFinder().find_spec(name)
    loaded = threading.Event()

    def load() -> None:
        spec.loader.create_module(spec)
        loaded.set()

    ticks = []
    worker = threading.Thread(target=load)
    worker.start()
    started = time.perf_counter()
    while not loaded.is_set() and time.perf_counter() - started < 5:
        time.sleep(0.005)
        ticks.append(time.perf_counter())
    worker.join()
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert len(ticks) > 20
    assert max(gaps) < 0.3


def test_nested_uses_share_one_finder_removed_by_the_last() -> None:
    def finders() -> int:
        return sum(isinstance(f, gil_free_loading._GilFreeFinder) for f in sys.meta_path)

    before = list(sys.meta_path)
    with extensions_load_without_gil():
        with extensions_load_without_gil():
            assert finders() == 1
        assert finders() == 1
    assert finders() == 0
    assert sys.meta_path == before
