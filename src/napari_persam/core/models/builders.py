"""Building each registry architecture with random weights, and renaming checkpoint keys.

Every builder returns a randomly initialised model in eval mode; loading a
checkpoint into it is :mod:`.loading`'s job.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from segment_anything.modeling import Sam

    from napari_persam.core.models.registry import ModelSpec


def _segment_anything(name: str) -> Sam:
    from segment_anything import sam_model_registry

    from napari_persam.core.models.fast_attention import use_sdpa_attention

    # checkpoint=None: segment_anything's own loader uses a plain torch.load, which
    # can execute pickled code, so checkpoints are loaded by .loading instead.
    sam = sam_model_registry[name](checkpoint=None).eval()
    use_sdpa_attention(sam.image_encoder)  # same weights and keys, fused attention
    return sam


def _mobile_sam() -> Sam:
    from napari_persam.core.models.mobile_sam import build_mobile_sam

    return build_mobile_sam()


def build_architecture(architecture: str) -> Sam:
    """A randomly initialised model of ``architecture`` (a key of :data:`BUILDERS`)."""
    builder = BUILDERS.get(architecture)
    if builder is None:
        raise ValueError(f"Unknown architecture {architecture!r}; one of {', '.join(BUILDERS)}.")
    return builder()


def convert_state(spec: ModelSpec, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with its keys renamed to the modules of ``spec``'s model."""
    if spec.key_layout == "mobile_sam_official":
        from napari_persam.core.models.mobile_sam import official_to_timm_state_dict

        return official_to_timm_state_dict(state)
    return state


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
    from segment_anything.modeling import ImageEncoderViT

    from napari_persam.core.models.assembly import sam_around_encoder
    from napari_persam.core.models.fast_attention import use_sdpa_attention

    patch = 16
    # fork_rng: seeding must not change the caller's global random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = ImageEncoderViT(
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
        )
        use_sdpa_attention(encoder)  # as in the published ViTs
        return sam_around_encoder(
            encoder,
            img_size=img_size,
            grid=img_size // patch,
            prompt_dim=prompt_dim,
            decoder_mlp_dim=256,
            iou_head_hidden_dim=64,
        )


#: Architecture name (``ModelSpec.architecture``) -> builder of a random model of it.
BUILDERS: dict[str, Callable[[], Sam]] = {
    "sam_vit_b": partial(_segment_anything, "vit_b"),
    "sam_vit_l": partial(_segment_anything, "vit_l"),
    "sam_vit_h": partial(_segment_anything, "vit_h"),
    "mobile_sam": _mobile_sam,
    "tiny": build_tiny_sam,
}
