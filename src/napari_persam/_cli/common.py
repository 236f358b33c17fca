"""What every subcommand shares: exit codes, the error printer, options, engine building.

Exit codes: 0 success, 1 some work failed (each failure named), 2 bad arguments
or inputs. Core messages name options in the core's terms; :data:`FLAGS` spells
them as this command line does, and :func:`message` applies it.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from napari_persam.core.config import ENCODER_BACKENDS, PerSAMConfig
from napari_persam.core.errors import render_error

if TYPE_CHECKING:  # pragma: no cover
    from napari_persam.core.engine.concepts import Concept
    from napari_persam.core.engine.persam import PerSAM
    from napari_persam.core.engine_builder import EngineSpec

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_BAD_ARGUMENTS = 2

#: How this command line spells the options core messages name.
FLAGS = {
    "channels": "--channels",
    "mask_threshold": "--mask-threshold",
    "labels": "--instances yes",
    "targets": "--targets",
    "out": "another --out folder",
    "model": "--model",
    "label_value": "--label-value",
    "negatives": "--negative-mask",
    "object_cells": "--object-cells",
    "tiling": "--tiling",
    "max_tiles": "--max-tiles",
}


class UsageError(Exception):
    """A bad argument or input file: reported with exit code 2 and the message."""


def message(error: BaseException) -> str:
    """``error``'s message with options spelled as command-line flags."""
    return render_error(error, FLAGS)


def usage_error(error: BaseException, prefix: str = "") -> UsageError:
    """A :class:`UsageError` carrying ``error``'s message in this command line's words."""
    return UsageError(prefix + message(error))


def fail(command: str, text: str) -> int:
    """Print ``text`` as argparse does for bad arguments and return exit code 2."""
    print(f"napari-persam {command}: error: {text}", file=sys.stderr)
    return EXIT_BAD_ARGUMENTS


def add_reference_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reference",
        action="append",
        default=None,
        metavar="IMG",
        help="Reference image (TIFF, PNG, JPEG). Repeat with --mask for several references.",
    )
    parser.add_argument(
        "--mask",
        action="append",
        default=None,
        metavar="MASK",
        help="Mask of the object in the matching --reference (nonzero pixels = object).",
    )


def add_mask_threshold_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mask-threshold",
        type=float,
        metavar="T",
        default=None,
        help="Binarise masks above this value. Default: a mask is read as labels when it "
        "clearly is a label image, else thresholded halfway between its lowest and highest "
        "value (JPEG masks at 127).",
    )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="Model name: vit_b (default; with --concept, the concept's model), vit_l, vit_h, "
        "or tiny (a small random model for tests and demos: fast, needs no checkpoint, "
        "meaningless masks).",
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        metavar="FILE",
        help="Checkpoint file of the model (.pth); default: the published one, downloaded "
        "once into the cache folder and verified.",
    )
    parser.add_argument(
        "--device", default="auto", help="auto (default: CUDA, then MPS, then CPU), cpu, cuda..."
    )
    parser.add_argument(
        "--encoder-backend",
        choices=ENCODER_BACKENDS,
        default=None,
        help="What runs the image encoder. auto (default): on a CPU, OpenVINO (or ONNX "
        "Runtime) on an ONNX export of the encoder, made once per checkpoint in the cache "
        "folder (about a minute for ViT-B); PyTorch on a GPU. A backend that cannot be used "
        "falls back to PyTorch with a warning.",
    )
    parser.add_argument(
        "--channels",
        type=int,
        nargs="+",
        default=None,
        metavar="C",
        help="For images with more than 4 channels: one channel (grey) or three (RGB).",
    )
    parser.add_argument(
        "--cache",
        default=None,
        metavar="DIR",
        help="Embedding cache folder (default: $NAPARI_PERSAM_CACHE or the user cache folder).",
    )
    parser.add_argument(
        "--no-cache", action="store_true", help="Do not read or write the embedding cache."
    )
    parser.add_argument(
        "--cache-max-gb",
        type=float,
        metavar="GB",
        default=4.0,
        help="Size cap of the embedding cache in GB (least recently used entries go first).",
    )


def _tiling(text: str) -> str | int:
    if text in ("auto", "off"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not auto, off or a tile side in pixels"
        ) from None


