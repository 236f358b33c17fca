"""The model a widget has loaded, kept across Runs; loading goes through the core's builder.

:func:`napari_persam.core.engine_builder.iter_load` loads the model and hashes its
checkpoint; this module only decides what the widget keeps: the latest model
(ViT-H alone takes 2.5 GB, and a user trying models one after the other should not
run out of memory), with its embedding caches, so a rerun with other options does
not encode the same images again. Nothing here imports torch at import time.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from napari_persam.core.progress import Progress

if TYPE_CHECKING:  # pragma: no cover
    from napari_persam.core.engine_builder import EngineSpec, LoadedModel, ModelFactory


@dataclass(frozen=True)
class ModelChoice:
    """Which model to run, where.

    Attributes
    ----------
    name : str
        Registry key (``"vit_b"``, ..., ``"tiny"``).
    checkpoint : Path or None
        Weights file; ``None`` for the published weights (or none, for ``"tiny"``).
    device : str
        ``"auto"`` or a torch device name (``"cpu"``, ``"cuda:0"``, ``"mps"``).
    """

    name: str
    checkpoint: Path | None
    device: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.name, os.fspath(self.checkpoint or ""), self.device)


class LoadedModels:
    """The model loaded by one widget, kept while the widget lives.

    Parameters
    ----------
    factory : callable, optional
        ``factory(name, *, checkpoint, device)`` returning a generator that yields
        :class:`Progress` and returns a ``Sam``. ``None`` uses the registry's loader
        (:func:`napari_persam.core.models.iter_load_model`). This is the hook for
        tests and for users with their own SAM variant.
    """

    def __init__(self, factory: ModelFactory | None = None) -> None:
        self.factory = factory
        self._loaded: dict[tuple[str, str, str], LoadedModel] = {}
        #: The devices torch can use, once a Run's worker has listed them.
        self.devices: list[str] | None = None

    def __len__(self) -> int:
        return len(self._loaded)

    @property
    def current(self) -> LoadedModel | None:
        """The model loaded last, or ``None`` before the first Run."""
        return next(iter(self._loaded.values()), None)

    def load(self, spec: EngineSpec, choice: ModelChoice) -> Generator[Progress, None, LoadedModel]:
        """The model of ``choice`` with its caches, loading it if needed."""
        if choice.key not in self._loaded:
            from napari_persam.core.engine_builder import iter_load

            self._loaded.clear()  # free the previous model before building the next
            loaded = yield from _with_sizes(iter_load(spec, factory=self.factory))
            self._loaded[choice.key] = loaded
        return self._loaded[choice.key]


def _with_sizes(
    loading: Generator[Progress, None, LoadedModel],
) -> Generator[Progress, None, LoadedModel]:
    """The loader's steps, with megabytes in the message of byte-counting ones.

    A step with ``total`` above 1 counts bytes (a download or a hash);
    ``done``/``total`` stay bytes, for the progress bar.
    """
    try:
        while True:
            try:
                step = next(loading)
            except StopIteration as stop:
                return stop.value
            if step.total > 1:
                sizes = f"{step.done / 1e6:,.1f} of {step.total / 1e6:,.1f} MB"
                step = Progress(step.done, step.total, f"{step.message} ({sizes})")
            yield step
    finally:
        loading.close()  # Cancel during a download stops it and removes the partial file
