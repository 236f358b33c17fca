"""ViT blocks on (B, HW, C) tokens while exported: the same encoder, and switched back."""

from __future__ import annotations

import pytest
import torch
from segment_anything.modeling.image_encoder import Block

from napari_persam.core.models import build_tiny_sam, export_child
from napari_persam.core.models.export_child import ExportFailed, export_onnx
from napari_persam.core.models.export_layout import TokenMajorBlock, token_major_blocks


@pytest.mark.parametrize("img_size", [256, 192])  # 192: a 12 x 12 grid, padded to 8 x 8 windows
def test_token_major_blocks_compute_the_same_encoder(img_size):
    sam = build_tiny_sam(seed=1, img_size=img_size).eval()
    encoder = sam.image_encoder
    windows = sorted(block.window_size for block in encoder.blocks)
    assert windows == [0, 8]  # a global block and a windowed one
    pixels = torch.randn(1, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = encoder(pixels)
        with token_major_blocks(encoder) as switched:
            assert switched == 2
            assert all(type(block) is TokenMajorBlock for block in encoder.blocks)
            got = encoder(pixels)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert all(type(block) is Block for block in encoder.blocks)


def test_blocks_are_switched_back_after_an_error_and_others_left_alone():
    class OwnBlock(Block):
        pass

    encoder = build_tiny_sam(seed=1, img_size=256).image_encoder
    encoder.blocks[1].__class__ = OwnBlock
    with pytest.raises(RuntimeError, match="stop"), token_major_blocks(encoder) as switched:
        assert switched == 1
        assert type(encoder.blocks[0]) is TokenMajorBlock
        assert type(encoder.blocks[1]) is OwnBlock
        raise RuntimeError("stop")
    assert type(encoder.blocks[0]) is Block and type(encoder.blocks[1]) is OwnBlock


def test_the_exporter_sees_token_major_blocks(tmp_path, monkeypatch):
    encoder = build_tiny_sam(seed=1, img_size=256).image_encoder.eval()
    seen = []

    def fake_export(module, *args, **kwargs):
        seen.extend(type(block) for block in module.blocks)
        raise RuntimeError("exporter stopped here")

    monkeypatch.setattr(torch.onnx, "export", fake_export)
    monkeypatch.setattr(export_child, "keep_triton_out_beside_system_llvm", lambda: None)
    with pytest.raises(ExportFailed, match="exporter stopped here"):
        export_onnx(encoder, img_size=256, path=tmp_path / "encoder.onnx")
    assert seen == [TokenMajorBlock, TokenMajorBlock]
    assert all(type(block) is Block for block in encoder.blocks)
