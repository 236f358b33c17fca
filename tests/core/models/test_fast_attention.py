"""SDPA attention answers as segment_anything's own Attention, slab by slab or whole."""

from __future__ import annotations

import copy

import pytest
import torch
from segment_anything.modeling.image_encoder import Attention

from napari_persam.core.models import fast_attention
from napari_persam.core.models.fast_attention import SdpaAttention, use_sdpa_attention


def _pair(*, rel_pos: bool, size: tuple[int, int]) -> tuple[Attention, Attention]:
    torch.manual_seed(0)
    own = Attention(64, num_heads=4, qkv_bias=True, use_rel_pos=rel_pos, input_size=size)
    if rel_pos:  # segment_anything starts them at zero; random values test the bias
        torch.nn.init.normal_(own.rel_pos_h, std=0.5)
        torch.nn.init.normal_(own.rel_pos_w, std=0.5)
    fast = copy.deepcopy(own)
    assert use_sdpa_attention(fast) == 1 and type(fast) is SdpaAttention
    return own.eval(), fast.eval()


@pytest.mark.parametrize("rel_pos", [True, False])
@pytest.mark.parametrize("size", [(8, 8), (6, 10)])
def test_sdpa_attention_equals_segment_anythings(rel_pos, size):
    own, fast = _pair(rel_pos=rel_pos, size=size)
    tokens = torch.randn(2, *size, 64)
    with torch.inference_mode():
        torch.testing.assert_close(fast(tokens), own(tokens), rtol=0, atol=1e-5)


def test_the_bias_in_slabs_of_query_rows_gives_the_same_answer(monkeypatch):
    own, fast = _pair(rel_pos=True, size=(6, 10))
    tokens = torch.randn(2, 6, 10, 64)
    # 2 x 4 heads x 60 keys per query row: 7 rows per slab, the last slab shorter.
    monkeypatch.setattr(fast_attention, "MASK_ELEMENTS", 2 * 4 * 60 * 7)
    with torch.inference_mode():
        torch.testing.assert_close(fast(tokens), own(tokens), rtol=0, atol=1e-5)


def test_a_sam_of_the_user_s_keeps_its_own_attention(make_tiny_sam):
    from napari_persam.core.engine.persam import PerSAM

    sam = make_tiny_sam()
    for module in sam.modules():  # as segment_anything builds it
        if type(module) is SdpaAttention:
            module.__class__ = Attention
    before = [type(module) for module in sam.modules()]
    PerSAM(sam, device="cpu")
    assert [type(module) for module in sam.modules()] == before
