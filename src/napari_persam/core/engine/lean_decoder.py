"""SAM's mask decoder computed with fewer passes over memory: the same arithmetic.

On a CPU the mask decoder is bound by memory traffic, not by its FLOPs: every
prompt carries its own (4096, 256) image tokens through the two-way transformer
and a (32, 256, 256) upscaled embedding through the output head, and
segment_anything's code makes several full copies of both (BENCHMARKS.md,
"every-instance search"). This module computes what ``MaskDecoder.predict_masks``
computes, with PerSAM's guidance, and changes only how:

* each prompt goes through on its own, as 2-d (pixels, channels) tensors: a
  prompt's 4 MiB of image tokens stay in cache, temporaries stay small enough for
  the allocator to reuse, and every transpose is a 2-d one (torch copies those
  about seven times faster than the (B, C, hw) -> (B, hw, C) one SAM makes);
* ``keys + key_pe`` is formed once per two-way block (SAM forms the same sum twice);
* the image-to-token attention, a softmax over a handful of prompt tokens for each
  of 4096 x 8 rows, is computed transposed, (tokens, pixels) per head, so the
  softmax runs along pixels in memory order, and the output projection is applied
  to each head's few token values before they are mixed (a pixel's output is a mix
  of N values per head): one (hw, heads N) x (heads N, C) product replaces the
  head recombination and the (hw, D) x (D, C) projection;
* the output head is matrix products on the token-major layout, in bands that
  stay in cache (:mod:`.decoder_head`);
* a mask input given in low-rank form (:mod:`.mask_prompts`) makes the first
  block's image-side products a shared part plus a rank-16 part per prompt.

The result equals segment_anything's to float rounding (``tests`` compare both on
random weights). A decoder built in any other way (other module classes or
shapes, :func:`lean_path_supported`) keeps segment_anything's own code.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.mask_decoder import MaskDecoder
from segment_anything.modeling.transformer import (
    Attention,
    TwoWayAttentionBlock,
    TwoWayTransformer,
)

from napari_persam.core.engine.cpu_products import linear, linear_onto
from napari_persam.core.engine.decoder_head import upscale_and_predict
from napari_persam.core.engine.mask_prompts import MaskPrompt

#: Prompts in one call from which :class:`PositionTerms` are formed.
_TERMS_FROM = 4


def lean_path_supported(decoder: torch.nn.Module) -> bool:
    """Whether ``decoder`` is segment_anything's decoder built the way SAM builds it."""
    if type(decoder) is not MaskDecoder or type(decoder.transformer) is not TwoWayTransformer:
        return False
    transformer = decoder.transformer
    if not all(type(layer) is TwoWayAttentionBlock for layer in transformer.layers):
        return False
    attentions = [transformer.final_attn_token_to_image]
    for layer in transformer.layers:
        attentions += [
            layer.self_attn,
            layer.cross_attn_token_to_image,
            layer.cross_attn_image_to_token,
        ]
    return all(type(attention) is Attention for attention in attentions) and (
        _standard_upscaling(decoder.output_upscaling)
    )


def _standard_upscaling(head: torch.nn.Module) -> bool:
    """ConvTranspose2d(2, 2), LayerNorm2d, activation, ConvTranspose2d(2, 2), activation."""
    if not isinstance(head, torch.nn.Sequential) or len(head) != 5:
        return False
    first, norm, _, second, _ = head
    return (
        all(_is_two_by_two_upsampling(conv) for conv in (first, second))
        and type(norm) is LayerNorm2d
    )


def _is_two_by_two_upsampling(conv: torch.nn.Module) -> bool:
    return (
        type(conv) is torch.nn.ConvTranspose2d
        and conv.kernel_size == (2, 2)
        and conv.stride == (2, 2)
        and conv.padding == (0, 0)
        and conv.output_padding == (0, 0)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.bias is not None
    )


