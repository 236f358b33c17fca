"""Shared fixtures: small random SAMs, seeded, no downloads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_sam():
    """A seeded two-block random SAM with a 256 px input (16 x 16 feature grid).

    Smaller than SAM's 1024 so each decoder call is cheap on two cores; geometry
    at 1024 is tested on its own. Session-scoped; tests must not modify it (the
    engine only moves it to a device and sets eval mode).
    """
    from napari_persam.core.models import build_tiny_sam

    return build_tiny_sam(seed=0, img_size=256)


@pytest.fixture
def make_tiny_sam():
    """Factory for private tiny SAMs that a test may modify."""
    from napari_persam.core.models import build_tiny_sam

    def make(seed: int = 0, img_size: int = 256):
        return build_tiny_sam(seed=seed, img_size=img_size)

    return make


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; the test skips when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present on this machine")
    return SHARED_DATA
