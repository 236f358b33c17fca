"""The widgets name the controls that fix a problem, not the Python options."""

from __future__ import annotations

import numpy as np

from napari_persam._widgets._spelling import WIDGET_OPTIONS, widget_message
from napari_persam.core.errors import OPTIONS, InputError, option
from tests.widgets._helpers import run_and_wait, squares


def test_every_option_a_core_message_may_name_has_a_widget_spelling() -> None:
    assert set(WIDGET_OPTIONS) == set(OPTIONS)


def test_a_core_message_names_the_widget_control() -> None:
    error = InputError(f"The image needs too many tiles; raise {option('max_tiles')}.")
    assert widget_message(error) == (
        "The image needs too many tiles; raise the tile limit (scripts: PerSAMConfig.max_tiles)."
    )
    assert widget_message(ValueError("plain")) == "plain"


def test_a_concept_of_another_model_names_the_model_control(
    viewer, open_widget, qtbot, tmp_path
) -> None:
    viewer.add_image(squares((32, 32)), name="img")
    reference = np.zeros((32, 32), np.uint8)
    reference[4:12, 4:12] = 1
    viewer.add_labels(reference, name="ref")
    widget = open_widget()
    run_and_wait(qtbot, widget)
    path = widget.export_concept(tmp_path / "tiny.npz")

    widget.model.value = "vit_b"  # refused before any model is loaded or downloaded
    widget.load_concept(path)
    run_and_wait(qtbot, widget)
    assert "Use 'model' 'tiny'" in widget.status.value, widget.status.value
    assert "Use the model" not in widget.status.value