def predict_masks(
    decoder: MaskDecoder,
    *,
    image_embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    sparse_prompt_embeddings: torch.Tensor,
    dense_prompt_embeddings: torch.Tensor | None,
    attn_bias: torch.Tensor | None,
    target: torch.Tensor | None,
    chosen: slice,
    mask_prompt: MaskPrompt | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``MaskDecoder.predict_masks`` with PerSAM's guidance, one prompt at a time.

    Parameters
    ----------
    image_embeddings, image_pe : (1, C, h, w)
    sparse_prompt_embeddings : (B, N, C)
    dense_prompt_embeddings : (1 or B, C, h, w), or None with ``mask_prompt``
        A batch of one is every prompt's (no mask input): the first block's
        image-side projections are then computed once for all prompts.
    attn_bias : (1, 1, 1, hw) or None
        Target-guided attention: each block's token-to-image attention becomes
        ``softmax(softmax(qk / sqrt(d)) + bias)``.
    target : (1, 1, C) or None
        Target-semantic prompt: added to every token before the transformer (so it
        is part of the query positional encoding, as in PerSAM) and to the queries
        before each block.
    chosen : slice of the mask outputs wanted (SAM's single mask, or the three).
    mask_prompt : the B prompts' mask inputs in low-rank form, instead of dense
        embeddings: the first block's image side is then a shared product plus a
        rank-r one per prompt (:class:`_LowRankImage`).

    Returns
    -------
    masks (B, M, 4h, 4w) and iou_predictions (B, M), M the chosen outputs.
    """
    count = sparse_prompt_embeddings.shape[0]
    height, width = image_embeddings.shape[-2:]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat(
        (output_tokens.unsqueeze(0).expand(count, -1, -1), sparse_prompt_embeddings), dim=1
    )
    key_pe = token_major(image_pe[0])
    first = decoder.transformer.layers[0]
    low_rank = shared_keys = shared_side = None
    if mask_prompt is not None:
        image = token_major(image_embeddings[0])
        low_rank = _LowRankImage(first, image, key_pe, mask_prompt, share=count > 1)
    elif dense_prompt_embeddings is not None and dense_prompt_embeddings.shape[0] == 1:
        # With one dense embedding for all, the image tokens and the first block's
        # image-side projections are the same for every prompt: formed once.
        shared_keys = token_major(image_embeddings[0] + dense_prompt_embeddings[0])
        shared_side = image_side(first, shared_keys, key_pe)
    # Forming the positional terms costs three of the products they save a pass for;
    # the first block's are not needed when its image side is already shared.
    first_known = shared_side is not None or (low_rank is not None and bool(low_rank.shared))
    terms = None
    if count >= _TERMS_FROM:
        terms = PositionTerms.of(decoder.transformer, key_pe, skip_first=first_known)
    indices = range(decoder.num_mask_tokens)[chosen]
    masks, ious = [], []
    for b in range(count):  # one prompt at a time: its image tokens stay in cache
        if low_rank is not None:
            keys, side = low_rank.prompt(b)
        elif shared_keys is not None:
            keys, side = shared_keys, shared_side
        else:
            keys = token_major(image_embeddings[0] + dense_prompt_embeddings[b])
            side = None
        queries, keys = two_way_transformer(
            decoder.transformer,
            keys,
            key_pe,
            tokens[b : b + 1],
            attn_bias=attn_bias,
            target=target,
            first_side=side,
            terms=terms,
        )
        hyper_in = torch.stack(
            [decoder.output_hypernetworks_mlps[i](queries[0, 1 + i]) for i in indices]
        )
        masks.append(upscale_and_predict(decoder, keys, (height, width), hyper_in))
        ious.append(decoder.iou_prediction_head(queries[0, 0])[chosen])
    return torch.stack(masks), torch.stack(ious)


class _LowRankImage:
    """The image tokens and first-block projections of prompts whose dense part has rank r.

    With ``dense = W f + c`` (``f`` the prompt's (hw, r) mask features), the image
    tokens ``image + dense`` and each first-block product ``P (image + dense [+ pe]) + p``
    are a part shared by all prompts plus ``f (P W)^T``: (hw, r) x (r, D) per prompt
    instead of (hw, C) x (C, D). For a single prompt the shared part would cost as
    much as the products it replaces (a fifth more CPU time per call, measured), so
    then only the image tokens are formed this way (the 1 x 1 convolution as a
    product) and the block projects them itself.
    """

    def __init__(
        self,
        layer: TwoWayAttentionBlock,
        image: torch.Tensor,
        key_pe: torch.Tensor,
        mask_prompt: MaskPrompt,
        share: bool,
    ) -> None:
        matrix, offset = mask_prompt.matrix(), mask_prompt.projection.bias  # (C, r), (C,)
        self.features = mask_prompt.features
        self.keys = image + offset  # the image tokens of a prompt whose features are 0
        self.factors = [matrix]  # each as a (D, r) weight: keys, then the projections
        self.shared: list[torch.Tensor] = []
        if not share:
            return
        keyed = self.keys + key_pe
        projections = (
            (layer.cross_attn_token_to_image.k_proj, keyed),
            (layer.cross_attn_token_to_image.v_proj, self.keys),
            (layer.cross_attn_image_to_token.q_proj, keyed),
        )
        self.shared = [linear(x, p.weight, p.bias) for p, x in projections]
        self.factors += [p.weight @ matrix for p, _ in projections]

    def prompt(self, b: int) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Prompt ``b``'s image tokens (hw, C) and first-block (k, v, image q) projections.

        The projections are None when not shared: the block forms them.
        """
        features = token_major(self.features[b])  # (hw, r)
        keys, *side = (
            linear_onto(base, features, factor, None)
            for base, factor in zip([self.keys, *self.shared], self.factors)
        )
        return keys, tuple(side) if side else None


def token_major(image: torch.Tensor) -> torch.Tensor:
    """(C, h, w) -> contiguous (hw, C); a 2-d transpose, which torch copies fast."""
    return image.reshape(image.shape[0], -1).t().contiguous()


def two_way_transformer(
    transformer: TwoWayTransformer,
    keys: torch.Tensor,
    key_pe: torch.Tensor,
    point_embedding: torch.Tensor,
    *,
    attn_bias: torch.Tensor | None,
    target: torch.Tensor | None,
    first_side: tuple[torch.Tensor, ...] | None = None,
    terms: PositionTerms | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``TwoWayTransformer.forward`` for one prompt, image tokens token-major.

    ``keys`` and ``key_pe`` are (hw, C), ``point_embedding`` (1, N, C).
    ``first_side``: the first block's :func:`image_side` of these keys when already
    known; ``terms``: :class:`PositionTerms` of ``key_pe``, when formed. Returns
    queries (1, N, C) and keys (hw, C).
    """
    query_pe = point_embedding if target is None else point_embedding + target
    queries = query_pe
    for index, layer in enumerate(transformer.layers):
        if target is not None:
            queries = queries + target
        side = first_side if index == 0 else None
        block_terms = None if terms is None else terms.blocks[index]
        queries, keys = _block(layer, queries, keys, query_pe, key_pe, attn_bias, side, block_terms)
    final = transformer.final_attn_token_to_image
    k_proj = _keyed(final.k_proj, keys, key_pe, None if terms is None else terms.final)
    v_proj = linear(keys, final.v_proj.weight, final.v_proj.bias)
    attention = token_to_image(final, queries + query_pe, k_proj, v_proj, None)
    return transformer.norm_final_attn(queries + attention), keys


class PositionTerms(NamedTuple):
    """The positional encoding's share of the image-side products, for many prompts.

    ``P (keys + pe) + p`` is ``P keys + (P pe + p)``: with the bracket formed once
    per call, each prompt's product accumulates onto it and the (hw, C) sum
    ``keys + pe`` is never formed (a pass over 4 MiB costs about two thirds of one
    of these products on a CPU whose memory is the limit).
    """

    blocks: list[tuple[torch.Tensor, torch.Tensor] | None]  # each block's (k, i2t q)
    final: torch.Tensor  # the final token-to-image attention's k

    @classmethod
    def of(
        cls, transformer: TwoWayTransformer, key_pe: torch.Tensor, *, skip_first: bool
    ) -> PositionTerms:
        """``skip_first``: the first block's image side is given, its terms left None."""
        blocks: list[tuple[torch.Tensor, torch.Tensor] | None] = [
            None
            if index == 0 and skip_first
            else (
                _project(layer.cross_attn_token_to_image.k_proj, key_pe),
                _project(layer.cross_attn_image_to_token.q_proj, key_pe),
            )
            for index, layer in enumerate(transformer.layers)
        ]
        return cls(blocks, _project(transformer.final_attn_token_to_image.k_proj, key_pe))


def _project(projection: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return linear(x, projection.weight, projection.bias)


def _keyed(projection: torch.nn.Linear, keys, key_pe, term) -> torch.Tensor:
    """``projection(keys + key_pe)``, from its positional term when given."""
    if term is None:
        return _project(projection, keys + key_pe)
    return linear_onto(term, keys, projection.weight, None)


def image_side(layer: TwoWayAttentionBlock, keys: torch.Tensor, key_pe: torch.Tensor, terms=None):
    """A block's products of the image tokens: token-to-image k and v, image-to-token q.

    ``terms``: the block's pair of :class:`PositionTerms`, or None to form ``keys + key_pe``.
    """
    t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    v_proj = _project(t2i.v_proj, keys)
    if terms is None:
        k = keys + key_pe  # SAM forms this sum twice; keys do not change in between
        return _project(t2i.k_proj, k), v_proj, _project(i2t.q_proj, k)
    k_term, q_term = terms
    return (
        linear_onto(k_term, keys, t2i.k_proj.weight, None),
        v_proj,
        linear_onto(q_term, keys, i2t.q_proj.weight, None),
    )


def _block(layer, queries, keys, query_pe, key_pe, attn_bias, side, terms):
    """``TwoWayAttentionBlock.forward``; ``side``: its :func:`image_side`, if known."""
    k_proj, v_proj, image_q = image_side(layer, keys, key_pe, terms) if side is None else side
    queries = block_tokens(layer, queries, query_pe, k_proj, v_proj, attn_bias)
    attention = layer.cross_attn_image_to_token
    mix, values = image_to_token_mix(attention, image_q, queries + query_pe, queries)
    keys = linear_onto(keys, mix, values.t(), None)  # one pass over (hw, C), not three
    return queries, layer.norm4(keys)


def block_tokens(layer, queries, query_pe, k_proj, v_proj, attn_bias) -> torch.Tensor:
    """A block's prompt-token half: self-attention, attention to the image, MLP.

    ``k_proj``, ``v_proj``: the block's token-to-image keys and values of the image.
    """
    if layer.skip_first_layer_pe:
        queries = layer.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + query_pe
        queries = queries + layer.self_attn(q=q, k=q, v=queries)
    queries = layer.norm1(queries)
    attention = layer.cross_attn_token_to_image
    attention = token_to_image(attention, queries + query_pe, k_proj, v_proj, attn_bias)
    queries = layer.norm2(queries + attention)
    return layer.norm3(queries + layer.mlp(queries))


def token_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(1, N, D) -> (heads, N, D / heads)."""
    return x[0].view(x.shape[1], heads, -1).transpose(0, 1)


def token_to_image(attention, q, k_proj, v_proj, attn_bias):
    """Prompt tokens (1, N, C) attend to the image; PerSAM's bias when given."""
    heads = attention.num_heads
    pixels, depth = k_proj.shape
    qh = token_heads(attention.q_proj(q), heads)  # (heads, N, d)
    kh = k_proj.view(pixels, heads, -1).permute(1, 2, 0)  # (heads, d, hw), read in place
    vh = v_proj.view(pixels, heads, -1).transpose(0, 1)  # (heads, hw, d)
    weights = torch.softmax(torch.matmul(qh, kh) / math.sqrt(depth // heads), dim=-1)
    if attn_bias is not None:
        weights = torch.softmax(weights + attn_bias.reshape(1, 1, -1), dim=-1)
    out = torch.matmul(weights, vh).transpose(0, 1).reshape(1, q.shape[1], depth)
    return attention.out_proj(out)


def image_to_token_mix(attention, image_q, k, v) -> tuple[torch.Tensor, torch.Tensor]:
    """The image tokens' attention to the prompt tokens as ``mix @ values``, (hw, C).

    The scores are formed as (tokens, pixels) per head, so the softmax over the few
    tokens runs along contiguous pixels. The output projection is applied to each
    head's token values before mixing (a pixel's output is a mix of N projected
    values per head): ``mix`` (hw, heads N) holds the weights, ``values`` (heads N, C)
    the projected values. The projection's bias is folded into the values (each
    head's weights sum to 1, so adding ``bias / heads`` to every value adds ``bias``).
    """
    heads = attention.num_heads
    pixels, depth = image_q.shape
    kh = token_heads(attention.k_proj(k), heads)  # (heads, N, d)
    vh = token_heads(attention.v_proj(v), heads)
    qh = image_q.view(pixels, heads, -1).permute(1, 2, 0)  # (heads, d, hw)
    scores = torch.matmul(kh, qh).div_(math.sqrt(depth // heads))  # SAM's q k^T, transposed
    weights = torch.softmax(scores, dim=-2)  # over the prompt tokens
    out_weight = attention.out_proj.weight  # (C, D)
    values = torch.matmul(vh, out_weight.t().reshape(heads, depth // heads, -1))  # (heads, N, C)
    values = values.add_(attention.out_proj.bias / heads).reshape(-1, out_weight.shape[0])
    return weights.reshape(-1, pixels).t().contiguous(), values  # formed once, read twice
