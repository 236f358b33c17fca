"""The ``napari-persam`` command.

Each subcommand lives in its own module under ``napari_persam._cli`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable
``func(args) -> int`` (the exit code, see :mod:`napari_persam._cli.common`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Sequence

from napari_persam import __version__
from napari_persam._cli.common import EXIT_BAD_ARGUMENTS
from napari_persam.core.errors import PerSAMWarning

# Subcommand modules, in the order `--help` lists them.
SUBCOMMANDS: tuple[str, ...] = ("learn", "segment", "evaluate", "models")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-persam",
        description="Personalized segmentation with SAM (PerSAM / PerSAM-F): "
        "learn a concept from painted examples and segment it anywhere.",
    )
    parser.add_argument("--version", action="version", version=f"napari-persam {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"napari_persam._cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse exits with code 2 on bad arguments
    if argv is None:
        # Run as the command: this process is ours, so glibc may keep freed memory for
        # reuse (each encoding would otherwise fault its temporaries in afresh).
        # Not when called with arguments from Python: that process is the caller's.
        from napari_persam.core.devices import keep_freed_memory

        keep_freed_memory()
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_BAD_ARGUMENTS
    with warnings.catch_warnings():  # restores the warning printer afterwards
        warnings.showwarning = _plain_warning(warnings.showwarning, args.command)
        return int(args.func(args))


def _plain_warning(previous, command: str):
    """Our own warnings as one line ("napari-persam segment: warning: ..."), others as before."""

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, PerSAMWarning):
            print(f"napari-persam {command}: warning: {message}", file=file or sys.stderr)
        else:
            previous(message, category, filename, lineno, file, line)

    return show


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