def add_tiling_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "small objects in large images",
        "Learning measures the painted object; when it spans fewer than --object-cells "
        "feature cells at the whole-image scale, images are encoded in tiles at the scale "
        "where it does.",
    )
    group.add_argument(
        "--tiling",
        type=_tiling,
        default=None,
        metavar="auto|off|PX",
        help="auto (default): tile at the learned scale when needed; off: always the whole "
        "image; PX: tiles of this side in pixels.",
    )
    group.add_argument(
        "--object-cells",
        type=float,
        default=None,
        metavar="N",
        help="Feature cells the reference object must span across (default 2; lower is "
        "coarser: fewer tiles).",
    )
    group.add_argument(
        "--tile-overlap",
        type=int,
        default=None,
        metavar="PX",
        help="Pixels shared by neighbouring tiles (default: three object diameters).",
    )
    group.add_argument(
        "--max-tiles",
        type=int,
        default=None,
        metavar="N",
        help="Refuse images that need more tiles than this (default 256).",
    )


def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--finetune",
        action="store_true",
        help="PerSAM-F: fit the weights of SAM's three masks to the reference masks.",
    )
    parser.add_argument(
        "--finetune-steps",
        type=int,
        default=None,
        metavar="N",
        help="PerSAM-F steps (default 1000).",
    )


def add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    """``--prompt-mode`` and the part ranges (part-aware prompting, P²SAM)."""
    from napari_persam.core.config import PROMPT_MODES

    parser.add_argument(
        "--prompt-mode",
        choices=PROMPT_MODES,
        default=None,
        help="part-aware: a positive point per part of the object (k-means of the reference), "
        "keeping the mask that looks most like the reference (P²SAM); persam: PerSAM's one "
        f"positive and one negative point. Default: {PerSAMConfig().prompt_mode} (or the "
        "concept file's).",
    )
    defaults = PerSAMConfig()
    parser.add_argument(
        "--min-parts",
        type=int,
        default=None,
        metavar="N",
        help=f"Part-aware: the fewest parts tried (default {defaults.min_parts}; 1 is "
        "PerSAM's mean embedding).",
    )
    parser.add_argument(
        "--max-parts",
        type=int,
        default=None,
        metavar="N",
        help=f"Part-aware: the most parts tried (default {defaults.max_parts}).",
    )
    parser.add_argument(
        "--max-negative-parts",
        type=int,
        default=None,
        metavar="N",
        help="Part-aware: the most background prototypes tried as negative points "
        f"(default {defaults.max_negative_parts}; 0: PerSAM's one negative point).",
    )
    parser.add_argument(
        "--instance-max-distance",
        type=float,
        default=None,
        metavar="D",
        help="Part-aware, every instance: drop objects whose cells are farther than D (earth "
        "mover's distance) from the reference's (default: learned from the reference).",
    )


def add_negative_mask_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--negative-mask",
        action="append",
        default=None,
        metavar="MASK",
        help="Regions of the matching --reference that are NOT the object (nonzero pixels; "
        "each region becomes a negative example). Give one per --reference, or 'none' to skip "
        "one.",
    )


def negative_masks(args: argparse.Namespace, count: int) -> list[str | None] | None:
    """The --negative-mask paths, one per reference (None where 'none'), checked."""
    given = getattr(args, "negative_mask", None)
    if not given:
        return None
    if len(given) != count:
        raise UsageError(
            f"{len(given)} --negative-mask but {count} --reference given; give one after "
            "each --reference ('none' for a reference without negatives)."
        )
    paths: list[str | None] = []
    for path in given:
        if path.lower() == "none":
            paths.append(None)
        elif not os.path.isfile(path):
            raise UsageError(f"--negative-mask {path!r}: no such file.")
        else:
            paths.append(path)
    return paths


