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

import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_persam.core import metrics
from napari_persam.core.io import IMAGE_SUFFIXES, MaskImage, read_image, read_mask
from napari_persam.core.progress import Progress, ProgressGenerator

INSTANCE_MODES = ("auto", "yes", "no")


# --------------------------------------------------------------------- datasets
@dataclass(frozen=True)
class Sample:
    """One image of a dataset and its ground-truth mask file."""

    name: str
    image_path: Path
    mask_path: Path


@dataclass(frozen=True)
class Dataset:
    """A folder of paired images and masks.

    Attributes
    ----------
    root : Path
    samples : tuple of Sample
        Sorted by name.
    unpaired : tuple of str
        Image file names without a mask (skipped, reported).
    """

    root: Path
    samples: tuple[Sample, ...]
    unpaired: tuple[str, ...] = ()

    def find(self, name: str) -> Sample:
        """The sample called ``name`` (stem or file name of the image)."""
        for sample in self.samples:
            if name in (sample.name, sample.image_path.name):
                return sample
        known = ", ".join(sample.name for sample in self.samples[:10])
        more = " ..." if len(self.samples) > 10 else ""
        raise ValueError(f"No image named {name!r} in {self.root}; images are: {known}{more}")


def _files_by_stem(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            if path.stem in files:
                raise ValueError(
                    f"{folder} holds two files named {path.stem!r} ({files[path.stem].name} and "
                    f"{path.name}); keep one so images and masks pair up unambiguously."
                )
            files[path.stem] = path
    return files


def load_dataset(folder: str | os.PathLike) -> Dataset:
    """Pair ``folder/images/*`` with ``folder/masks/*`` by file stem.

    Raises
    ------
    ValueError
        If a subfolder is missing, or no image has a mask, saying what was found.
    """
    root = Path(folder)
    images_dir, masks_dir = root / "images", root / "masks"
    for sub in (images_dir, masks_dir):
        if not sub.is_dir():
            raise ValueError(
                f"{sub} is not a folder: a dataset is a folder with images/ and masks/ "
                "subfolders whose files share names (images/a.jpg with masks/a.png)."
            )
    images = _files_by_stem(images_dir)
    masks = _files_by_stem(masks_dir)
    samples = tuple(
        Sample(name=stem, image_path=path, mask_path=masks[stem])
        for stem, path in images.items()
        if stem in masks
    )
    if not samples:
        raise ValueError(
            f"No image in {images_dir} has a mask of the same name in {masks_dir} "
            f"({len(images)} images, {len(masks)} masks; suffixes {', '.join(IMAGE_SUFFIXES)})."
        )
    unpaired = tuple(path.name for stem, path in images.items() if stem not in masks)
    return Dataset(root=root, samples=samples, unpaired=unpaired)


# ---------------------------------------------------------------- instance search
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


# ----------------------------------------------------------------------- results
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


@dataclass
class ImageResult:
    """Scores of one target image (``error`` set and scores NaN when it failed)."""

    name: str
    iou: float = math.nan
    dice: float = math.nan
    boundary_iou: float = math.nan
    precision: float = math.nan
    recall: float = math.nan
    intersection: int = 0
    union: int = 0
    true_area: int = 0
    predicted_area: int = 0
    score: float = math.nan
    true_instances: int = 0
    predicted_instances: int = 0
    instance_f1: float = math.nan
    seconds: float = 0.0
    error: str | None = None


@dataclass
class EvaluationReport:
    """Everything an evaluation found; ``to_dict`` is the JSON, ``to_markdown`` the table."""

    dataset: str
    model_name: str
    references: list[str]
    finetuned: bool
    images: list[ImageResult] = field(default_factory=list)
    instance_metrics: bool = False
    ap50: float = math.nan
    ap50_95: float = math.nan
    unpaired: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def succeeded(self) -> list[ImageResult]:
        return [image for image in self.images if image.error is None]

    @property
    def failed(self) -> list[ImageResult]:
        return [image for image in self.images if image.error is not None]

    def summary(self) -> dict[str, float | int]:
        """Dataset-level scores over the targets that did not fail."""
        done = self.succeeded
        intersection = sum(image.intersection for image in done)
        union = sum(image.union for image in done)

        def mean(name: str) -> float:
            values = [getattr(image, name) for image in done]
            return float(np.mean(values)) if values else math.nan

        summary: dict[str, float | int] = {
            "targets": len(done),
            "failed": len(self.failed),
            "dataset_iou": (intersection / union if union else 1.0) if done else math.nan,
            "mean_iou": mean("iou"),
            "mean_dice": mean("dice"),
            "mean_boundary_iou": mean("boundary_iou"),
            "mean_precision": mean("precision"),
            "mean_recall": mean("recall"),
        }
        if self.instance_metrics:
            summary.update(instance_f1=mean("instance_f1"), ap50=self.ap50, ap50_95=self.ap50_95)
        return summary

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "model": self.model_name,
            "references": self.references,
            "finetuned": self.finetuned,
            "summary": _json_safe(self.summary()),
            "images": [_json_safe(dataclasses.asdict(image)) for image in self.images],
            "unpaired_images": self.unpaired,
            "config": _json_safe(self.config),
        }

    def to_markdown(self) -> str:
        """A summary table and a per-image table (failed images listed with their error)."""
        mode = "PerSAM-F" if self.finetuned else "PerSAM"
        lines = [
            f"# Evaluation of {self.dataset}",
            "",
            f"Model `{self.model_name or '?'}`, {mode}, {len(self.references)}-shot "
            f"(references: {', '.join(self.references)}).",
            "",
            "| Metric | Value |",
            "| --- | --- |",
        ]
        lines += [f"| {key} | {_fmt(value)} |" for key, value in self.summary().items()]
        columns = ["iou", "dice", "boundary_iou", "precision", "recall", "score"]
        if self.instance_metrics:
            columns += ["true_instances", "predicted_instances", "instance_f1"]
        lines += ["", "| Image | " + " | ".join(columns) + " |"]
        lines.append("| --- " * (len(columns) + 1) + "|")
        for image in self.images:
            if image.error is not None:
                lines.append(f"| {image.name} | failed: {image.error} |")
                continue
            cells = " | ".join(_fmt(getattr(image, column)) for column in columns)
            lines.append(f"| {image.name} | {cells} |")
        if self.unpaired:
            lines += ["", f"Images without a mask (skipped): {', '.join(self.unpaired)}."]
        return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _json_safe(value: Any) -> Any:
    """NaN becomes None (JSON has no NaN); tuples become lists; numpy scalars plain."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


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
        raise ValueError(
            f"All {len(dataset.samples)} image(s) of {dataset.root} are references; "
            "a dataset needs at least one more image to segment."
        )
    total = len(targets) + 1
    yield Progress(0, total, f"learning from {len(references)} reference(s)")
    pairs = []
    for sample in references:
        try:
            image = read_image(sample.image_path)
            mask = read_mask(sample.mask_path, threshold=options.mask_threshold)
        except ValueError as error:
            raise ValueError(f"Reference {sample.name}: {error}") from error
        if not mask.foreground.any():
            raise ValueError(
                f"The mask of reference {sample.name} is empty; choose a reference that "
                "shows the object (--reference NAME)."
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
        config=dataclasses.asdict(engine.config) if hasattr(engine, "config") else {},
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
                ImageResult(name=sample.name, error=str(error)),
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
    truth = read_mask(sample.mask_path, threshold=options.mask_threshold)
    if truth.labels.shape != image.shape[:2]:
        raise ValueError(
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
    comparison = None
    if options.instances != "no":
        found = instance_predictor(engine, image, concept, segmentation)
        comparison = metrics.compare_instances(found.labels, truth.labels, scores=found.scores)
        result.true_instances = comparison.n_true
        result.predicted_instances = comparison.n_predicted
        result.instance_f1 = metrics.matched_f1(comparison.iou, threshold=0.5)
    return result, comparison, truth.is_instances
