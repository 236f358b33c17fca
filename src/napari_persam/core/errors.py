"""Errors about what the user gave, worded so each front end can name its own options.

The core is used from Python, from the napari widget and from the command line, and
each names an option differently (``channels=(0,)``, a checkbox, ``--channels``). A
message that tells the user which option to change is written once, with the
option as a marker made by :func:`option` (``f"... choose them with {option('channels')}"``).
``str(error)`` spells the option the core's way; a front end calls
:meth:`InputError.render` with its own spelling (the command line's flags).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

#: The options a message may name, and how the core (Python) spells them.
OPTIONS: dict[str, str] = {
    "channels": "channels=(i,) or (r, g, b) (PerSAMConfig.channels)",
    "mask_threshold": "mask_threshold",
    "labels": "labels=True",
    "targets": "the targets",
    "out": "another output folder",
    "model": "the model",
    "label_value": "the label value",
    "negatives": "the negatives (learn(..., negatives=...))",
    "object_cells": "object_cells (PerSAMConfig.object_cells)",
    "tiling": "tiling (PerSAMConfig.tiling)",
    "max_tiles": "max_tiles (PerSAMConfig.max_tiles)",
}

_MARKER = re.compile(r"\{([a-z_]+)\}")


def option(name: str) -> str:
    """The marker of option ``name`` in an :class:`InputError` message."""
    if name not in OPTIONS:
        raise KeyError(f"unknown option {name!r}; add it to napari_persam.core.errors.OPTIONS")
    return "{" + name + "}"


class InputError(ValueError):
    """Bad input, with the options that fix it marked by :func:`option` in the message.

    Only markers of :data:`OPTIONS` are replaced, so file names or values in the
    message are never misread as markers.
    """

    def __init__(self, message: str) -> None:
        self.template = message
        super().__init__(self.render())

    @property
    def options(self) -> list[str]:
        """The option names the message refers to."""
        return [name for name in _MARKER.findall(self.template) if name in OPTIONS]

    def render(self, spelling: Mapping[str, str] | None = None) -> str:
        """The message with each option spelled as ``spelling`` says (default: the core's)."""
        names = {**OPTIONS, **(spelling or {})}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            return names[name] if name in OPTIONS else match.group(0)

        return _MARKER.sub(replace, self.template)


class PerSAMWarning(UserWarning):
    """Something the user should know that does not stop the work (front ends show it plainly)."""


def render_error(error: BaseException, spelling: Mapping[str, str] | None = None) -> str:
    """``error``'s message, with options spelled per ``spelling`` when it is an InputError."""
    if isinstance(error, InputError):
        return error.render(spelling)
    return str(error) or type(error).__name__