def reference_pairs(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The (image, mask) paths given, checked for count and existence."""
    references = args.reference or []
    masks = args.mask or []
    if len(references) != len(masks):
        raise UsageError(
            f"{len(references)} --reference but {len(masks)} --mask given; "
            "give one --mask after each --reference."
        )
    for path in [*references, *masks]:
        if os.path.isdir(path):
            raise UsageError(f"{path!r} is a folder; --reference and --mask name files.")
        if not os.path.isfile(path):
            raise UsageError(f"{path!r}: no such file.")
    return list(zip(references, masks))


def build_config(args: argparse.Namespace, base: PerSAMConfig | None = None) -> PerSAMConfig:
    """The engine options: ``base`` (a concept file's) with the command line's changes."""
    import dataclasses

    config = base if base is not None else PerSAMConfig()
    changes: dict[str, Any] = {}
    if getattr(args, "channels", None) is not None:
        changes["channels"] = tuple(args.channels)
    if getattr(args, "finetune_steps", None) is not None:
        changes["finetune_steps"] = args.finetune_steps
    if getattr(args, "encoder_backend", None) is not None:
        changes["encoder_backend"] = args.encoder_backend
    if getattr(args, "prompt_mode", None) is not None:
        changes["prompt_mode"] = args.prompt_mode
    changes.update(_part_changes(args, config))
    for option in ("tiling", "object_cells", "tile_overlap", "max_tiles"):
        if getattr(args, option, None) is not None:
            changes[option] = getattr(args, option)
    try:
        return dataclasses.replace(config, **changes)
    except ValueError as error:
        raise usage_error(error) from error


def _part_changes(args: argparse.Namespace, config: PerSAMConfig) -> dict[str, Any]:
    """The part ranges the command line asks for; one end given moves the other along."""
    low, high = getattr(args, "min_parts", None), getattr(args, "max_parts", None)
    negatives = getattr(args, "max_negative_parts", None)
    distance = getattr(args, "instance_max_distance", None)
    for flag, value, least in (("--min-parts", low, 1), ("--max-parts", high, 1),
                               ("--max-negative-parts", negatives, 0)):  # fmt: skip
        if value is not None and value < least:
            raise UsageError(f"{flag} must be {least} or more, got {value}.")
    if low is not None and high is not None and low > high:
        raise UsageError(f"--min-parts {low} is above --max-parts {high}; give a range.")
    changes: dict[str, Any] = {}
    if low is not None:
        changes["min_parts"] = low
        changes["max_parts"] = high if high is not None else max(config.max_parts, low)
    elif high is not None:
        changes["max_parts"] = high
        changes["min_parts"] = min(config.min_parts, high)
    if negatives is not None:
        changes["max_negative_parts"] = negatives
        changes["min_negative_parts"] = min(config.min_negative_parts, negatives)
    if distance is not None:
        if not distance > 0:
            raise UsageError(f"--instance-max-distance must be positive, got {distance}.")
        changes["instance_max_distance"] = distance
    return changes


def cache_max_bytes(args: argparse.Namespace) -> int:
    if args.cache_max_gb <= 0:
        raise UsageError(f"--cache-max-gb must be positive, got {args.cache_max_gb}.")
    return int(args.cache_max_gb * 1024**3)


def engine_spec(
    args: argparse.Namespace,
    *,
    model_name: str,
    config: PerSAMConfig,
    torch_threads: int | None = None,
) -> EngineSpec:
    """The engine the arguments ask for (model, checkpoint, device, options, cache)."""
    from napari_persam.core.engine_builder import EngineSpec

    checkpoint = os.path.abspath(args.checkpoint) if args.checkpoint else None
    return EngineSpec(
        model=model_name,
        checkpoint=checkpoint,
        device=None if args.device == "auto" else args.device,
        config=config,
        disk_cache=not args.no_cache,
        cache_dir=os.path.abspath(args.cache) if args.cache is not None else None,
        cache_max_bytes=cache_max_bytes(args),
        torch_threads=torch_threads,
    )


def load_engine(args: argparse.Namespace, *, model_name: str, config: PerSAMConfig) -> PerSAM:
    """Build the model and an engine with the caches the arguments ask for."""
    from napari_persam.core.engine_builder import iter_build_engine
    from napari_persam.core.models.errors import WeightsError
    from napari_persam.core.progress import TerminalProgress, run

    spec = engine_spec(args, model_name=model_name, config=config)
    bar = TerminalProgress(disable=bool(getattr(args, "quiet", False)))
    try:
        return run(iter_build_engine(spec), on_progress=bar)
    except (ValueError, FileNotFoundError, WeightsError) as error:
        # Nothing has run yet: a missing or undownloadable checkpoint ends the command
        # like a bad argument, with the message saying where to put the file.
        raise usage_error(error) from error
    finally:
        bar.close()


def learn_concept(
    engine: PerSAM,
    pairs: list[tuple[str, str]],
    *,
    finetune: bool,
    mask_threshold: float | None = None,
    negative_paths: list[str | None] | None = None,
) -> Concept:
    """Learn (and optionally fine-tune) a concept from reference files.

    ``negative_paths``: one negatives mask file (or None) per pair, or None.
    """
    from napari_persam.core.io.images import read_image, read_mask

    loaded = []
    for image_path, mask_path in pairs:
        try:
            mask = read_mask(mask_path, threshold=mask_threshold)
            loaded.append((read_image(image_path), mask.foreground))
        except ValueError as error:
            raise usage_error(
                error, f"Cannot read reference {image_path!r} / {mask_path!r}: "
            ) from error
    negatives = None
    if negative_paths is not None:
        negatives = []
        for path in negative_paths:
            try:
                negatives.append(None if path is None else read_mask(path).foreground)
            except ValueError as error:
                raise usage_error(error, f"Cannot read --negative-mask {path!r}: ") from error
    try:
        concept = engine.learn(loaded, negatives=negatives) if negatives else engine.learn(loaded)
        if finetune:
            concept = engine.finetune(concept)
    except ValueError as error:
        raise usage_error(error, "Cannot learn from the references: ") from error
    return concept
