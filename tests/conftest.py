"""Shared fixtures: small random SAMs, seeded, no downloads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_sam():
    """A seeded two-block random SAM with the real 1024 / 64x64 geometry.

    Session-scoped because building it costs ~0.1 s; tests must not modify it
    (the engine only moves it to a device and sets eval mode).
    """
    from napari_persam.core.models import build_tiny_sam

    return build_tiny_sam(seed=0)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; the test skips when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present on this machine")
    return SHARED_DATA
