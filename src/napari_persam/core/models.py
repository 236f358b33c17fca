"""The model registry: building SAM variants, with or without a checkpoint.

Every builder takes ``checkpoint=None`` and then returns a randomly initialised
model (for tests and demos); a checkpoint is loaded with ``weights_only=True``
so loading never runs code from the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from segment_anything.modeling import Sam

DEFAULT_MODEL = "vit_b"
TINY_MODEL = "tiny"


@dataclass(frozen=True)
class ModelSpec:
    """One entry of the registry.

    Attributes
    ----------
    name : str
        Registry key (``"vit_b"``...).
    description : str
        One line for menus and ``napari-persam models list``.
    builder : callable
        ``builder() -> Sam`` returning a randomly initialised model in eval mode.
    """

    name: str
    description: str
    builder: Callable[[], Sam]


def _segment_anything_builder(name: str) -> Sam:
    from segment_anything import sam_model_registry

    # checkpoint=None: segment_anything's own loader uses a plain torch.load, which
    # can execute pickled code, so checkpoints are loaded by load_checkpoint instead.
    return sam_model_registry[name](checkpoint=None)


def build_tiny_sam(
    *,
    seed: int = 0,
    img_size: int = 1024,
    encoder_dim: int = 48,
    encoder_depth: int = 2,
    prompt_dim: int = 256,
) -> Sam:
    """A small randomly initialised SAM for tests, demos and CI (no download).

    Same classes and geometry as the real models (``img_size`` 1024 and 16 px
    patches give the 64x64 feature grid and 256 channels of SAM), but a two-block
    image encoder of width ``encoder_dim`` so one image encodes in well under a
    second on a laptop CPU. Seeded: the same ``seed`` gives the same weights.
    """
    import torch
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    patch = 16
    grid = img_size // patch
    # fork_rng: seeding must not change the caller's global random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = Sam(
            image_encoder=ImageEncoderViT(
                depth=encoder_depth,
                embed_dim=encoder_dim,
                img_size=img_size,
                mlp_ratio=2.0,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                num_heads=2,
                patch_size=patch,
                qkv_bias=True,
                use_rel_pos=True,
                global_attn_indexes=(encoder_depth - 1,),
                window_size=8,
                out_chans=prompt_dim,
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=prompt_dim,
                image_embedding_size=(grid, grid),
                input_image_size=(img_size, img_size),
                mask_in_chans=16,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(
                    depth=2, embedding_dim=prompt_dim, mlp_dim=256, num_heads=8
                ),
                transformer_dim=prompt_dim,
                iou_head_depth=3,
                iou_head_hidden_dim=64,
            ),
            pixel_mean=[123.675, 116.28, 103.53],
            pixel_std=[58.395, 57.12, 57.375],
        )
    return sam.eval()


MODEL_REGISTRY: dict[str, ModelSpec] = {
    "vit_b": ModelSpec(
        "vit_b", "SAM ViT-B (91M parameters; the default)", partial(_segment_anything_builder, "vit_b")
    ),
    "vit_l": ModelSpec(
        "vit_l", "SAM ViT-L (308M parameters)", partial(_segment_anything_builder, "vit_l")
    ),
    "vit_h": ModelSpec(
        "vit_h", "SAM ViT-H (636M parameters; best, slowest)", partial(_segment_anything_builder, "vit_h")
    ),
    TINY_MODEL: ModelSpec(
        TINY_MODEL,
        "Tiny random SAM for tests and demos (no weights, meaningless masks)",
        build_tiny_sam,
    ),
}


def model_names() -> list[str]:
    """Registry keys in menu order."""
    return list(MODEL_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``, or a ValueError listing the known names."""
    try:
        return MODEL_REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"Unknown model {name!r}; choose one of {', '.join(MODEL_REGISTRY)}."
        ) from None


def build_model(
    name: str = DEFAULT_MODEL,
    *,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device | None = "cpu",
) -> Sam:
    """Build model ``name``, load ``checkpoint`` if given, move it to ``device``, eval mode.

    Parameters
    ----------
    name : str
        A registry key, see :func:`model_names`.
    checkpoint : path, optional
        A ``.pth``/``.pt`` state dict in the publisher's key layout. ``None`` gives
        random weights.
    device : str, torch.device or None
        Where the model runs; ``None`` picks the best available device.
    """
    from napari_persam.core.devices import resolve_device

    sam = get_spec(name).builder()
    if checkpoint is not None:
        load_checkpoint(sam, checkpoint, model_name=name)
    return sam.to(resolve_device(device)).eval()


def load_checkpoint(sam: Sam, checkpoint: str | os.PathLike, *, model_name: str = "") -> Sam:
    """Load a state dict into ``sam`` safely and strictly.

    ``torch.load(weights_only=True)`` refuses files that carry pickled objects, so
    a checkpoint can never run code. Keys must match exactly; a mismatch names the
    model and the file so a wrong download is easy to spot.
    """
    import torch

    path = os.fspath(checkpoint)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint {path!r} does not exist.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise ValueError(
            f"Could not load checkpoint {path!r} safely (weights_only=True): {error}. "
            "The file may be truncated, not a PyTorch checkpoint, or contain code; "
            "delete it and download it again."
        ) from error
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    try:
        sam.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(
            f"Checkpoint {path!r} does not fit model {model_name or type(sam).__name__!r}: "
            f"{str(error).splitlines()[0]} Is it the checkpoint of another model?"
        ) from error
    return sam


def iter_load_model(
    name: str = DEFAULT_MODEL,
    *,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
):
    """Build a model ready to run, as a progress generator (for thread workers).

    Yields :class:`~napari_persam.core.progress.Progress` while working (checkpoint
    download progress once the weights module provides downloads) and returns the
    ``Sam`` in eval mode on ``device``.

    Parameters
    ----------
    name : str
        Registry key. ``"tiny"`` needs no checkpoint.
    checkpoint : path, optional
        Weights file used as is. Required for the published models until automatic
        downloads exist.
    device : str, torch.device or None
        ``None`` picks CUDA, then MPS, then CPU.
    """
    from napari_persam.core.progress import Progress

    spec = get_spec(name)
    if checkpoint is None and spec.name != TINY_MODEL:
        raise ValueError(
            f"No checkpoint given for model {name!r}: choose the downloaded .pth file "
            "(for example sam_vit_b_01ec64.pth from the segment-anything release)."
        )
    yield Progress(0, 1, f"loading {name}")
    sam = build_model(name, checkpoint=checkpoint, device=device)
    yield Progress(1, 1, f"loaded {name}")
    return sam
