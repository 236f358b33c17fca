"""What an evaluation found: per-image scores, the summary, JSON and Markdown."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_persam.core.errors import InputError, option


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
    mask_reading: str = ""
    mask_note: str = ""
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
            "mask_readings": self.mask_readings(),
            "config": _json_safe(self.config),
        }

    def mask_readings(self) -> dict[str, int]:
        """How many ground-truth masks were read which way (see ``MaskImage.summary``)."""
        counts: dict[str, int] = {}
        for image in self.succeeded:
            if image.mask_reading:
                counts[image.mask_reading] = counts.get(image.mask_reading, 0) + 1
        return counts

    def readings_note(self, spelling: Mapping[str, str] | None = None) -> str:
        """One paragraph on how the masks were read and how to force the other reading."""
        counts = self.mask_readings()
        if not counts:
            return ""
        parts = [f"{reading}: {count}" for reading, count in sorted(counts.items())]
        note = "Ground-truth masks read as " + ", ".join(parts) + "."
        reasons = sorted({image.mask_note for image in self.succeeded if image.mask_note})
        if reasons:
            note += " " + "; ".join(reason[0].upper() + reason[1:] for reason in reasons[:3]) + "."
        if any(reading != "binary" for reading in counts):
            note += InputError(
                f" To read them otherwise, give {option('mask_threshold')} (threshold every "
                f"mask) or {option('labels')} (every value is an object)."
            ).render(spelling)
        return note

    def to_markdown(self, *, spelling: Mapping[str, str] | None = None) -> str:
        """A summary table and a per-image table (failed images listed with their error).

        ``spelling`` names options the way the caller's front end does (the command
        line's flags) in the note on how masks were read.
        """
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
        note = self.readings_note(spelling)
        if note:
            lines += ["", note]
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
