"""The work of one Run, as a progress generator for a napari thread worker.

Nothing here touches napari or Qt: the widget builds a :class:`Job` on the main
thread (copying what the user painted), the worker drains :func:`run_job`, and
every finished image comes back as ``Progress(index=i, result=SliceResult)`` (plain
arrays, converted in the worker) so the widget can show it at once and keep it if
the run is cancelled.

torch and segment_anything are imported inside the generator, so opening napari
or listing the plugin never loads them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_persam._widgets._models import LoadedModels, ModelChoice
from napari_persam._widgets._spelling import widget_message
from napari_persam.core.config import PerSAMConfig
from napari_persam.core.engine.results import (
    Instances,
    Result,
    best_similarity,
    label_image,
    object_count,
)
from napari_persam.core.progress import Progress

if TYPE_CHECKING:  # pragma: no cover
    from napari_persam.core.io.concept_file import ConceptFile


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
        Also holds the stack mode (``config.stack_mode``) and the every-instance
        options.
    finetune : bool
        Fit PerSAM-F's mask weights to the references before segmenting.
    shots : tuple of (image, labels)
        The references (copies, so later edits do not change the run): each an
        image (Y, X) or (Y, X, C) and an int32 (Y, X) label image whose nonzero
        pixels hold the class values of ``values``. Several shots make one concept
        per value from all of them (few-shot).
    values : tuple of int
        The label values to learn; one value is one concept, several are classes.
    targets : tuple of Target
        The images to segment, in order; ``Progress.index`` refers to this tuple.
    instances : bool
        Every instance (an id per object) instead of one object per value.
    reference_index : int or None
        The stack slice propagation starts from (the main reference slice, or the
        slice shown when a concept file is used); ``None`` for 2D images. Other
        stacks start from the same index, or their last slice if they are shorter.
    concept_file : ConceptFile or None
        Segment with these concepts instead of learning from ``shots`` (then
        empty); ``values`` are the file's label values.
    concept_path : str or None
        A concept file to read *in the worker* and segment with (the widget's way:
        nothing is read on napari's main thread); ``values`` are then empty until
        the worker hands the concept back in a ``ConceptReady`` step.
    concept_source : str
        How to name the concept file in messages (its path).
    cache_on_disk : bool
        Also keep embeddings in the default disk cache folder
        (:func:`napari_persam.core.paths.embeddings_dir`, the command line's
        default), so they are shared with it and with later sessions.
    negatives : tuple of (Y, X) bool or None
        For each of ``shots``: the regions marked "not this" (a negatives layer, or
        objects deleted from a result), or None; empty when there are none at all.
    """

    model: ModelChoice
    config: PerSAMConfig
    finetune: bool
    shots: tuple[tuple[np.ndarray, np.ndarray], ...]
    values: tuple[int, ...]
    targets: tuple[Target, ...]
    instances: bool = False
    reference_index: int | None = None
    concept_file: ConceptFile | None = None
    concept_path: str | None = None
    concept_source: str = ""
    cache_on_disk: bool = False
    negatives: tuple[np.ndarray | None, ...] = ()


@dataclass(frozen=True)
class SliceResult:
    """One image's result, as plain arrays for the output layers.

    Attributes
    ----------
    labels : (Y, X) int32
        0 background; the learned label value(s) in one-object mode, object ids
        (1..N, kept through a propagated stack) in every-instance mode.
    similarity : (Y, X) float32
        Cosine similarity to the concept (the maximum over classes).
    classes : (Y, X) int32 or None
        Every-instance mode with several values: each object's label value.
    objects : int
        Objects found (0: nothing found).
    """

    labels: np.ndarray
    similarity: np.ndarray
    classes: np.ndarray | None
    objects: int


def slice_result(result: Result, *, values: Sequence[int]) -> SliceResult:
    """A core result as a SliceResult; a one-concept Segmentation is painted with ``values[0]``."""
    classes = None
    if isinstance(result, Instances) and len(values) > 1:
        classes = result.class_map().astype(np.int32)
    return SliceResult(
        labels=label_image(result, value=int(values[0])),
        similarity=best_similarity(result),
        classes=classes,
        objects=object_count(result),
    )


