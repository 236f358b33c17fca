"""MobileSAM (vit_t): timm's TinyViT in MobileSAM's layout, loading official checkpoints."""

from __future__ import annotations

import dataclasses
from functools import partial

import pytest
import torch

from napari_persam.core.models import MODEL_REGISTRY, build_model, iter_load_model
from napari_persam.core.models.builders import BUILDERS
from napari_persam.core.models.mobile_sam import (
    TinyViTImageEncoder,
    build_mobile_sam,
    official_to_timm_key,
    official_to_timm_state_dict,
)
from napari_persam.core.models.state_dicts import encoder_signature
from napari_persam.core.progress import run
from tests._checkpoints import checkpoint_bytes, sha256
from tests._http_server import LoopbackServer, block_internet
from tests._mobile_sam_reference import official_encoder_shapes, official_encoder_state

# A narrow MobileSAM with the real stage structure, so tests stay fast.
SMALL = {
    "embed_dims": (16, 32, 40, 48),
    "depths": (1, 1, 2, 1),
    "num_heads": (1, 2, 2, 2),
    "window_sizes": (7, 7, 14, 7),
}


@pytest.fixture(scope="module")
def real_mobile_sam():
    return build_mobile_sam()


def test_key_mapping_moves_downsampling_to_the_next_stage():
    assert official_to_timm_key("layers.0.downsample.conv2.c.weight") == (
        "stages.1.downsample.conv2.conv.weight"
    )
    assert official_to_timm_key("layers.2.downsample.conv3.bn.running_var") == (
        "stages.3.downsample.conv3.bn.running_var"
    )
    assert official_to_timm_key("layers.2.blocks.5.local_conv.c.weight") == (
        "stages.2.blocks.5.local_conv.conv.weight"
    )
    assert official_to_timm_key("layers.0.blocks.1.conv1.bn.bias") == (
        "stages.0.blocks.1.conv1.bn.bias"
    )
    assert official_to_timm_key("patch_embed.seq.2.c.weight") == "patch_embed.conv2.conv.weight"
    assert official_to_timm_key("neck.3.bias") == "neck.3.bias"
    assert official_to_timm_key("head.weight") is None
    assert official_to_timm_key("norm_head.bias") is None
    assert official_to_timm_key("layers.1.blocks.0.attn.attention_bias_idxs") is None


def test_official_layout_has_exactly_our_keys_and_shapes(real_mobile_sam):
    """Every official tensor lands on an encoder tensor of the same shape, and vice versa."""
    official = official_encoder_shapes()
    mapped = {
        official_to_timm_key(key): shape
        for key, shape in official.items()
        if official_to_timm_key(key) is not None
    }
    ours = {
        key: tuple(value.shape) for key, value in real_mobile_sam.image_encoder.state_dict().items()
    }
    assert mapped == ours


def test_small_official_checkpoint_loads_strictly_into_the_right_modules():
    encoder = TinyViTImageEncoder(**SMALL)
    official = official_encoder_state(seed=3, **SMALL)
    converted = official_to_timm_state_dict(official, prefix="")
    encoder.load_state_dict(converted, strict=True)
    # Spot checks: the downsampling at the end of official stage 0 is timm's stage 1's start.
    torch.testing.assert_close(
        encoder.stages[1].downsample.conv1.conv.weight,
        official["layers.0.downsample.conv1.c.weight"],
    )
    torch.testing.assert_close(
        encoder.stages[2].blocks[1].attn.attention_biases,
        official["layers.2.blocks.1.attn.attention_biases"],
    )
    torch.testing.assert_close(encoder.neck[2].weight, official["neck.2.weight"])


def test_last_downsampling_keeps_the_resolution_so_1024_gives_64x64():
    encoder = TinyViTImageEncoder(**SMALL).eval()
    assert encoder.img_size == 1024
    assert encoder.stages[-1].downsample.conv2.conv.stride == (1, 1)
    assert encoder.stages[1].downsample.conv2.conv.stride == (2, 2)
    with torch.inference_mode():
        out = encoder(torch.zeros(1, 3, 1024, 1024))
    assert tuple(out.shape) == (1, 256, 64, 64)


def test_signature_is_the_same_in_both_layouts(real_mobile_sam):
    official = {"image_encoder." + k: v for k, v in official_encoder_state(seed=0).items()}
    assert encoder_signature(official) == "TinyViT, widths 64-128-160-320"
    assert encoder_signature(real_mobile_sam.state_dict()) == "TinyViT, widths 64-128-160-320"


@pytest.mark.slow
def test_official_vit_t_checkpoint_file_loads_and_encodes(tmp_path, real_mobile_sam):
    """A whole mobile_sam.pt in the official layout: strict load, then a real 1024 forward."""
    official = {"image_encoder." + k: v for k, v in official_encoder_state(seed=7).items()}
    for key, value in real_mobile_sam.state_dict().items():
        if not key.startswith("image_encoder."):
            official[key] = value.clone()
    path = tmp_path / "mobile_sam.pt"
    torch.save(official, path)

    sam = build_model("vit_t", checkpoint=path, device="cpu")

    assert sam.image_encoder.img_size == 1024
    torch.testing.assert_close(
        sam.image_encoder.stages[3].downsample.conv2.conv.weight,
        official["image_encoder.layers.2.downsample.conv2.c.weight"],
    )
    torch.testing.assert_close(
        sam.mask_decoder.iou_prediction_head.layers[0].weight,
        official["mask_decoder.iou_prediction_head.layers.0.weight"],
    )
    with torch.inference_mode():
        features = sam.image_encoder(torch.zeros(1, 3, 1024, 1024))
    assert tuple(features.shape) == (1, 256, 64, 64)
    assert torch.isfinite(features).all()


def test_vit_t_is_downloaded_verified_and_converted_end_to_end(tmp_path, monkeypatch):
    """iter_load_model("vit_t") with a small MobileSAM in the official layout, served locally."""
    block_internet(monkeypatch)
    small = build_mobile_sam(**SMALL)
    official = {"image_encoder." + k: v for k, v in official_encoder_state(seed=5, **SMALL).items()}
    official.update(
        {k: v for k, v in small.state_dict().items() if not k.startswith("image_encoder.")}
    )
    body = checkpoint_bytes(official)
    with LoopbackServer() as server:
        monkeypatch.setitem(BUILDERS, "small-mobile-sam", partial(build_mobile_sam, **SMALL))
        spec = dataclasses.replace(
            MODEL_REGISTRY["vit_t"],
            architecture="small-mobile-sam",
            url=server.add("mobile_sam.pt", body),
            size=len(body),
            sha256=sha256(body),
            signature="TinyViT, widths 16-32-40-48",
        )
        monkeypatch.setitem(MODEL_REGISTRY, "vit_t", spec)
        sam = run(iter_load_model("vit_t", device="cpu", cache_dir=tmp_path))
    assert (tmp_path / "mobile_sam.pt").read_bytes() == body
    torch.testing.assert_close(
        sam.image_encoder.patch_embed.conv1.conv.weight,
        official["image_encoder.patch_embed.seq.0.c.weight"],
    )
