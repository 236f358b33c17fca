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
    add_reference_arguments,
    add_tiling_arguments,
    build_config,
    fail,
    learn_concept,
    load_engine,
    reference_pairs,
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
    parser.add_argument("--overwrite", action="store_true", help="Replace --out if it exists.")
    add_mask_threshold_argument(parser)
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
    from napari_persam.core.io.concept_file import save_concept

    pairs = reference_pairs(args)
    if not pairs:
        raise UsageError("give at least one --reference IMG --mask MASK pair.")
    out = args.out if args.out.endswith(".npz") else args.out + ".npz"
    if os.path.exists(out) and not args.overwrite:
        raise UsageError(f"{out!r} exists; choose another --out or pass --overwrite.")
    if not 1 <= args.label_value <= 65535:
        raise UsageError(f"--label-value must be in 1..65535, got {args.label_value}.")
    model_name = args.model or DEFAULT_MODEL
    config = build_config(args)
    # The model is loaded first: a missing or wrong checkpoint ends here with its
    # message. Its checkpoint hash is recorded in the concept file.
    engine = load_engine(args, model_name=model_name, config=config)
    concept = learn_concept(
        engine, pairs, finetune=args.finetune, mask_threshold=args.mask_threshold
    )
    written = save_concept(
        concept,
        out,
        config=config,
        checkpoint_sha256=engine.checkpoint_sha256,
        label_value=args.label_value,
    )
    kind = "PerSAM-F" if concept.is_finetuned else "PerSAM"
    print(
        f"Wrote {kind} concept from {len(pairs)} reference(s) with model {model_name!r} "
        f"to {written}",
        file=sys.stderr,
    )
    return EXIT_OK
