"""Options of the PerSAM engine as one frozen dataclass, and its one JSON form.

No torch import here. :func:`config_to_dict` and :func:`config_from_dict` are the
only translation between :class:`PerSAMConfig` and JSON: concept files, batch
reports and Dask workers all use them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ENCODER_DTYPES = ("float32", "bfloat16", "float16")
ENCODER_BACKENDS = ("auto", "torch", "openvino", "onnxruntime")
STACK_MODES = ("propagate", "independent")
PROMPT_MODES = ("part-aware", "persam")
TILINGS = ("auto", "off")
#: The smallest tile side: a tile must hold a few feature cells (SAM's grid is 64 x 64).
MIN_TILE_SIDE = 64


@dataclass(frozen=True)
class PerSAMConfig:
    """What the engine does; built by the widget or the command line.

    Parameters
    ----------
    target_guided_attention : bool
        Bias the decoder's token-to-image cross-attention towards cells that look
        like the target (PerSAM's target-guided attention).
    semantic_prompt : bool
        Add the target embedding to the decoder's query tokens (target-semantic
        prompting).
    negative_prior : bool
        Add a negative point at the least similar location (PerSAM's
        positive-negative location prior).
    refinement_steps : int
        Cascaded post-refinement steps after the first prediction: 0, 1 (mask
        logits fed back) or 2 (and the mask's tight box). More than 2 repeats the
        box step.
    min_area_fraction : float
        Connected components smaller than this fraction of the image area are
        removed from the result. 0 keeps everything.
    encoder_dtype : {"float32", "bfloat16", "float16"}
        Precision of the image encoder (bfloat16 autocast where the device supports
        it, float16 autocast on CUDA only; the decoder always runs in float32).
    encoder_backend : {"auto", "torch", "openvino", "onnxruntime"}
        What runs the image encoder. ``"auto"``: on a CPU, the image encoder exported
        once per checkpoint to ONNX and run by OpenVINO (or ONNX Runtime when OpenVINO
        is missing), else PyTorch; on a GPU, PyTorch. A backend that cannot be used
        here falls back to PyTorch with one warning. Embeddings match PyTorch's to
        about 1e-5; they are cached per backend.
    compile_encoder : bool
        PyTorch backend only: run the image encoder through ``torch.compile``
        (the first image pays the compilation; meant for GPUs).
    foreground_coverage : float
        A feature cell is foreground for the target embedding when the reference
        mask covers at least this fraction of it.
    channels : tuple of int, optional
        Which channels (last axis) of an image with more than 4 channels to use:
        one index (shown as grey) or three (as RGB).
    finetune_steps, finetune_lr : int, float
        PerSAM-F training schedule (AdamW, cosine decay).
    finetune_max_side : int
        PerSAM-F fits its weights on logits resized so the longest side is at
        most this many pixels; the loss is a mean over pixels, so this changes the
        result little and the fitting time a lot.
    cache_size : int
        How many image embeddings the in-memory cache keeps.
    decoder_batch_size : int
        Prompt sets decoded in one call of SAM's mask decoder (instances,
        propagation). Larger is faster until memory runs out.
    instance_threshold : float, optional
        Every-instance mode: similarity a local maximum needs to become a candidate.
        ``None`` takes it from the reference: halfway between the similarity of the
        reference's object cells and of its background cells.
    instance_spacing : float, optional
        Every-instance mode: at most one candidate per this many pixels (the
        minimum distance between candidates). ``None``: half the reference
        object's equivalent diameter.
    max_instances : int
        Every-instance mode: at most this many candidates are decoded.
    instance_iou_limit : float
        Every-instance mode: a mask overlapping an accepted one by more than this
        IoU is dropped.
    stack_mode : {"propagate", "independent"}
        Stacks: ``propagate`` prompts each slice also with its neighbour's result,
        outward from the reference slice; ``independent`` uses the concept alone.
    propagation_margin : float
        Stacks: the neighbour's box is enlarged by this fraction of its size on
        each side.
    propagation_min_score : float
        Stacks: a result below this predicted IoU (or empty) does not prompt the
        next slice, so a vanished object stops steering.
    prompt_mode : {"part-aware", "persam"}
        ``"part-aware"`` (P²SAM, Zhao & Shen 2024): one positive point per part
        prototype of the reference (k-means of its cells, for every part count from
        ``min_parts`` to ``max_parts``), negatives from background prototypes
        (``min_negative_parts`` to ``max_negative_parts``), and of the masks these
        prompts give, the one whose cell features are closest to the reference's
        (earth mover's distance); every-instance candidates far from the reference
        or closer to a negative prototype are dropped. ``"persam"``: PerSAM's one
        positive and one negative point, exactly as before (the default: part-aware
        prompting runs one cascade per pair tried, over a third of a ViT-B encoding on a CPU
        with the default ten pairs; see BENCHMARKS.md). User negatives (painted "not
        this") apply in both modes.
    min_parts, max_parts : int
        Part-aware: part counts tried (1 is PerSAM's mean embedding). A count with
        fewer reference cells than parts is skipped.
    min_negative_parts, max_negative_parts : int
        Part-aware: background prototype counts tried; 0 is PerSAM's negative point
        at the least similar place. Counts above the learned concept's are skipped.
    instance_max_distance : float, optional
        Part-aware, every instance: a candidate whose cells are farther than this
        (earth mover's distance) from the reference's is dropped. ``None`` takes it
        from the reference (:attr:`Concept.distance_threshold`).
    object_cells : float
        Small objects in large images: the reference object (median equivalent
        diameter of its painted pieces) must span at least this many feature cells
        across. When it spans fewer at the whole-image scale, learning and
        segmenting work on tiles at the scale where it does (see ``tiling``).
    tiling : "auto", "off" or int
        ``"auto"``: tile at the concept's learned scale when the image is larger
        than one tile at that scale; ``"off"``: always the whole image (one
        encoding, SAM's own geometry); an int: tiles of that side in pixels.
    tile_overlap : int, optional
        Pixels shared by neighbouring tiles; ``None``: three object diameters (at
        least two feature cells), so an object near a tile border lies whole in the
        next tile.
    max_tiles : int
        Refuse a plan with more tiles per image than this (say how to coarsen).
    seed : int
        Seed for anything random (PerSAM-F has no randomness; kept for
        determinism of future steps).
    """

    target_guided_attention: bool = True
    semantic_prompt: bool = True
    negative_prior: bool = True
    refinement_steps: int = 2
    min_area_fraction: float = 0.001
    encoder_dtype: str = "float32"
    encoder_backend: str = "auto"
    compile_encoder: bool = False
    foreground_coverage: float = 0.5
    channels: tuple[int, ...] | None = None
    finetune_steps: int = 1000
    finetune_lr: float = 1e-3
    finetune_max_side: int = 128
    cache_size: int = 16
    seed: int = 0
    decoder_batch_size: int = 16
    instance_threshold: float | None = None
    instance_spacing: float | None = None
    max_instances: int = 100
    instance_iou_limit: float = 0.5
    stack_mode: str = "propagate"
    propagation_margin: float = 0.1
    propagation_min_score: float = 0.5
    prompt_mode: str = "persam"
    min_parts: int = 1
    max_parts: int = 5
    min_negative_parts: int = 0
    max_negative_parts: int = 1
    instance_max_distance: float | None = None
    object_cells: float = 2.0
    tiling: str | int = "auto"
    tile_overlap: int | None = None
    max_tiles: int = 256

    def __post_init__(self) -> None:
        if self.encoder_dtype not in ENCODER_DTYPES:
            raise ValueError(
                f"encoder_dtype must be one of {ENCODER_DTYPES}, got {self.encoder_dtype!r}."
            )
        if self.encoder_backend not in ENCODER_BACKENDS:
            raise ValueError(
                f"encoder_backend must be one of {ENCODER_BACKENDS}, got {self.encoder_backend!r}."
            )
        if self.encoder_backend == "onnxruntime" and self.encoder_dtype != "float32":
            raise ValueError(
                "encoder_backend='onnxruntime' runs the encoder in float32 only; use "
                "encoder_dtype='float32' or another backend."
            )
        if self.refinement_steps < 0:
            raise ValueError(f"refinement_steps must be 0 or more, got {self.refinement_steps}.")
        if not 0.0 <= self.min_area_fraction < 1.0:
            raise ValueError(f"min_area_fraction must be in [0, 1), got {self.min_area_fraction}.")
        if not 0.0 < self.foreground_coverage <= 1.0:
            raise ValueError(
                f"foreground_coverage must be in (0, 1], got {self.foreground_coverage}."
            )
        if self.channels is not None:
            channels = tuple(int(c) for c in self.channels)
            if len(channels) not in (1, 3):
                raise ValueError(
                    f"channels must name 1 channel (grey) or 3 (RGB), got {self.channels}."
                )
            object.__setattr__(self, "channels", channels)
        if self.finetune_steps < 1 or self.finetune_lr <= 0:
            raise ValueError("finetune_steps must be >= 1 and finetune_lr > 0.")
        if self.finetune_max_side < 16:
            raise ValueError(f"finetune_max_side must be >= 16, got {self.finetune_max_side}.")
        if self.stack_mode not in STACK_MODES:
            raise ValueError(f"stack_mode must be one of {STACK_MODES}, got {self.stack_mode!r}.")
        if self.decoder_batch_size < 1 or self.max_instances < 1:
            raise ValueError("decoder_batch_size and max_instances must be >= 1.")
        if not 0.0 < self.instance_iou_limit <= 1.0:
            raise ValueError(
                f"instance_iou_limit must be in (0, 1], got {self.instance_iou_limit}."
            )
        if self.instance_spacing is not None and self.instance_spacing < 1:
            raise ValueError(f"instance_spacing must be >= 1 px, got {self.instance_spacing}.")
        if self.propagation_margin < 0:
            raise ValueError(f"propagation_margin must be >= 0, got {self.propagation_margin}.")
        if self.prompt_mode not in PROMPT_MODES:
            raise ValueError(
                f"prompt_mode must be one of {PROMPT_MODES}, got {self.prompt_mode!r}."
            )
        if not 1 <= self.min_parts <= self.max_parts:
            raise ValueError(
                f"parts must satisfy 1 <= min_parts <= max_parts, got {self.min_parts} and "
                f"{self.max_parts}."
            )
        if not 0 <= self.min_negative_parts <= self.max_negative_parts:
            raise ValueError(
                "negative parts must satisfy 0 <= min_negative_parts <= max_negative_parts, "
                f"got {self.min_negative_parts} and {self.max_negative_parts}."
            )
        if self.instance_max_distance is not None and not self.instance_max_distance > 0:
            raise ValueError(
                f"instance_max_distance must be positive, got {self.instance_max_distance}."
            )
        if self.cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, got {self.cache_size}.")
        if not self.object_cells > 0:
            raise ValueError(f"object_cells must be positive, got {self.object_cells}.")
        if isinstance(self.tiling, bool) or (
            isinstance(self.tiling, str) and self.tiling not in TILINGS
        ):
            raise ValueError(
                f"tiling must be one of {TILINGS} or a tile side in pixels, got {self.tiling!r}."
            )
        if isinstance(self.tiling, int) and self.tiling < MIN_TILE_SIDE:
            raise ValueError(f"A tile side must be at least {MIN_TILE_SIDE} px, got {self.tiling}.")
        if self.tile_overlap is not None and self.tile_overlap < 0:
            raise ValueError(f"tile_overlap must be >= 0 px, got {self.tile_overlap}.")
        if self.max_tiles < 1:
            raise ValueError(f"max_tiles must be >= 1, got {self.max_tiles}.")


# ------------------------------------------------------------------------ JSON form
def config_to_dict(config: PerSAMConfig) -> dict[str, Any]:
    """The options as plain JSON values (tuples become lists)."""
    values = dataclasses.asdict(config)
    return {
        key: list(value) if isinstance(value, tuple) else value for key, value in values.items()
    }


def config_from_dict(values: Mapping[str, Any], *, ignore_unknown: bool = True) -> PerSAMConfig:
    """A :class:`PerSAMConfig` from :func:`config_to_dict`'s output, every value type-checked.

    Parameters
    ----------
    values : mapping
        Field names to JSON values; missing fields keep their defaults.
    ignore_unknown : bool
        Skip fields this version does not know (written by a newer version);
        ``False`` refuses them.

    Raises
    ------
    ValueError
        For a value of the wrong type or out of range, naming the field.
    """
    if not isinstance(values, Mapping):
        raise ValueError(f"the options must be a JSON object, not {type(values).__name__}")
    fields = {field.name: field for field in dataclasses.fields(PerSAMConfig)}
    unknown = sorted(str(key) for key in values if key not in fields)
    if unknown and not ignore_unknown:
        raise ValueError(f"unknown option(s) {unknown}")
    options = {}
    for name, value in values.items():
        if name in fields:
            options[name] = _checked_value(name, str(fields[name].type), value)
    try:
        return PerSAMConfig(**options)
    except (TypeError, ValueError) as error:
        raise ValueError(f"bad options: {error}") from error


def _checked_value(name: str, annotation: str, value: Any) -> Any:
    """``value`` if it fits the field's annotation (as written in the class), else ValueError."""
    kinds = {part.strip() for part in annotation.split("|")}
    if value is None:
        if "None" in kinds:
            return None
    elif isinstance(value, bool):
        if "bool" in kinds:
            return value
    elif isinstance(value, int) and ("int" in kinds or "float" in kinds):
        return value if "int" in kinds else float(value)
    elif isinstance(value, float) and "float" in kinds and math.isfinite(value):
        return value
    elif isinstance(value, str) and "str" in kinds:
        return value
    elif isinstance(value, (list, tuple)) and any(kind.startswith("tuple") for kind in kinds):
        if all(isinstance(item, int) and not isinstance(item, bool) for item in value):
            return tuple(value)
    raise ValueError(f"option {name!r} must be {annotation}, not {value!r}")
