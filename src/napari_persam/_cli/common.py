"""Options and steps shared by ``napari-persam learn`` and ``napari-persam segment``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from napari_persam.core.config import PerSAMConfig

if TYPE_CHECKING:  # pragma: no cover
    from napari_persam.core.concept import Concept
    from napari_persam.core.persam import PerSAM

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_BAD_ARGUMENTS = 2


class UsageError(Exception):
    """A bad argument or input file: reported with exit code 2 and the message."""


def fail(command: str, message: str) -> int:
    """Print ``message`` as argparse does for bad arguments and return exit code 2."""
    print(f"napari-persam {command}: error: {message}", file=sys.stderr)
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
    try:
        return dataclasses.replace(config, **changes)
    except ValueError as error:
        raise UsageError(str(error)) from error


def cache_folder(args: argparse.Namespace) -> str | None:
    """The disk cache folder to use, or ``None`` with ``--no-cache``."""
    if args.no_cache:
        return None
    if args.cache is not None:
        return args.cache
    from napari_persam.core.disk_cache import default_cache_dir

    return str(default_cache_dir())


def cache_max_bytes(args: argparse.Namespace) -> int:
    if args.cache_max_gb <= 0:
        raise UsageError(f"--cache-max-gb must be positive, got {args.cache_max_gb}.")
    return int(args.cache_max_gb * 1024**3)


def load_engine(
    args: argparse.Namespace,
    *,
    model_name: str,
    config: PerSAMConfig,
    checkpoint_sha256: str | None = None,
) -> PerSAM:
    """Build the model and an engine with the disk cache the arguments ask for."""
    from napari_persam.core.disk_cache import DiskEmbeddingCache
    from napari_persam.core.embeddings import EmbeddingCache
    from napari_persam.core.models import iter_load_model
    from napari_persam.core.persam import PerSAM
    from napari_persam.core.progress import run
    from napari_persam.core.weights import WeightsError

    device = None if args.device == "auto" else args.device
    try:
        sam = run(iter_load_model(model_name, checkpoint=args.checkpoint, device=device))
    except (ValueError, FileNotFoundError, WeightsError) as error:
        # Nothing has run yet: a missing or undownloadable checkpoint ends the command
        # like a bad argument, with the message saying where to put the file.
        raise UsageError(str(error)) from error
    sam_device = next(sam.parameters()).device
    cache: Any = EmbeddingCache(config.cache_size)
    folder = cache_folder(args)
    if folder is not None:
        try:
            cache = DiskEmbeddingCache(
                folder,
                max_bytes=cache_max_bytes(args),
                device=sam_device,
                checkpoint_sha256=checkpoint_sha256,
                memory=cache,
            )
        except ValueError as error:
            raise UsageError(str(error)) from error
    return PerSAM(sam, config=config, device=sam_device, cache=cache, model_name=model_name)


def learn_concept(engine: PerSAM, pairs: list[tuple[str, str]], *, finetune: bool) -> Concept:
    """Learn (and optionally fine-tune) a concept from reference files."""
    from napari_persam.core.batch_io import read_image, read_mask

    loaded = []
    for image_path, mask_path in pairs:
        try:
            loaded.append((read_image(image_path), read_mask(mask_path)))
        except Exception as error:
            raise UsageError(
                f"Cannot read reference {image_path!r} / {mask_path!r}: {error}"
            ) from error
    try:
        concept = engine.learn(loaded)
        if finetune:
            concept = engine.finetune(concept)
    except ValueError as error:
        raise UsageError(f"Cannot learn from the references: {error}") from error
    return concept
