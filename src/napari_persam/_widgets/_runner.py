"""The work of one Run, as a progress generator for a napari thread worker.

Nothing here touches napari or Qt: the widget builds a :class:`Job` on the main
thread (copying what the user painted), the worker drains :func:`run_job`, and
every finished image comes back as ``Progress(index=i, result=segmentation)`` so
the widget can show it at once and keep it if the run is cancelled.

torch and segment_anything are imported inside the generator, so opening napari
or listing the plugin never loads them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_persam.core.config import PerSAMConfig
from napari_persam.core.progress import Progress

if TYPE_CHECKING:  # pragma: no cover
    from segment_anything.modeling import Sam

    from napari_persam.core.embeddings import EmbeddingCache

#: ``factory(name, *, checkpoint, device)`` -> generator yielding Progress and
#: returning a ``Sam``; :func:`napari_persam.core.models.iter_load_model` is the default.
ModelFactory = Callable[..., Generator[Progress, None, "Sam"]]


@dataclass(frozen=True)
class ModelChoice:
    """Which model to run, where.

    Attributes
    ----------
    name : str
        Registry key (``"vit_b"``, ..., ``"tiny"``).
    checkpoint : Path or None
        Weights file; ``None`` for models that need none.
    device : str
        ``"auto"`` or a torch device name (``"cpu"``, ``"cuda:0"``, ``"mps"``).
    """

    name: str
    checkpoint: Path | None
    device: str


@dataclass(frozen=True)
class Target:
    """One 2D image to segment.

    Attributes
    ----------
    source : array-like
        The image layer's data, (Y, X), (Y, X, C), (Z, Y, X) or (Z, Y, X, C); read
        in the worker, one slice at a time (dask and zarr arrays stay lazy).
    slice_index : int or None
        Which slice of a stack; ``None`` for a 2D image.
    output : str
        Name of the image layer whose output layers receive the result.
    """

    source: Any
    slice_index: int | None
    output: str

    def read(self) -> np.ndarray:
        """This target's pixels: (Y, X) or (Y, X, C), as a numpy array."""
        if self.slice_index is None:
            return np.asarray(self.source)
        return np.asarray(self.source[self.slice_index])


@dataclass(frozen=True)
class Job:
    """Everything one Run needs, fixed when Run is pressed.

    Attributes
    ----------
    model : ModelChoice
    config : PerSAMConfig
    finetune : bool
        Fit PerSAM-F's mask weights to the reference before segmenting.
    reference_image : (Y, X) or (Y, X, C) array
        The reference image or slice (a copy, so later edits do not change the run).
    reference_mask : (Y, X) bool
        The painted object on it.
    targets : tuple of Target
        The images to segment, in order; ``Progress.index`` refers to this tuple.
    """

    model: ModelChoice
    config: PerSAMConfig
    finetune: bool
    reference_image: np.ndarray
    reference_mask: np.ndarray
    targets: tuple[Target, ...]


class LoadedModels:
    """The model loaded by one widget, kept while the widget lives.

    A model is loaded once per (name, checkpoint, device), so switching images or
    options does not reload it, and it keeps an embedding cache, so a rerun with
    other options does not encode the same images again. Only the latest model is
    kept: ViT-H alone takes 2.5 GB, and a user trying models one after the other
    should not run out of (GPU) memory.

    Parameters
    ----------
    factory : callable, optional
        ``factory(name, *, checkpoint, device)`` returning a generator that yields
        :class:`Progress` and returns a ``Sam``. ``None`` uses
        :func:`napari_persam.core.models.iter_load_model`. This is the hook for tests
        and for users with their own SAM variant.
    """

    def __init__(self, factory: ModelFactory | None = None) -> None:
        self.factory = factory
        self._loaded: dict[tuple[str, str, str], tuple[Sam, EmbeddingCache]] = {}

    def __len__(self) -> int:
        return len(self._loaded)

    def load(
        self, choice: ModelChoice, *, cache_size: int
    ) -> Generator[Progress, None, tuple[Sam, EmbeddingCache]]:
        """The model of ``choice`` and its embedding cache, loading it if needed."""
        key = (choice.name, os.fspath(choice.checkpoint or ""), choice.device)
        if key not in self._loaded:
            from napari_persam.core.embeddings import EmbeddingCache
            from napari_persam.core.models import iter_load_model

            factory = self.factory if self.factory is not None else iter_load_model
            device = None if choice.device == "auto" else choice.device
            self._loaded.clear()  # free the previous model before building the next
            sam = yield from factory(choice.name, checkpoint=choice.checkpoint, device=device)
            self._loaded[key] = (sam, EmbeddingCache(cache_size))
        return self._loaded[key]


class RunError(Exception):
    """A failure inside :func:`run_job`, carrying the original error as its cause."""


def run_job(job: Job, *, models: LoadedModels) -> Generator[Progress, None, int]:
    """Load the model, learn the reference, segment every target.

    Same as :func:`run_job_steps`, except that a ``RuntimeError`` (torch's errors,
    CUDA out of memory among them) is re-raised as :class:`RunError`: napari's
    generator worker takes a ``RuntimeError`` for "worker deleted" and would drop
    it silently instead of reporting it.
    """
    try:
        return (yield from run_job_steps(job, models=models))
    except RuntimeError as error:
        raise RunError(str(error) or type(error).__name__) from error


def run_job_steps(job: Job, *, models: LoadedModels) -> Generator[Progress, None, int]:
    """Load the model, learn the reference, segment every target.

    Yields
    ------
    Progress
        ``result=None`` while loading, learning and fine-tuning (``message`` says
        which); then one step per target with ``index`` into ``job.targets`` and
        ``result`` its :class:`~napari_persam.core.concept.Segmentation`.

    Returns
    -------
    int
        How many targets were segmented.
    """
    from napari_persam._widgets._imports import import_engine

    total = len(job.targets)
    yield Progress(0, total, "loading PyTorch and segment-anything")
    PerSAM = import_engine()  # before the model: building SAM imports segment_anything
    yield Progress(0, total, f"loading model {job.model.name}")
    sam, cache = yield from models.load(job.model, cache_size=job.config.cache_size)
    device = None if job.model.device == "auto" else job.model.device
    engine = PerSAM(sam, config=job.config, device=device, cache=cache, model_name=job.model.name)
    yield Progress(0, total, "learning the reference")
    concept = engine.learn(job.reference_image, job.reference_mask)
    if job.finetune:
        yield Progress(0, total, "fine-tuning (PerSAM-F)")
        concept = engine.finetune(concept)
    images = (target.read() for target in job.targets)
    segmented = 0
    for step in engine.segment_many(images, concept, total=total):
        segmented = step.done
        yield step
    return segmented


def slice_targets(source: Any, *, output: str, slices: Sequence[int] | None) -> tuple[Target, ...]:
    """Targets for some slices of one layer (``slices=None``: the layer is 2D)."""
    if slices is None:
        return (Target(source, None, output),)
    return tuple(Target(source, int(z), output) for z in slices)
