"""Load the native libraries of extension modules without holding Python's lock.

Importing an extension module (``torch._C``, OpenVINO's bindings, scikit-learn's
kernels) ``dlopen``s its shared library, and with it every library it links
(``libtorch_cpu.so`` alone takes 0.35-0.9 s to map, relocate and initialise). CPython
does that while holding the GIL, so when our worker thread loads PyTorch inside
napari the GUI thread cannot run for that long: napari freezes (measured in
``benchmarks/gui_stalls.py``: 0.44-0.62 s for ``import torch`` in a thread).

:func:`extensions_load_without_gil` makes the import of each extension module
``dlopen`` its file first through :mod:`ctypes` (a foreign call, which releases the
GIL), with the flags CPython will use. The import machinery's own ``dlopen`` of the
same path then finds it loaded and only runs the module's init function (which
needs the GIL and stays under it). Nothing else changes: the same file is loaded
with the same flags, by the same loader class, into the same module.

Only where ``dlopen`` exists (Linux, macOS); elsewhere it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
from collections.abc import Iterator
from importlib.abc import MetaPathFinder
from importlib.machinery import ExtensionFileLoader, ModuleSpec, PathFinder

_lock = threading.Lock()
_users = 0
_finder: _GilFreeFinder | None = None


def _load_dlopen():
    if not hasattr(sys, "getdlopenflags"):  # Windows
        return None
    try:
        dlopen = ctypes.CDLL(None).dlopen
    except (OSError, AttributeError):
        return None
    dlopen.restype = ctypes.c_void_p
    dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return dlopen


_DLOPEN = _load_dlopen()


def available() -> bool:
    """Whether extension modules can be loaded this way here."""
    return _DLOPEN is not None


class _GilFreeExtensionLoader(ExtensionFileLoader):
    """CPython's extension loader, with the library mapped beforehand outside the GIL."""

    def create_module(self, spec: ModuleSpec):  # type: ignore[override]
        # A failure here is left to CPython's own dlopen, which reports it as usual.
        _DLOPEN(os.fsencode(self.path), sys.getdlopenflags())
        return super().create_module(spec)


class _GilFreeFinder(MetaPathFinder):
    """PathFinder's answer, with extension modules given the loader above."""

    def find_spec(self, fullname, path=None, target=None):
        spec = PathFinder.find_spec(fullname, path, target)
        if spec is not None and type(spec.loader) is ExtensionFileLoader:
            spec.loader = _GilFreeExtensionLoader(spec.loader.name, spec.loader.path)
        return spec


@contextlib.contextmanager
def extensions_load_without_gil() -> Iterator[bool]:
    """While open, imported extension modules map their libraries without the GIL.

    Use it around a worker thread's first imports of heavy native packages (torch,
    OpenVINO) in a GUI process. Nested and concurrent uses share one finder, removed
    when the last one closes. Yields whether it is in effect on this platform.
    """
    global _users, _finder
    if _DLOPEN is None:
        yield False
        return
    with _lock:
        if _users == 0:
            _finder = _GilFreeFinder()
            # Right before PathFinder: finders placed ahead of it keep their precedence.
            at = next(
                (i for i, finder in enumerate(sys.meta_path) if finder is PathFinder),
                len(sys.meta_path),
            )
            sys.meta_path.insert(at, _finder)
        _users += 1
    try:
        yield True
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                with contextlib.suppress(ValueError):
                    sys.meta_path.remove(_finder)
                _finder = None
