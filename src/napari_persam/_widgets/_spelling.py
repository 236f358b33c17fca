"""How the widgets name the options that core messages point to.

Core messages mark the option that fixes a problem (:func:`napari_persam.core.errors.option`);
the command line spells them as flags (``_cli.common.FLAGS``), the widgets as their
controls, here. A core option without a control of its own is named by the control that
comes closest, with the option's name for scripts.
"""

from __future__ import annotations

from napari_persam.core.errors import render_error

#: How the PerSAM and Evaluate widgets spell the options core messages name.
WIDGET_OPTIONS = {
    "channels": (
        "napari's 'Split Stack' (right-click the image layer) and a one-channel layer in 'image'"
    ),
    "mask_threshold": "a Labels layer holding 0 for background",
    "labels": "a Labels layer with one value per object",
    "targets": "'targets'",
    "out": "another output folder",
    "model": "'model'",
    "label_value": "'label value'",
    "negatives": "the 'negatives' layer",
    "object_cells": "cells per object (scripts: PerSAMConfig.object_cells)",
    "tiling": "'tiling' (advanced options: 'tile size')",
    "max_tiles": "the tile limit (scripts: PerSAMConfig.max_tiles)",
}


def widget_message(error: BaseException) -> str:
    """``error``'s message with options named as the widgets' controls."""
    return render_error(error, WIDGET_OPTIONS)
