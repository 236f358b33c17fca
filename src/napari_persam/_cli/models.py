"""``napari-persam models``: list, download and verify the SAM checkpoints.

Examples
--------
::

    napari-persam models list
    napari-persam models download vit_b vit_t
    napari-persam models verify            # every checkpoint in the cache folder
    napari-persam models --cache-dir /data/sam download vit_h
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_persam._cli.common import EXIT_BAD_ARGUMENTS, EXIT_OK, EXIT_SOME_FAILED
from napari_persam.core.models import checkpoints as weights
from napari_persam.core.models.errors import ChecksumError, WeightsError
from napari_persam.core.models.registry import MODEL_REGISTRY, ModelSpec
from napari_persam.core.paths import CACHE_ENV, checkpoints_dir
from napari_persam.core.progress import TerminalProgress, run


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``models`` subcommand to the ``napari-persam`` parser."""
    parser = subparsers.add_parser(
        "models",
        help="List, download and verify SAM checkpoints.",
        description="List, download and verify the SAM checkpoints napari-persam uses. "
        f"Files go to one cache folder (${CACHE_ENV} moves it); a file put there "
        "by hand under its published name is found and verified.",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=f"checkpoint folder (default: ${CACHE_ENV}, else the user cache folder)",
    )
    actions = parser.add_subparsers(dest="models_action", metavar="ACTION")
    actions.add_parser("list", help="models with size, whether cached, and file path")
    download = actions.add_parser(
        "download", help="download checkpoints into the cache folder and verify them"
    )
    download.add_argument("names", nargs="+", metavar="NAME", help=_names_help())
    download.add_argument(
        "--url",
        default=None,
        help="download from this address instead of the publisher (one NAME only); "
        "the file must still match the published checksum",
    )
    verify = actions.add_parser(
        "verify", help="re-hash cached checkpoints and compare with the published checksums"
    )
    verify.add_argument("names", nargs="*", metavar="NAME", help="default: every cached one")
    parser.set_defaults(func=_dispatch, parser=parser)


def _names_help() -> str:
    return "one or more of " + ", ".join(spec.name for spec in _downloadable())


def _downloadable() -> list[ModelSpec]:
    return [spec for spec in MODEL_REGISTRY.values() if spec.downloadable]


def _dispatch(args: argparse.Namespace) -> int:
    action = {"list": _list, "download": _download, "verify": _verify}.get(args.models_action)
    if action is None:
        args.parser.print_help(sys.stderr)
        return EXIT_BAD_ARGUMENTS
    return action(args)


def _specs(names: list[str]) -> list[ModelSpec] | None:
    """Registry entries with checkpoints for ``names``; None (after a message) if any is not."""
    known = {spec.name: spec for spec in _downloadable()}
    unknown = [name for name in names if name not in known]
    if unknown:
        print(
            f"error: {', '.join(map(repr, unknown))} has no checkpoint to download; "
            f"choose from {', '.join(known)}.",
            file=sys.stderr,
        )
        return None
    return [known[name] for name in dict.fromkeys(names)]


def _list(args: argparse.Namespace) -> int:
    folder = checkpoints_dir(args.cache_dir)
    print(f"Checkpoint folder: {folder}")
    rows = [("NAME", "SIZE", "STATUS", "FILE")]
    for spec in MODEL_REGISTRY.values():
        if spec.downloadable:
            status = weights.cache_status(spec, cache_dir=args.cache_dir)
            path = str(weights.checkpoint_path(spec, cache_dir=args.cache_dir))
            rows.append((spec.name, _megabytes(spec.size), status, path))
        else:
            rows.append((spec.name, "-", "built in", "(random weights, for tests)"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])
    return EXIT_OK


def _megabytes(size: int) -> str:
    return f"{size / 1e6:,.0f} MB"


def _download(args: argparse.Namespace) -> int:
    specs = _specs(args.names)
    if specs is None:
        return EXIT_BAD_ARGUMENTS
    if args.url and len(specs) > 1:
        print("error: --url can only be used with one NAME.", file=sys.stderr)
        return EXIT_BAD_ARGUMENTS
    failed = []
    for spec in specs:
        bar = TerminalProgress(sys.stderr)
        try:
            path = run(
                weights.iter_ensure_checkpoint(spec, cache_dir=args.cache_dir, url=args.url),
                on_progress=bar,
            )
        except WeightsError as error:
            bar.close()
            print(f"{spec.name}: FAILED\n  {error}", file=sys.stderr)
            failed.append(spec.name)
            continue
        except KeyboardInterrupt:
            bar.close()
            # The download generator was closed on the way out: no partial file is left.
            print(f"{spec.name}: cancelled; nothing was kept.", file=sys.stderr)
            return EXIT_SOME_FAILED
        bar.close()
        print(f"{spec.name}: OK {path}")
    return _summary(failed, len(specs), verb="download")


def _verify(args: argparse.Namespace) -> int:
    if args.names:
        specs = _specs(args.names)
        if specs is None:
            return EXIT_BAD_ARGUMENTS
    else:
        specs = [
            spec
            for spec in _downloadable()
            if weights.cache_status(spec, cache_dir=args.cache_dir) != weights.MISSING
        ]
        if not specs:
            print(f"No checkpoints in {checkpoints_dir(args.cache_dir)}.")
            return EXIT_OK
    failed = []
    for spec in specs:
        path = weights.checkpoint_path(spec, cache_dir=args.cache_dir)
        if not path.is_file():
            print(f"{spec.name}: MISSING {path}", file=sys.stderr)
            failed.append(spec.name)
            continue
        bar = TerminalProgress(sys.stderr)
        try:
            run(weights.iter_verify(spec, path, recheck=True), on_progress=bar)
        except ChecksumError as error:
            bar.close()
            print(
                f"{spec.name}: FAILED\n  {error}\n  Replace it with: "
                f"napari-persam models download {spec.name}",
                file=sys.stderr,
            )
            failed.append(spec.name)
            continue
        bar.close()
        print(f"{spec.name}: OK {path}")
    return _summary(failed, len(specs), verb="verify")


def _summary(failed: list[str], total: int, *, verb: str) -> int:
    if failed:
        print(f"{len(failed)} of {total} failed to {verb}: {', '.join(failed)}", file=sys.stderr)
        return EXIT_SOME_FAILED
    return EXIT_OK