_CONCEPT_ADVICE = (
    "In the widget: choose that model in 'model', or clear 'concept file' to learn from the "
    "reference layer."
)


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
    """Load the model, learn the references (or use the concept file), segment every target.

    Raises
    ------
    ValueError
        If ``job.concept_file`` was learned with another model (the message names both).

    Yields
    ------
    Progress
        ``result=None`` while loading (with bytes as ``done``/``total`` while a
        checkpoint downloads or is verified), learning and fine-tuning
        (``message`` says which); a :class:`~._concepts.ConceptReady` step
        carrying the concept used (learned, or read from ``job.concept_file``);
        then one step per target, in the order the
        results are computed (a propagated stack goes outward from the reference
        slice), with ``index`` into ``job.targets`` and ``result`` its
        :class:`SliceResult`.

    Returns
    -------
    int
        How many targets were segmented.
    """
    from napari_persam._widgets._concepts import read_concept, with_prompt_settings

    total = len(job.targets)
    content, values = job.concept_file, job.values
    if content is None and job.concept_path is not None:
        yield Progress(0, total, "reading the concept file")
        content = read_concept(job.concept_path)
        values = tuple(content.label_values)
    if content is not None:
        try:  # before any model is loaded (or downloaded)
            content.check_model_name(job.model.name, source=f"Concept file {job.concept_source}")
        except ValueError as error:
            raise ValueError(f"{widget_message(error)} {_CONCEPT_ADVICE}") from error
        # The concept is prompted as it was learned; the widget shows the settings used.
        job = dataclasses.replace(job, config=with_prompt_settings(job.config, content.config))
    yield Progress(0, total, "loading PyTorch and segment-anything")
    # Before the model: building SAM imports segment_anything (and torchvision), which
    # in napari's process must not load triton (see core.models.llvm_clash).
    from napari_persam.core.models.gil_free_loading import extensions_load_without_gil
    from napari_persam.core.models.llvm_clash import keep_triton_out_beside_system_llvm

    keep_triton_out_beside_system_llvm()
    # The native libraries loaded from here on (torch, OpenVINO, scikit-learn) are
    # mapped without Python's lock, so napari's window keeps repainting meanwhile.
    with extensions_load_without_gil():
        return (yield from _load_and_segment(job, models, content, values, total))


