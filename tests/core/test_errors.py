"""Error messages written once, with options spelled by each front end."""

from __future__ import annotations

import pytest

from napari_persam.core.errors import OPTIONS, InputError, option, render_error


def test_the_core_spells_options_its_way_and_a_front_end_its_own():
    error = InputError(f"Image has 5 channels; choose them with {option('channels')}.")
    assert str(error) == f"Image has 5 channels; choose them with {OPTIONS['channels']}."
    assert error.render({"channels": "--channels"}) == (
        "Image has 5 channels; choose them with --channels."
    )
    assert error.options == ["channels"]
    assert isinstance(error, ValueError)


def test_braces_in_file_names_are_never_taken_for_options():
    error = InputError(f"Could not read {{weird}}{{channels-x}}.png: {option('out')}")
    text = error.render({"out": "--out"})
    assert text.startswith("Could not read {weird}{channels-x}.png") and text.endswith("--out")


def test_unknown_options_cannot_be_marked():
    with pytest.raises(KeyError, match="unknown option"):
        option("no_such_option")


def test_render_error_handles_any_exception():
    assert render_error(ValueError("plain")) == "plain"
    assert render_error(RuntimeError()) == "RuntimeError"
    error = InputError(f"give {option('mask_threshold')}")
    assert render_error(error, {"mask_threshold": "--mask-threshold"}) == "give --mask-threshold"
