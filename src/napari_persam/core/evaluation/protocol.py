"""Evaluating a concept on a dataset with the one-shot protocol of the PerSAM paper.

A dataset is a folder with ``images/`` and ``masks/``; an image and its mask share
a file stem (``images/cat_00.jpg`` and ``masks/cat_00.png``). The first image in
name order, or the ones named, are the references: the concept is learned from
them (k-shot when there are several) and every other image is a target. Reported:

* per-dataset IoU = summed intersection / summed union over all targets (what the
  PerSAM paper reports per concept), and the mean of per-image IoUs;
* mean Dice, boundary IoU, pixel precision and recall;
* when the masks hold instance labels: matched-IoU F1 at 0.5 and COCO-style AP at
  0.5 and 0.5:0.95, predictions of all targets ranked together.

Empty masks follow :mod:`napari_persam.core.metrics`: an empty prediction of an
empty ground truth scores 1.0.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_persam.core.config import config_to_dict
from napari_persam.core.errors import InputError, render_error
from napari_persam.core.evaluation import metrics
from napari_persam.core.evaluation.dataset import Dataset, Sample
from napari_persam.core.evaluation.report import EvaluationReport, ImageResult
from napari_persam.core.io.images import MaskImage, read_image, read_mask
from napari_persam.core.progress import Progress, ProgressGenerator

INSTANCE_MODES = ("auto", "yes", "no")


@dataclass(frozen=True)
class PredictedInstances:
    """Instances found in one image.

    Attributes
    ----------
    labels : (H, W) int32
        0 is background, each other id one instance.
    scores : (P,) float64
        Confidence per instance id in ascending id order.
    """

    labels: np.ndarray
    scores: np.ndarray


#: ``predictor(engine, image, concept, segmentation) -> PredictedInstances``
InstancePredictor = Callable[[Any, np.ndarray, Any, Any], PredictedInstances]


def predict_instances(
    engine: Any, image: np.ndarray, concept: Any, segmentation: Any
) -> PredictedInstances:
    """The instances of ``concept`` in ``image``, for instance AP.

    Uses ``engine.segment_instances(image, concept)`` when the engine has it (its
    result's ``.labels`` (H, W) int, and ``.scores`` per id when present, else
    instance areas). Otherwise the connected components of the semantic
    ``segmentation.mask`` are the instances, each scored by its mean similarity to
    the concept, so AP measures how well one-object PerSAM separates objects.
    """
    if hasattr(engine, "segment_instances"):
        result = engine.segment_instances(image, concept)
        labels = np.asarray(result.labels).astype(np.int32, copy=False)
        ids = np.unique(labels[labels != 0])
        scores = getattr(result, "scores", None)
        if scores is None or len(scores) != ids.size:
            scores = np.bincount(labels.ravel())[ids] if ids.size else np.zeros(0)
        return PredictedInstances(labels=labels, scores=np.asarray(scores, dtype=np.float64))
    labels = metrics.connected_instances(segmentation.mask)
    count = int(labels.max())
    if count == 0:
        return PredictedInstances(labels=labels, scores=np.zeros(0))
    from scipy import ndimage

    similarity = np.asarray(segmentation.similarity, dtype=np.float64)
    scores = ndimage.mean(similarity, labels=labels, index=np.arange(1, count + 1))
    return PredictedInstances(labels=labels, scores=np.asarray(scores, dtype=np.float64))


# ----------------------------------------------------------------------- options
@dataclass(frozen=True)
class EvaluationOptions:
    """How a dataset is evaluated.

    Parameters
    ----------
    references : tuple of str
        Names of the reference images (k-shot when several). Empty: the first
        image in name order.
    finetune : bool
        PerSAM-F: fit the mask weights after learning.
    instances : {"auto", "yes", "no"}
        Instance metrics: "auto" reports them when some ground-truth mask holds
        more than one instance id.
    mask_threshold : float, optional
        Binarise every mask above this value (JPEG masks use 127 by default).
    dilation_ratio : float
        Boundary IoU band width as a fraction of the image diagonal.
    """

    references: tuple[str, ...] = ()
    finetune: bool = False
    instances: str = "auto"
    mask_threshold: float | None = None
    dilation_ratio: float = metrics.DEFAULT_DILATION_RATIO

    def __post_init__(self) -> None:
        if self.instances not in INSTANCE_MODES:
            raise ValueError(f"instances must be one of {INSTANCE_MODES}, got {self.instances!r}.")
        # Duplicates removed, order kept: naming a reference twice is not 2-shot.
        object.__setattr__(self, "references", tuple(dict.fromkeys(self.references)))


# --------------------------------------------------------------------- protocol
def score_image(
    name: str,
    *,
    predicted: np.ndarray,
    truth: MaskImage,
    dilation_ratio: float = metrics.DEFAULT_DILATION_RATIO,
) -> ImageResult:
    """Pixel and boundary scores of one (H, W) predicted mask against its ground truth."""
    counts = metrics.pixel_counts(predicted, truth.foreground)
    return ImageResult(
        name=name,
        iou=counts.iou,
        dice=counts.dice,
        boundary_iou=metrics.boundary_iou(
            predicted, truth.foreground, dilation_ratio=dilation_ratio
        ),
        precision=counts.precision,
        recall=counts.recall,
        intersection=counts.intersection,
        union=counts.union,
        true_area=counts.tp + counts.fn,
        predicted_area=counts.tp + counts.fp,
    )


def evaluate_dataset(
    engine: Any,
    dataset: Dataset,
    *,
    options: EvaluationOptions | None = None,
    instance_predictor: InstancePredictor = predict_instances,
) -> ProgressGenerator[EvaluationReport]:
    """Learn from the reference(s) and score every other image (a progress generator).

    Parameters
    ----------
    engine : PerSAM
        With ``learn``, ``finetune`` and ``segment``.
    dataset : Dataset
        From :func:`load_dataset`.
    options : EvaluationOptions, optional
    instance_predictor : callable
        How instances are found; :func:`predict_instances` by default.

    Yields
    ------
    Progress
        One per target, ``result`` its :class:`ImageResult` (also for failures).

    Returns
    -------
    EvaluationReport
        A target that cannot be read or segmented is recorded with its error and
        the others go on; stop iterating to cancel.

    Raises
    ------
    ValueError
        If a reference is unknown or unreadable, or every image is a reference.
    """
    options = options if options is not None else EvaluationOptions()
    names = options.references or (dataset.samples[0].name,)
    references = [dataset.find(name) for name in names]
    reference_names = {sample.name for sample in references}
    targets = [sample for sample in dataset.samples if sample.name not in reference_names]
    if not targets:
        raise InputError(
            f"All {len(dataset.samples)} image(s) of {dataset.root} are references; "
            "a dataset needs at least one more image to segment."
        )
    total = len(targets) + 1
    yield Progress(0, total, f"learning from {len(references)} reference(s)")
    pairs = []
    for sample in references:
        try:
            image = read_image(sample.image_path)
            mask = _read_truth(sample, options)
        except ValueError as error:
            raise InputError(f"Reference {sample.name}: {render_error(error)}") from error
        if not mask.foreground.any():
            raise InputError(
                f"The mask of reference {sample.name} is empty; choose a reference that "
                "shows the object."
            )
        pairs.append((image, mask.foreground))
    concept = engine.learn(pairs)
    if options.finetune:
        concept = engine.finetune(concept)
    del pairs

    report = EvaluationReport(
        dataset=str(dataset.root),
        model_name=getattr(engine, "model_name", ""),
        references=[sample.name for sample in references],
        finetuned=options.finetune,
        unpaired=list(dataset.unpaired),
        config=config_to_dict(engine.config) if hasattr(engine, "config") else {},
    )
    comparisons: list[metrics.InstanceImage] = []
    saw_instances = False
    for index, sample in enumerate(targets):
        start = time.perf_counter()
        try:
            result, comparison, truth_is_instances = _evaluate_target(
                engine, concept, sample, options=options, instance_predictor=instance_predictor
            )
        except (ValueError, RuntimeError) as error:
            result, comparison, truth_is_instances = (
                ImageResult(name=sample.name, error=render_error(error)),
                None,
                False,
            )
        result.seconds = time.perf_counter() - start
        saw_instances = saw_instances or truth_is_instances
        if comparison is not None:
            comparisons.append(comparison)
        report.images.append(result)
        yield Progress(index + 2, total, f"evaluated {sample.name}", index=index, result=result)
    report.instance_metrics = options.instances == "yes" or (
        options.instances == "auto" and saw_instances
    )
    if report.instance_metrics and comparisons:
        report.ap50 = metrics.average_precision(comparisons, threshold=0.5)
        report.ap50_95 = metrics.average_precision_range(comparisons)
    return report


def _evaluate_target(
    engine: Any,
    concept: Any,
    sample: Sample,
    *,
    options: EvaluationOptions,
    instance_predictor: InstancePredictor,
) -> tuple[ImageResult, metrics.InstanceImage | None, bool]:
    image = read_image(sample.image_path)
    truth = _read_truth(sample, options)
    if truth.labels.shape != image.shape[:2]:
        raise InputError(
            f"mask {sample.mask_path.name} is {truth.labels.shape} but image "
            f"{sample.image_path.name} is {image.shape[:2]}"
        )
    segmentation = engine.segment(image, concept)
    result = score_image(
        sample.name,
        predicted=segmentation.mask,
        truth=truth,
        dilation_ratio=options.dilation_ratio,
    )
    result.score = float(segmentation.score)
    result.mask_reading = truth.summary()
    result.mask_note = truth.note
    comparison = None
    if options.instances != "no":
        found = instance_predictor(engine, image, concept, segmentation)
        comparison = metrics.compare_instances(found.labels, truth.labels, scores=found.scores)
        result.true_instances = comparison.n_true
        result.predicted_instances = comparison.n_predicted
        result.instance_f1 = metrics.matched_f1(comparison.iou, threshold=0.5)
    return result, comparison, truth.is_instances


def _read_truth(sample: Sample, options: EvaluationOptions) -> MaskImage:
    """A ground-truth mask; ``instances="yes"`` reads every mask as labels."""
    labels = True if options.instances == "yes" else None
    return read_mask(sample.mask_path, threshold=options.mask_threshold, labels=labels)
