"""segment_anything's ViT attention through ``F.scaled_dot_product_attention``, exactly.

SAM's ``Attention`` (image encoder) forms the full attention matrix, adds the
decomposed relative-position bias to it and applies a softmax: for a global block of
ViT-B that is 12 x 4096 x 4096 floats (805 MB) several times over, per block. The
same arithmetic with the bias as SDPA's float ``attn_mask`` lets PyTorch run its
fused kernel (flash attention on CPUs and GPUs), which never forms the matrix.

The bias is built for a slab of query rows at a time, so no temporary grows past
:data:`MASK_ELEMENTS` floats however large the image: no giant allocation to be
mapped and unmapped by the C library on every call.

:class:`SdpaAttention` subclasses segment_anything's ``Attention`` and adds no
state: the models we build (:mod:`.builders`) get it through
:func:`use_sdpa_attention`, with the same parameters and checkpoint keys. A ``Sam``
a user builds or passes in keeps its own modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, get_rel_pos

#: Largest bias slab, in elements (8 MiB of float32).
MASK_ELEMENTS = 2 * 1024 * 1024


def _is_exporting() -> bool:
    """``torch.compiler.is_exporting()``, which torch has only since 2.6 (we allow 2.1)."""
    probe = getattr(torch.compiler, "is_exporting", None)
    return bool(probe()) if probe is not None else False


class SdpaAttention(Attention):
    """segment_anything's ``Attention`` computed with SDPA (same result to float rounding)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) tokens -> (B, H, W, C), as ``Attention.forward``."""
        if _is_exporting() or torch.onnx.is_in_onnx_export():
            # ONNX export: SAM's own formulation. The exporter's decomposition of SDPA
            # breaks on its output layout, and the runtimes fuse attention themselves.
            return super().forward(x)
        batch, height, width, _ = x.shape
        heads = self.num_heads
        tokens = height * width
        qkv = self.qkv(x).reshape(batch, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, L, d) each
        if not self.use_rel_pos:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = _attention_with_rel_pos(q, k, v, self.rel_pos_h, self.rel_pos_w, (height, width))
        # (B, heads, L, d) -> (B, H, W, heads * d); reshape, not view: SDPA's output
        # may be laid out as (B, L, heads, d) in memory.
        out = out.transpose(1, 2).reshape(batch, height, width, -1)
        return self.proj(out)


def _attention_with_rel_pos(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    size: tuple[int, int],
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + rel_h + rel_w) v, slab by slab of query rows.

    Same terms as segment_anything's ``add_decomposed_rel_pos``: ``rel_h[i, kh]`` is
    the query ``q_i`` against the height embedding of the offset between query row
    and key row, ``rel_w`` the same for columns.
    """
    batch, heads, tokens, dim = q.shape
    height, width = size
    rh = get_rel_pos(height, height, rel_pos_h)  # (H, H, d)
    rw = get_rel_pos(width, width, rel_pos_w)  # (W, W, d)
    grid = q.reshape(batch * heads, height, width, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", grid, rh).reshape(batch, heads, tokens, height)
    rel_w = torch.einsum("bhwc,wkc->bhwk", grid, rw).reshape(batch, heads, tokens, width)
    rows = max(1, MASK_ELEMENTS // max(1, batch * heads * tokens))
    if rows >= tokens:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=_bias(rel_h, rel_w, q.dtype))
    out = torch.empty_like(q)
    for start in range(0, tokens, rows):
        stop = min(tokens, start + rows)
        mask = _bias(rel_h[:, :, start:stop], rel_w[:, :, start:stop], q.dtype)
        out[:, :, start:stop] = F.scaled_dot_product_attention(
            q[:, :, start:stop], k, v, attn_mask=mask
        )
    return out


def _bias(rel_h: torch.Tensor, rel_w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, heads, n, kh) and (B, heads, n, kw) -> the (B, heads, n, kh * kw) float mask."""
    batch, heads, rows, key_h = rel_h.shape
    key_w = rel_w.shape[-1]
    mask = rel_h[..., :, None] + rel_w[..., None, :]
    return mask.reshape(batch, heads, rows, key_h * key_w).to(dtype)


def use_sdpa_attention(module: torch.nn.Module) -> int:
    """Switch every segment_anything ``Attention`` inside ``module`` to :class:`SdpaAttention`.

    Only for models this package builds: the class is swapped in place (it adds no
    state, so parameters, buffers and state-dict keys stay as they are). Returns
    how many modules were switched.
    """
    switched = 0
    for child in module.modules():
        if type(child) is Attention:
            child.__class__ = SdpaAttention
            switched += 1
    return switched
