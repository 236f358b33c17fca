"""Shared fixtures: small random SAMs, seeded, no downloads."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

# torch's compiler stack (torchvision.ops -> torch._dynamo -> triton) is imported
# before any napari viewer exists: triton's bundled LLVM crashes the process when
# Mesa's libLLVM (loaded by the viewer's OpenGL canvas) is already mapped. The
# plugin guards its own imports (_widgets/_imports.py); tests that import the core
# directly after a viewer would not be guarded otherwise.
import torchvision.ops  # noqa: F401

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _stay_on_this_machine(monkeypatch):
    """No test reaches beyond this machine: only loopback connections are allowed.

    Tests that exercise downloads serve checkpoints from 127.0.0.1 themselves; a
    download that would go to the publishers fails at once with our offline message.
    """
    from tests._http_server import block_internet

    block_internet(monkeypatch, also_allow=(socket.gethostname(), "0.0.0.0", ""))


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Checkpoints and embeddings go to a temporary cache, never the user's."""
    import os

    from napari_persam.core.models.checkpoints import CACHE_ENV

    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("napari-persam-cache"))
    yield
    if previous is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = previous


@pytest.fixture(autouse=True)
def _torch_encoder_by_default(monkeypatch):
    """``encoder_backend="auto"`` means PyTorch in tests, so engines need no ONNX export.

    An export takes seconds even for the tiny model; tests of the runtimes ask for
    them by name (``encoder_backend="openvino"``) or set ``AUTO_ORDER`` themselves.
    """
    from napari_persam.core.models import encoder_runtime

    monkeypatch.setattr(encoder_runtime, "AUTO_ORDER", ())


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