def _load_and_segment(
    job: Job, models: LoadedModels, content: ConceptFile | None, values: tuple, total: int
) -> Generator[Progress, None, int]:
    from napari_persam._widgets._concepts import ConceptReady, learned_concept
    from napari_persam.core.engine.concepts import combine_concepts
    from napari_persam.core.engine.persam import PerSAM  # noqa: F401  (torch loads here)

    if models.devices is None:
        from napari_persam.core.devices import available_devices

        # Listed here, off the GUI thread (the first CUDA query starts the driver); the
        # widget's device list is updated from it when the Run ends.
        models.devices = available_devices()
    from napari_persam.core.engine_builder import EngineSpec

    spec = EngineSpec(
        model=job.model.name,
        checkpoint=None if job.model.checkpoint is None else str(job.model.checkpoint),
        device=job.model.device,
        config=job.config,
        disk_cache=job.cache_on_disk,
    )
    yield Progress(0, total, f"loading model {job.model.name}")
    model = yield from models.load(spec, job.model)
    # An unusable disk cache folder is a warning (shown by napari), not a failure.
    engine = model.engine(spec)
    if content is not None:
        try:
            content.check_model(
                model_name=job.model.name,
                model_fingerprint=engine.fingerprint,
                checkpoint_sha256=model.checkpoint_sha256,
                source=f"Concept file {job.concept_source}",
            )
        except ValueError as error:
            raise ValueError(f"{widget_message(error)} {_CONCEPT_ADVICE}") from error
        concept = combine_concepts(content.concepts)
    else:
        classes = f"{len(job.values)} label values" if len(job.values) > 1 else "the object"
        yield Progress(0, total, f"learning {classes} from {len(job.shots)} reference(s)")
        concept = learn(engine, job)
        if job.finetune:
            yield Progress(0, total, "fine-tuning (PerSAM-F)")
            concept = finetune(engine, concept)
    # Handed to the main thread as a step's result, so the widget can export it.
    used = learned_concept(
        concept,
        values=values,
        model_name=job.model.name,
        checkpoint_sha256=model.checkpoint_sha256,
        config=job.config,
    )
    timings = sorted(engine.encoding_seconds)
    yield ConceptReady(
        0,
        total,
        "concept ready",
        concept=used,
        seconds_per_encoding=timings[len(timings) // 2] if timings else None,
    )
    done = 0
    for source, indices in _groups(job.targets):
        for index, result in _segment_group(engine, concept, job, source, indices):
            if index is None:  # a tile of a large image: the bar counts tiles meanwhile
                yield Progress(result.done, result.total, f"image {done + 1}: {result.message}")
                continue
            done += 1
            yield Progress(
                done,
                total,
                f"segmented {done} of {total}",
                index=index,
                result=slice_result(result, values=values),
            )
    return done


def learn(engine: Any, job: Job) -> Any:
    """The job's concept: a Concept for one value, ClassConcepts for several."""
    negatives = list(job.negatives) or [None] * len(job.shots)
    if len(job.values) == 1:
        value = job.values[0]
        kept = [
            ((image, labels == value), marked)
            for (image, labels), marked in zip(job.shots, negatives)
            if (labels == value).any()
        ]
        return engine.learn([pair for pair, _ in kept], negatives=[marked for _, marked in kept])
    return engine.learn_classes(list(job.shots), values=list(job.values), negatives=negatives)


def finetune(engine: Any, concept: Any) -> Any:
    """PerSAM-F on a Concept, or on each class of a ClassConcepts."""
    if hasattr(concept, "concepts"):
        return type(concept)({v: engine.finetune(c) for v, c in concept.concepts.items()})
    return engine.finetune(concept)


def _groups(targets: Sequence[Target]) -> list[tuple[Any, list[int]]]:
    """Targets grouped by source layer (stacks) or one by one (2D images), in order."""
    groups: list[tuple[Any, list[int]]] = []
    by_stack: dict[tuple[int, str], list[int]] = {}
    for index, target in enumerate(targets):
        if target.slice_index is None:
            groups.append((target.source, [index]))
            continue
        key = (id(target.source), target.output)
        if key not in by_stack:
            by_stack[key] = []
            groups.append((target.source, by_stack[key]))
        by_stack[key].append(index)
    return groups


def _segment_group(
    engine: Any, concept: Any, job: Job, source: Any, indices: list[int]
) -> Iterator[tuple[int, Any]]:
    """(index into job.targets, core result) for each target of one group.

    A 2D image's tiles come first as (None, Progress) pairs, so the bar moves while a
    large image is segmented.
    """
    first = job.targets[indices[0]]
    if first.slice_index is None:
        image = first.read()
        if job.instances:
            work = engine.iter_segment_instances(image, concept)
        else:
            work = engine.iter_segment(image, concept)
        while True:
            try:
                step = next(work)
            except StopIteration as stop:
                yield indices[0], stop.value
                return
            if step.total > 1:
                yield None, step
    by_slice = {job.targets[i].slice_index: i for i in indices}
    start = min(job.reference_index or 0, len(source) - 1)
    stack = engine.segment_stack(
        source,
        concept,
        reference_index=start,
        slices=list(by_slice),
        instances=job.instances,
        keep_results=False,  # each slice goes to its layer as it comes
    )
    for step in stack:
        yield by_slice[step.index], step.result


def slice_targets(source: Any, *, output: str, slices: Sequence[int] | None) -> tuple[Target, ...]:
    """Targets for some slices of one layer (``slices=None``: the layer is 2D)."""
    if slices is None:
        return (Target(source, None, output),)
    return tuple(Target(source, int(z), output) for z in slices)
