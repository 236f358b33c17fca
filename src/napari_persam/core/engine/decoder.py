"""SAM's mask decoder with PerSAM's target-guided attention and semantic prompt.

PerSAM changes two things inside SAM's two-way transformer:

* target-guided attention: the token-to-image cross-attention of both two-way
  blocks gets ``softmax(softmax(qk / sqrt(d)) + bias)``, the bias being the
  sigmoid of the standardised similarity on the token grid;
* target-semantic prompting: the target embedding is added to the query tokens
  before the transformer and before each block.

The official code forks segment_anything to pass extra arguments through. Here
segment_anything's own ``forward`` functions run on *views*: light objects that
answer attribute look-ups from the real module, except for the few attributes
PerSAM replaces. The ``Sam`` is never modified (no hooks, no patched methods), so it
keeps answering ordinary prompts exactly as before, also from other threads.

Unlike the official code, the per-block addition is done out of place: there,
``queries += target`` on the first block also shifts the query positional
encoding, which is the same tensor.

A decoder built as SAM builds it is computed by :mod:`.lean_decoder`: the same
arithmetic in fewer passes over memory, 0.45x the CPU time of segment_anything's
decoder per call (BENCHMARKS.md). The views remain the reference the tests hold it
to (``force_view``) and the path for any other decoder.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from segment_anything.modeling.mask_decoder import MaskDecoder
from segment_anything.modeling.transformer import TwoWayAttentionBlock, TwoWayTransformer

from napari_persam.core.engine.lean_decoder import lean_path_supported
from napari_persam.core.engine.lean_decoder import predict_masks as lean_predict_masks
from napari_persam.core.engine.low_rank_decoder import ImageBasis, constant_dense
from napari_persam.core.engine.low_rank_decoder import predict_masks as thin_predict_masks
from napari_persam.core.engine.mask_prompts import MaskPrompt


class _View:
    """Stands in for ``module`` inside its class's code, with some attributes replaced."""

    def __init__(self, module: torch.nn.Module, **overrides: Any) -> None:
        self._module = module
        self._overrides = overrides

    def __getattr__(self, name: str) -> Any:
        overrides = self.__dict__["_overrides"]
        if name in overrides:
            return overrides[name]
        return getattr(self.__dict__["_module"], name)


class _BiasedAttention:
    """segment_anything's ``Attention`` with PerSAM's bias: softmax, add, softmax."""

    def __init__(self, attention: torch.nn.Module, bias: torch.Tensor) -> None:
        self.attention = attention
        self.bias = bias  # broadcastable to (B, heads, tokens, image tokens)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        a = self.attention
        q = a._separate_heads(a.q_proj(q), a.num_heads)
        k = a._separate_heads(a.k_proj(k), a.num_heads)
        v = a._separate_heads(a.v_proj(v), a.num_heads)
        attn = (q @ k.permute(0, 1, 3, 2)) / math.sqrt(q.shape[-1])
        attn = torch.softmax(attn, dim=-1)
        attn = torch.softmax(attn + self.bias, dim=-1)
        return a.out_proj(a._recombine_heads(attn @ v))


class _GuidedBlock:
    """One two-way block: queries shifted by the target, cross-attention biased."""

    def __init__(
        self,
        block: torch.nn.Module,
        attn_bias: torch.Tensor | None,
        target: torch.Tensor | None,
    ) -> None:
        overrides = {}
        if attn_bias is not None:
            overrides["cross_attn_token_to_image"] = _BiasedAttention(
                block.cross_attn_token_to_image, attn_bias
            )
        self.view = _View(block, **overrides)
        self.target = target

    def __call__(self, queries, keys, query_pe, key_pe):
        if self.target is not None:
            queries = queries + self.target  # out of place: query_pe stays as it was
        return TwoWayAttentionBlock.forward(
            self.view, queries=queries, keys=keys, query_pe=query_pe, key_pe=key_pe
        )


