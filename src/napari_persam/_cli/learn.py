"""``napari-persam learn``: write a concept file from reference images and masks."""

from __future__ import annotations

import argparse
import os
import sys

from napari_persam._cli.common import (
    EXIT_OK,
    UsageError,
    add_finetune_arguments,
    add_mask_threshold_argument,
    add_model_arguments,
    add_negative_mask_argument,
    add_prompt_arguments,
    add_reference_arguments,
    add_tiling_arguments,
    build_config,
    fail,
    learn_concept,
    load_engine,
    negative_masks,
    reference_pairs,
    usage_error,
)
from napari_persam.core.models.registry import DEFAULT_MODEL

COMMAND = "learn"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        COMMAND,
        help="Learn a concept from painted references and save it to a file.",
        description="Learn a concept from one or more (image, mask) references and save it "
        "as a concept file (.npz) for `napari-persam segment --concept` or the napari widget.",
    )
    add_reference_arguments(parser)
    add_negative_mask_argument(parser)
    parser.add_argument(
        "--out", required=True, metavar="CONCEPT.npz", help="Concept file to write."
    )
    parser.add_argument(
        "--label-value",
        type=int,
        metavar="N",
        default=1,
        help="Label value the concept paints in segmentations (default 1).",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="Replace --out if it is an older concept file (any other file is kept).",
    )
    add_mask_threshold_argument(parser)
    add_prompt_arguments(parser)
    add_finetune_arguments(parser)
    add_model_arguments(parser)
    add_tiling_arguments(parser)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    try:
        return _learn(args)
    except UsageError as error:
        return fail(COMMAND, str(error))


def _learn(args: argparse.Namespace) -> int:
    from napari_persam.core.engine.results import MAX_LABEL_VALUE
    from napari_persam.core.io.concept_file import is_concept_file, save_concept
    from napari_persam.core.io.folders import check_writable_folder

    pairs = reference_pairs(args)
    if not pairs:
        raise UsageError("give at least one --reference IMG --mask MASK pair.")
    negatives = negative_masks(args, len(pairs))
    out = args.out if args.out.endswith(".npz") else args.out + ".npz"
    if os.path.isdir(out):
        raise UsageError(f"--out {out!r} is a folder; name the concept file to write.")
    if os.path.exists(out) and not args.overwrite:
        raise UsageError(f"{out!r} exists; choose another --out or pass --overwrite.")
    if os.path.exists(out) and not is_concept_file(out):
        # --overwrite replaces an older concept, never another file of the user's.
        raise UsageError(
            f"{out!r} exists and is not a concept file; it is kept. Choose another --out."
        )
    try:  # before the model is loaded and the references encoded
        check_writable_folder(os.path.dirname(os.path.abspath(out)), what="The folder of --out")
    except ValueError as error:
        raise usage_error(error) from error
    if not 1 <= args.label_value <= MAX_LABEL_VALUE:
        raise UsageError(f"--label-value must be in 1..{MAX_LABEL_VALUE}, got {args.label_value}.")
    model_name = args.model or DEFAULT_MODEL
    config = build_config(args)
    # The model is loaded first: a missing or wrong checkpoint ends here with its
    # message. Its checkpoint hash is recorded in the concept file.
    engine = load_engine(args, model_name=model_name, config=config)
    concept = learn_concept(
        engine,
        pairs,
        finetune=args.finetune,
        mask_threshold=args.mask_threshold,
        negative_paths=negatives,
    )
    written = save_concept(
        concept,
        out,
        config=config,
        checkpoint_sha256=engine.checkpoint_sha256,
        label_value=args.label_value,
    )
    kind = "PerSAM-F" if concept.is_finetuned else "PerSAM"
    if concept.negative_prototypes is not None:
        kind += f" (with {len(concept.negative_prototypes)} negative region(s))"
    print(
        f"Wrote {kind} concept from {len(pairs)} reference(s) with model {model_name!r} "
        f"to {written}",
        file=sys.stderr,
    )
    return EXIT_OK
