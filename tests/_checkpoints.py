"""Checkpoints the tests write themselves, and registry entries that point at them.

The published checkpoints cannot be downloaded in tests, so a registry entry is
replaced by a stand-in with the same file name: a small SAM built from
segment_anything's own classes (so its keys are exactly the official key names),
its serialized state dict as the "published file", and that file's size and hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from functools import partial

import torch

from napari_persam.core.models import MODEL_REGISTRY, ModelSpec, build_tiny_sam
from napari_persam.core.models.builders import BUILDERS
from napari_persam.core.models.state_dicts import signature_of_model


def checkpoint_bytes(state: dict) -> bytes:
    """``torch.save`` of ``state`` as bytes (the zip format every release uses)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclasses.dataclass
class StandIn:
    """A registry entry replaced for one test, and the file it expects."""

    spec: ModelSpec
    body: bytes
    sam: torch.nn.Module


def stand_in(
    name: str,
    *,
    url: str = "",
    encoder_dim: int = 48,
    encoder_depth: int = 2,
    seed: int = 1,
) -> StandIn:
    """Replace nothing yet: build the stand-in for registry entry ``name``.

    The model is a small ViT SAM (``encoder_dim`` wide, ``encoder_depth`` blocks);
    its builder makes models of that shape with other random weights, so a test
    can tell loaded weights from fresh ones.
    """
    sam = build_tiny_sam(seed=seed, encoder_dim=encoder_dim, encoder_depth=encoder_depth)
    body = checkpoint_bytes(sam.state_dict())
    architecture = register_architecture(
        f"stand-in-{encoder_dim}x{encoder_depth}-{seed}",
        partial(
            build_tiny_sam, seed=seed + 100, encoder_dim=encoder_dim, encoder_depth=encoder_depth
        ),
    )
    spec = dataclasses.replace(
        MODEL_REGISTRY[name],
        architecture=architecture,
        url=url or MODEL_REGISTRY[name].url,
        size=len(body),
        sha256=sha256(body),
        signature=signature_of_model(sam),
    )
    return StandIn(spec=spec, body=body, sam=sam)


def register_architecture(name: str, builder) -> str:
    """Make ``builder`` the builder of architecture ``name`` (a test-only architecture)."""
    BUILDERS[name] = builder
    return name


def weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Whether two models hold the same persistent tensors."""
    state_a, state_b = a.state_dict(), b.state_dict()
    return state_a.keys() == state_b.keys() and all(
        torch.equal(state_a[key].cpu(), state_b[key].cpu()) for key in state_a
    )