class _GuidedTransformer:
    def __init__(
        self,
        transformer: torch.nn.Module,
        attn_bias: torch.Tensor | None,
        target: torch.Tensor | None,
    ) -> None:
        layers = [_GuidedBlock(layer, attn_bias, target) for layer in transformer.layers]
        self.view = _View(transformer, layers=layers)
        self.target = target

    def __call__(self, image_embedding, image_pe, point_embedding):
        if self.target is not None:
            # The official decoder adds the target to all tokens (output tokens and
            # prompts) before the transformer; those tokens are also the query PE.
            point_embedding = point_embedding + self.target
        return TwoWayTransformer.forward(self.view, image_embedding, image_pe, point_embedding)


def decode_masks(
    mask_decoder: torch.nn.Module,
    *,
    image_embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    sparse_prompt_embeddings: torch.Tensor,
    dense_prompt_embeddings: torch.Tensor | None,
    multimask_output: bool,
    attn_bias: torch.Tensor | None = None,
    target_embedding: torch.Tensor | None = None,
    force_view: bool = False,
    mask_prompt: MaskPrompt | None = None,
    image_basis: ImageBasis | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run SAM's mask decoder, optionally with PerSAM's guidance.

    Parameters
    ----------
    mask_decoder : segment_anything.modeling.MaskDecoder
    image_embeddings : (1, C, gh, gw) float tensor
    image_pe : (1, C, gh, gw) float tensor
        ``prompt_encoder.get_dense_pe()``.
    sparse_prompt_embeddings : (B, N, C), dense_prompt_embeddings : (B or 1, C, gh, gw)
        From SAM's prompt encoder; B prompts are decoded in one batch. A dense
        embedding of batch 1 (every prompt without a mask input) is shared: the
        transformer's first block then projects the image once for all prompts.
        None when ``mask_prompt`` is given.
    multimask_output : bool
        True gives SAM's three multimask outputs, False its single mask.
    attn_bias : (1, 1, 1, gh * gw) float tensor, optional
        Target-guided attention bias on the token grid (row-major).
    target_embedding : (C,) float tensor, optional
        Target-semantic prompt.
    force_view : bool
        Run through segment_anything's code on views, never the lean decoder (tests
        use it to prove the views reproduce segment_anything exactly, and as the
        reference for the lean decoder).
    mask_prompt : MaskPrompt, optional
        The B prompts' mask inputs before the prompt encoder's last projection
        (:func:`.mask_prompts.factor_mask_prompt`), in place of dense embeddings:
        the lean decoder then projects them at rank 16.
    image_basis : ImageBasis, optional
        :func:`.low_rank_decoder.image_basis` of these ``image_embeddings`` and
        ``image_pe`` for this decoder: every prompt's image tokens are then kept as
        the basis plus a thin part (with ``mask_prompt``, or a ``dense`` embedding
        shared by all prompts and equal at every pixel, as SAM's "no mask" is).

    Returns
    -------
    masks : (B, M, 4 gh, 4 gw) float tensor of low-resolution logits (M = 3 or 1)
    iou_predictions : (B, M) float tensor
    """
    count = sparse_prompt_embeddings.shape[0]
    chosen = slice(1, None) if multimask_output else slice(0, 1)
    target = None if target_embedding is None else target_embedding.reshape(1, 1, -1)
    if image_basis is not None and not force_view:
        basis_of = (image_basis.decoder, image_basis.features, image_basis.image_pe)
        if any(a is not b for a, b in zip(basis_of, (mask_decoder, image_embeddings, image_pe))):
            raise ValueError("image_basis was formed for another decoder, image or encoding")
        dense = None if mask_prompt is not None else constant_dense(dense_prompt_embeddings)
        if mask_prompt is not None or dense is not None:
            return thin_predict_masks(
                image_basis,
                sparse_prompt_embeddings=sparse_prompt_embeddings,
                dense=dense,
                mask_prompt=mask_prompt,
                attn_bias=attn_bias,
                target=target,
                chosen=chosen,
            )
    if not force_view and lean_path_supported(mask_decoder):
        return lean_predict_masks(
            mask_decoder,
            image_embeddings=image_embeddings,
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse_prompt_embeddings,
            dense_prompt_embeddings=dense_prompt_embeddings,
            attn_bias=attn_bias,
            target=target,
            chosen=chosen,
            mask_prompt=mask_prompt,
        )
    if mask_prompt is not None:
        dense_prompt_embeddings = mask_prompt.dense()
    shared = dense_prompt_embeddings.shape[0] == 1
    if shared and not isinstance(mask_decoder, MaskDecoder):
        # A stand-in decoder (tests, other models) gets SAM's own call with every prompt's
        # dense embedding.
        dense_prompt_embeddings = dense_prompt_embeddings.expand(count, -1, -1, -1)
        shared = False
    if attn_bias is None and target_embedding is None and not force_view and not shared:
        return mask_decoder(
            image_embeddings=image_embeddings,
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse_prompt_embeddings,
            dense_prompt_embeddings=dense_prompt_embeddings,
            multimask_output=multimask_output,
        )
    transformer = mask_decoder.transformer
    if attn_bias is not None or target is not None or force_view:
        transformer = _GuidedTransformer(mask_decoder.transformer, attn_bias, target)
    masks, iou_pred = _predict_masks(
        mask_decoder,
        transformer,
        image_embeddings=image_embeddings,
        image_pe=image_pe,
        sparse_prompt_embeddings=sparse_prompt_embeddings,
        dense_prompt_embeddings=dense_prompt_embeddings,
    )
    return masks[:, chosen], iou_pred[:, chosen]


def _predict_masks(
    decoder: torch.nn.Module,
    transformer,
    *,
    image_embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    sparse_prompt_embeddings: torch.Tensor,
    dense_prompt_embeddings: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``MaskDecoder.predict_masks`` with the image side shared while it is the same.

    segment_anything repeats the image embedding and its positional encoding once
    per prompt. When every prompt has the same dense embedding (no mask input),
    the transformer's first block sees one image for all of them: here it gets a
    batch of one, which broadcasts against the B prompts' tokens, so that block's
    image-side projections (the token-to-image keys and values, the image-to-token
    queries) are computed once instead of B times. From the first block's update
    of the image tokens on, everything is per prompt, as in SAM. Same arithmetic
    as ``predict_masks``, in the same order.
    """
    count = sparse_prompt_embeddings.shape[0]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    output_tokens = output_tokens.unsqueeze(0).expand(count, -1, -1)
    tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)
    if dense_prompt_embeddings.shape[0] == 1:
        src = image_embeddings + dense_prompt_embeddings  # (1, C, h, w), shared
        pos_src = image_pe
    else:
        src = torch.repeat_interleave(image_embeddings, count, dim=0) + dense_prompt_embeddings
        pos_src = torch.repeat_interleave(image_pe, count, dim=0)
    _, channels, height, width = src.shape
    hs, src = transformer(src, pos_src, tokens)
    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1 : (1 + decoder.num_mask_tokens), :]
    src = src.expand(count, -1, -1).transpose(1, 2).reshape(count, channels, height, width)
    upscaled = decoder.output_upscaling(src)
    hyper_in = torch.stack(
        [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)],
        dim=1,
    )
    batch, channels, height, width = upscaled.shape
    masks = (hyper_in @ upscaled.view(batch, channels, height * width)).view(
        batch, -1, height, width
    )
    return masks, decoder.iou_prediction_head(iou_token_out)


def attention_bias(similarity_grid: torch.Tensor, valid_cells: torch.Tensor) -> torch.Tensor:
    """PerSAM's target-guided attention bias on the token grid.

    Parameters
    ----------
    similarity_grid : (gh, gw) float tensor
        Cosine similarity of every feature cell to the target.
    valid_cells : (gh, gw) bool tensor
        Cells that hold image rather than only padding.

    Returns
    -------
    (1, 1, 1, gh * gw) float tensor
        ``sigmoid((s - mean) / std)`` with mean and std over the image cells; cells
        of pure padding get 0 so they never attract attention.
    """
    values = similarity_grid[valid_cells]
    std = values.std() if values.numel() > 1 else values.new_tensor(0.0)
    standardised = (similarity_grid - values.mean()) / std.clamp_min(1e-6)
    bias = torch.where(valid_cells, torch.sigmoid(standardised), torch.zeros_like(similarity_grid))
    return bias.reshape(1, 1, 1, -1)
