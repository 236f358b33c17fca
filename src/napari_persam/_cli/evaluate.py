"""``napari-persam evaluate DATASET``: score PerSAM on a folder of images and masks."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from napari_persam._cli.common import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    FLAGS,
    UsageError,
    add_mask_threshold_argument,
    add_model_arguments,
    add_tiling_arguments,
    build_config,
    fail,
    load_engine,
    message,
)
from napari_persam.core.models.registry import DEFAULT_MODEL

COMMAND = "evaluate"

JSON_NAME = "evaluation.json"
MARKDOWN_NAME = "evaluation.md"

DESCRIPTION = """\
Evaluate one-shot (or k-shot) PerSAM on DATASET, a folder with images/ and masks/
whose files share names (images/a.jpg with masks/a.png). The first image, or the
ones named with --reference, are the references; every other image is segmented
and compared with its mask. Masks may be PNG/TIFF (8 or 16 bit; 0/1, 0/255,
0/65535, or instance labels) or JPEG (thresholded at --mask-threshold).

Reports the dataset IoU (summed intersection over summed union), the mean
per-image IoU, Dice, boundary IoU, precision and recall, and for instance masks
F1 and COCO-style AP at 0.5 and 0.5:0.95.

Exit codes: 0 all images evaluated, 1 some images failed (each named),
2 bad arguments or dataset.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="Score PerSAM against ground-truth masks on a dataset folder.",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dataset", type=Path, help="folder with images/ and masks/")
    parser.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="NAME",
        help="reference image name (file name or stem); repeat for k-shot "
        "(default: the first image in name order)",
    )
    parser.add_argument("--finetune", action="store_true", help="PerSAM-F: fit the mask weights")
    parser.add_argument(
        "--finetune-steps",
        type=int,
        default=None,
        metavar="N",
        help="PerSAM-F steps (default 1000)",
    )
    parser.add_argument(
        "--instances",
        choices=("auto", "yes", "no"),
        default="auto",
        help="instance F1/AP: auto = when masks are label images; yes also reads every mask "
        "as labels",
    )
    add_mask_threshold_argument(parser)
    parser.add_argument(
        "--out",
        type=Path,
        help=f"folder for {JSON_NAME} and {MARKDOWN_NAME} (created; existing reports are "
        "not overwritten)",
    )
    parser.add_argument("--quiet", action="store_true", help="no per-image progress lines")
    add_model_arguments(parser)
    add_tiling_arguments(parser)
    parser.set_defaults(func=run_evaluate)


def _error(text: str) -> int:
    return fail(COMMAND, text)


def run_evaluate(args: argparse.Namespace) -> int:
    try:
        return _evaluate(args)
    except UsageError as error:
        return _error(str(error))


def _evaluate(args: argparse.Namespace) -> int:
    from napari_persam.core.evaluation.dataset import load_dataset
    from napari_persam.core.evaluation.protocol import EvaluationOptions, evaluate_dataset
    from napari_persam.core.models.registry import get_spec

    model_name = args.model or DEFAULT_MODEL
    try:
        dataset = load_dataset(args.dataset)
        get_spec(model_name)
        options = EvaluationOptions(
            references=tuple(args.reference),
            finetune=args.finetune,
            instances=args.instances,
            mask_threshold=args.mask_threshold,
        )
        for name in options.references:
            dataset.find(name)
    except ValueError as error:
        return _error(message(error))
    outputs = _output_paths(args.out)
    if isinstance(outputs, str):
        return _error(outputs)
    if outputs is not None:
        from napari_persam.core.io.folders import check_writable_folder

        try:  # before the long run, so an unwritable folder fails fast
            check_writable_folder(args.out, what="--out")
        except ValueError as error:
            return _error(message(error))

    from napari_persam.core.progress import run

    # As learn and segment: a checkpoint in the cache is found, a missing one downloaded
    # and verified, or the message says where to put it; the disk cache is shared.
    engine = load_engine(args, model_name=model_name, config=build_config(args))

    def show(step) -> None:
        if args.quiet:
            return
        result = step.result
        if result is None:
            print(f"[{step.done}/{step.total}] {step.message}", file=sys.stderr)
        elif result.error is not None:
            print(
                f"[{step.done}/{step.total}] {result.name}: FAILED: {result.error}", file=sys.stderr
            )
        else:
            print(
                f"[{step.done}/{step.total}] {result.name}: IoU {result.iou:.4f}", file=sys.stderr
            )

    try:
        report = run(evaluate_dataset(engine, dataset, options=options), on_progress=show)
    except ValueError as error:
        return _error(message(error))

    markdown = report.to_markdown(spelling=FLAGS)
    print(markdown)
    if outputs is not None:
        json_path, markdown_path = outputs
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        markdown_path.write_text(markdown, encoding="utf-8")
        print(f"Wrote {json_path} and {markdown_path}", file=sys.stderr)
    for failure in report.failed:
        print(f"failed: {failure.name}: {failure.error}", file=sys.stderr)
    return EXIT_SOME_FAILED if report.failed else EXIT_OK


def _output_paths(out: Path | None) -> tuple[Path, Path] | str | None:
    """The report paths in ``out``, or a message if writing them would replace files."""
    if out is None:
        return None
    if out.exists() and not out.is_dir():
        return f"--out {out} exists and is not a folder; give a folder for the reports."
    paths = (out / JSON_NAME, out / MARKDOWN_NAME)
    existing = [str(path) for path in paths if path.exists()]
    if existing:
        return (
            f"{' and '.join(existing)} already exist(s); choose another --out folder or move "
            "the old reports away (they are not overwritten)."
        )
    return paths
