"""Fixtures of the engine's tests."""

from __future__ import annotations

import pytest

from napari_persam.core.engine.geometry import SamGeometry


@pytest.fixture
def formed_masks(monkeypatch) -> list[int]:
    """A list that grows by one each time ``SamGeometry.mask_from_logits`` forms a mask."""
    formed: list[int] = []
    original = SamGeometry.mask_from_logits

    def counting(self, logits, threshold=0.0):
        formed.append(1)
        return original(self, logits, threshold)

    monkeypatch.setattr(SamGeometry, "mask_from_logits", counting)
    return formed
