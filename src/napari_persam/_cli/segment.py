"""``napari-persam segment``: segment a concept in many images or stacks, resumably."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from napari_persam._cli.common import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    FLAGS,
    UsageError,
    add_finetune_arguments,
    add_mask_threshold_argument,
    add_model_arguments,
    add_negative_mask_argument,
    add_prompt_arguments,
    add_reference_arguments,
    add_tiling_arguments,
    build_config,
    engine_spec,
    fail,
    learn_concept,
    load_engine,
    message,
    negative_masks,
    reference_pairs,
    usage_error,
)
from napari_persam.core.models.registry import DEFAULT_MODEL

COMMAND = "segment"
STACK_MODES = ("independent", "propagate")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        COMMAND,
        help="Segment a learned concept in images, folders, TIFF stacks and zarr arrays.",
        description="Segment the object of the references (or of a concept file) in every "
        "target. Writes one label image per input image (same name, TIFF or PNG), one zarr "
        "array per stack, and report.json into --out. Finished outputs are skipped when the "
        "command is run again. Exit codes: 0 all done, 1 some inputs failed (each named), "
        "2 bad arguments.",
    )
    add_reference_arguments(parser)
    add_negative_mask_argument(parser)
    parser.add_argument(
        "--concept", default=None, metavar="FILE", help="Concept file from napari-persam learn."
    )
    parser.add_argument(
        "--targets",
        nargs="+",
        required=True,
        metavar="PATH",
        help="Image files, glob patterns (quote them), folders, TIFF stacks or zarr arrays.",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="Output folder.")
    parser.add_argument(
        "--label-value",
        type=int,
        metavar="N",
        default=None,
        help="Label value painted for the object (default 1, or the concept file's).",
    )
    parser.add_argument(
        "--instances",
        action="store_true",
        help="Label each object separately (instance labels: int32 in TIFF and zarr outputs, "
        "uint16 in PNG outputs).",
    )
    parser.add_argument(
        "--stack-mode",
        choices=STACK_MODES,
        default="independent",
        help="independent: each slice on its own (default, parallel); propagate: carry the "
        "object from slice to slice, outward from --start-slice.",
    )
    parser.add_argument(
        "--start-slice",
        type=int,
        metavar="Z",
        default=None,
        help="With --stack-mode propagate: the slice to start from, where the object looks "
        "most like the reference (default: the middle slice).",
    )
    add_mask_threshold_argument(parser)
    add_prompt_arguments(parser)
    add_finetune_arguments(parser)
    add_model_arguments(parser)
    add_tiling_arguments(parser)
    cluster = parser.add_mutually_exclusive_group()
    cluster.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="Run on a local Dask cluster of N processes.",
    )
    cluster.add_argument(
        "--scheduler", default=None, metavar="ADDRESS", help="Run on a Dask scheduler (tcp://...)."
    )
    parser.add_argument(
        "--worker-threads",
        type=int,
        default=None,
        metavar="T",
        help="CPU threads per Dask worker (default: as many as a single-process run uses here, "
        "which gives identical results). Other counts may change scores in the last digits.",
    )
    parser.add_argument("--quiet", action="store_true", help="No progress bar.")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    try:
        return _segment(args)
    except UsageError as error:
        return fail(COMMAND, str(error))


def _check_arguments(args: argparse.Namespace) -> None:
    from napari_persam.core.batch.report import check_report_path
    from napari_persam.core.engine.results import MAX_LABEL_VALUE
    from napari_persam.core.io.folders import check_writable_folder

    if args.concept and (args.reference or args.mask):
        raise UsageError("give either --concept or --reference/--mask pairs, not both.")
    if not args.concept and not args.reference:
        raise UsageError("give --concept FILE or at least one --reference IMG --mask MASK pair.")
    if args.concept and args.negative_mask:
        raise UsageError(
            "--negative-mask goes with --reference (a concept file keeps the negatives it was "
            "learned with); learn again with napari-persam learn --negative-mask."
        )
    if args.concept and args.finetune:
        raise UsageError(
            "--finetune needs the reference images, which a concept file does not hold; "
            "fine-tune when learning (napari-persam learn --finetune) or pass --reference/--mask."
        )
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be 1 or more, got {args.workers}.")
    if args.worker_threads is not None and args.worker_threads < 1:
        raise UsageError(f"--worker-threads must be 1 or more, got {args.worker_threads}.")
    if args.label_value is not None and not 1 <= args.label_value <= MAX_LABEL_VALUE:
        raise UsageError(f"--label-value must be in 1..{MAX_LABEL_VALUE}, got {args.label_value}.")
    if args.start_slice is not None and args.stack_mode != "propagate":
        raise UsageError("--start-slice goes with --stack-mode propagate.")
    if args.start_slice is not None and args.start_slice < 0:
        raise UsageError(f"--start-slice must be 0 or more, got {args.start_slice}.")
    try:  # before any work: a run must not fail at its end for want of a folder
        check_writable_folder(args.out, what="--out")
        check_report_path(args.out)
    except ValueError as error:
        raise usage_error(error) from error


def _segment(args: argparse.Namespace) -> int:
    import numpy as np

    from napari_persam.core.batch.plan import (
        SegmentOptions,
        check_output_formats,
        output_dtype,
        plan_items,
        prepare_outputs,
    )
    from napari_persam.core.batch.report import write_report
    from napari_persam.core.batch.run import iter_run_local
    from napari_persam.core.io.concept_file import concepts_to_bytes, read_concept_file
    from napari_persam.core.io.targets import TargetError, resolve_targets

    _check_arguments(args)
    try:
        targets = resolve_targets(args.targets)
    except TargetError as error:
        raise usage_error(error, "--targets ") from error
    options = SegmentOptions(
        instances=args.instances,
        propagate=args.stack_mode == "propagate",
        start_slice=args.start_slice,
    )

    concept_file = None
    if args.concept:
        try:
            concept_file = read_concept_file(args.concept)
        except (OSError, ValueError) as error:
            raise usage_error(error) from error
        model_name = args.model or concept_file.model_name or DEFAULT_MODEL
        try:  # before any model is loaded or downloaded
            concept_file.check_model_name(model_name, source=f"Concept file {args.concept!r}")
        except ValueError as error:
            raise usage_error(error) from error
        config = build_config(args, concept_file.config)
        concepts = dict(concept_file.concepts)
        if args.label_value is not None:
            if len(concepts) != 1:
                raise UsageError("--label-value applies to concept files of one concept.")
            concepts = {args.label_value: next(iter(concepts.values()))}
        pairs: list[tuple[str, str]] = []
        negatives = None
    else:
        pairs = reference_pairs(args)
        negatives = negative_masks(args, len(pairs))
        model_name = args.model or DEFAULT_MODEL
        config = build_config(args)
        concepts = {}
    label_value = args.label_value or 1

    try:
        dtype = output_dtype(list(concepts) or [label_value], options)
        items, failures = plan_items(targets, args.out, options=options)
        check_output_formats(items, dtype, options=options)
    except ValueError as error:
        raise usage_error(error) from error

    run_info: dict[str, Any] = {
        "model": model_name,
        "checkpoint": args.checkpoint,
        "concept": args.concept,
        "references": [list(pair) for pair in pairs],
        "finetune": bool(args.finetune),
        "instances": options.instances,
        "stack_mode": args.stack_mode,
        "workers": args.workers,
        "scheduler": args.scheduler,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    distributed = args.workers is not None or args.scheduler is not None
    # A concept file's scale is known now: a plan beyond --max-tiles stops the run
    # before a model is loaded (or downloaded). Learned concepts are planned once learned.
    encodings = _plan_encodings(targets, concepts, config) if concepts else None
    engine = None
    if pairs or not distributed:
        engine = load_engine(args, model_name=model_name, config=config)
    if pairs:
        assert engine is not None
        concepts = {
            label_value: learn_concept(
                engine,
                pairs,
                finetune=args.finetune,
                mask_threshold=args.mask_threshold,
                negative_paths=negatives,
            )
        }
    if concept_file is not None and engine is not None:
        _check_model(concept_file, model_name, engine.fingerprint, args.concept)
    if encodings is None:
        encodings = _plan_encodings(targets, concepts, config)
    run_info["encodings"] = encodings
    if not args.quiet:
        print(encodings["summary"], file=sys.stderr)

    if not distributed:
        assert engine is not None
        try:
            items, blocked = prepare_outputs(items, args.out, dtype=dtype)
        except ValueError as error:
            raise usage_error(error) from error
        progress = _progress_bar(len(items), quiet=args.quiet)
        try:
            work = iter_run_local(engine, concepts, items, options=options, dtype=np.dtype(dtype))
            records = _drain(work, progress)
        finally:
            progress.close()
    else:
        concept_bytes = concepts_to_bytes(concepts, config=config)
        blocked, records = _run_distributed(
            args, model_name, config, concept_bytes, concept_file, items, options, dtype
        )

    records = [_in_our_words(record) for record in failures + blocked + records]
    run_info["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    report = write_report(args.out, records, run=run_info)
    return _summarize(records, report)


def _plan_encodings(targets: list, concepts: dict, config: Any) -> dict[str, Any]:
    """How many encodings the run takes (tiles per image or slice), refusing too many.

    Every target is planned from its header before any work, so an image that needs
    more than --max-tiles tiles stops the run before anything is written.
    """
    from napari_persam.core.engine.tiles import plans_for
    from napari_persam.core.errors import InputError
    from napari_persam.core.io.lazy import target_shape

    total, scales = 0, set()
    for target in targets:
        try:
            shape = target_shape(target)
        except (InputError, OSError, ValueError):
            continue  # unreadable: reported as a failed input when its turn comes
        plane = shape[1:] if target.is_stack else shape
        depth = shape[0] if target.is_stack else 1
        try:
            plans = plans_for(plane, concepts.values(), config=config)
        except InputError as error:
            raise usage_error(error, f"{target.path}: ") from error
        total += sum(len(plan) for plan in plans) * depth
        scales |= {(p.tile_side, round(p.pixels_per_cell, 2)) for p in plans if p.tiled}
    how = "; ".join(
        f"tiles of {side} px ({cell} px per feature cell)" for side, cell in sorted(scales)
    )
    summary = f"{len(targets)} input(s): {total} encoding(s)" + (f", {how}" if how else "")
    return {"total": total, "summary": summary}


def _check_model(concept_file: Any, model_name: str, fingerprint: str, source: str) -> None:
    try:
        concept_file.check_model(
            model_name=model_name, model_fingerprint=fingerprint, source=f"Concept file {source!r}"
        )
    except ValueError as error:
        hint = (
            f" Here: --model {concept_file.model_name} (and its --checkpoint)."
            if concept_file.model_name
            else ""
        )
        raise UsageError(message(error) + hint) from error


def _in_our_words(record: dict[str, Any]) -> dict[str, Any]:
    """A failure record with the core's option names replaced by this command's flags."""
    template = record.pop("error_template", None)
    if template is not None:
        from napari_persam.core.errors import InputError

        record["error"] = InputError(template).render(FLAGS)
    return record


def _run_distributed(
    args: argparse.Namespace,
    model_name: str,
    config: Any,
    concept_bytes: bytes,
    concept_file: Any,
    items: list,
    options: Any,
    dtype: Any,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Check the model on a worker, then run; returns (blocked outputs, item records)."""
    from napari_persam.core.batch.cluster import DaskRunner
    from napari_persam.core.batch.plan import prepare_outputs

    spec = engine_spec(
        args,
        model_name=model_name,
        config=config,
        # Same thread count as a single-process run here: sums then add up in the same order
        # and the files are bit for bit the same (Dask itself starts workers with 1 thread).
        torch_threads=args.worker_threads or _torch_threads(),
    )
    try:
        runner = DaskRunner(workers=args.workers, scheduler=args.scheduler)
        runner.__enter__()
    except ValueError as error:
        raise usage_error(error) from error
    try:
        try:
            name, fingerprint = runner.model_identity(spec)
        except (ValueError, FileNotFoundError) as error:
            raise usage_error(error, "The workers cannot load the model: ") from error
        if concept_file is not None:
            _check_model(concept_file, name, fingerprint, args.concept)
        items, blocked = prepare_outputs(items, args.out, dtype=dtype)
        progress = _progress_bar(len(items), quiet=args.quiet)
        try:
            work = runner.iter_run(spec, concept_bytes, items, options=options, dtype=dtype)
            return blocked, _drain(work, progress)
        finally:
            progress.close()
    finally:
        runner.__exit__(None, None, None)


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _drain(work: Any, progress: Any) -> list[dict[str, Any]]:
    from napari_persam.core.progress import run

    def show(step: Any) -> None:
        progress.update(1)
        record = step.result
        if record is not None and record["status"] == "failed":
            progress.write(f"failed: {record['input']}: {record['error']}", file=sys.stderr)

    return run(work, on_progress=show)


def _progress_bar(total: int, *, quiet: bool) -> Any:
    from tqdm import tqdm

    # disable=None hides the bar when stderr is not a terminal (logs, CI).
    return tqdm(total=total, unit="item", file=sys.stderr, disable=True if quiet else None)


def _summarize(records: list[dict[str, Any]], report: Any) -> int:
    counts = {"ok": 0, "skipped": 0, "failed": 0}
    for record in records:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    failed = [record for record in records if record["status"] == "failed"]
    for record in failed:
        where = record["input"] + ("" if record.get("slice") is None else f"[{record['slice']}]")
        print(f"FAILED {where}: {record['error']}", file=sys.stderr)
    print(
        f"{counts['ok']} segmented, {counts['skipped']} already done, {counts['failed']} failed; "
        f"report: {report}",
        file=sys.stderr,
    )
    return EXIT_SOME_FAILED if failed else EXIT_OK
