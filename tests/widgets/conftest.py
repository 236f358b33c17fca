"""Fixtures for widget tests: a viewer with the PerSAM dock widget opened via the manifest."""

from __future__ import annotations

import pytest


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def open_widget(viewer):
    """Open PerSAM through the manifest (as the Plugins menu does), set to the tiny SAM.

    Call it after adding layers or before; the widget's pickers follow the layer list.
    """

    def _open():
        _, widget = viewer.window.add_plugin_dock_widget("napari-persam", "PerSAM")
        widget.model.value = "tiny"
        widget.device.value = "cpu"
        # Tests check plumbing, not quality: keep every piece the random model finds.
        widget.min_object_size.value = 0.0
        return widget

    return _open


@pytest.fixture
def notifications(monkeypatch):
    """Messages shown through napari's notification manager during the test."""
    from napari.utils.notifications import notification_manager

    shown: list[str] = []

    def record(notification):
        shown.append(str(notification.message))

    notification_manager.notification_ready.connect(record)
    yield shown
    notification_manager.notification_ready.disconnect(record)
