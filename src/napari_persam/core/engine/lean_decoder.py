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
* the output head's two 2 x 2, stride-2 transposed convolutions are matrix
  products on the token-major layout (each cell writes its own 2 x 2 block, so a
  transposed convolution of this kind is exactly a product with the kernel laid
  out as a matrix); LayerNorm2d is one ``layer_norm`` on those rows, and the
  hypernetwork product runs before the only rearrangement into pixels, on the
  chosen 1 or 3 masks instead of 32 channels.

The result equals segment_anything's to float rounding (``tests`` compare both on
random weights). A decoder built in any other way (other module classes or
shapes, :func:`lean_path_supported`) keeps segment_anything's own code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.mask_decoder import MaskDecoder
from segment_anything.modeling.transformer import (
    Attention,
    TwoWayAttentionBlock,
    TwoWayTransformer,
)


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
    dense_prompt_embeddings: torch.Tensor,
    attn_bias: torch.Tensor | None,
    target: torch.Tensor | None,
    chosen: slice,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``MaskDecoder.predict_masks`` with PerSAM's guidance, one prompt at a time.

    Parameters
    ----------
    image_embeddings, image_pe : (1, C, h, w)
    sparse_prompt_embeddings : (B, N, C)
    dense_prompt_embeddings : (1 or B, C, h, w)
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
    key_pe = _token_major(image_pe[0])
    shared = dense_prompt_embeddings.shape[0] == 1
    # With one dense embedding for all, the image tokens and the first block's
    # image-side projections are the same for every prompt: formed once.
    shared_keys = _token_major(image_embeddings[0] + dense_prompt_embeddings[0]) if shared else None
    first_block: dict[str, torch.Tensor] = {}
    indices = range(decoder.num_mask_tokens)[chosen]
    masks, ious = [], []
    for b in range(count):  # one prompt at a time: its image tokens stay in cache
        keys = shared_keys
        if keys is None:
            keys = _token_major(image_embeddings[0] + dense_prompt_embeddings[b])
        queries, keys = two_way_transformer(
            decoder.transformer,
            keys,
            key_pe,
            tokens[b : b + 1],
            attn_bias=attn_bias,
            target=target,
            first_block=first_block if shared else None,
        )
        hyper_in = torch.stack(
            [decoder.output_hypernetworks_mlps[i](queries[0, 1 + i]) for i in indices]
        )
        masks.append(upscale_and_predict(decoder, keys, (height, width), hyper_in))
        ious.append(decoder.iou_prediction_head(queries[0, 0])[chosen])
    return torch.stack(masks), torch.stack(ious)


def _token_major(image: torch.Tensor) -> torch.Tensor:
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
    first_block: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``TwoWayTransformer.forward`` for one prompt, image tokens token-major.

    ``keys`` and ``key_pe`` are (hw, C), ``point_embedding`` (1, N, C). A dict
    ``first_block`` holds the first block's image-side projections across calls
    with the same keys (filled on the first). Returns queries (1, N, C) and
    keys (hw, C).
    """
    query_pe = point_embedding if target is None else point_embedding + target
    queries = query_pe
    for index, layer in enumerate(transformer.layers):
        if target is not None:
            queries = queries + target
        reuse = first_block if index == 0 else None
        queries, keys = _block(layer, queries, keys, query_pe, key_pe, attn_bias, reuse)
    q = queries + query_pe
    k = keys + key_pe
    projected = _projections(transformer.final_attn_token_to_image, k, keys)
    attention = _token_to_image(transformer.final_attn_token_to_image, q, *projected, None)
    return transformer.norm_final_attn(queries + attention), keys


def _block(layer, queries, keys, query_pe, key_pe, attn_bias, reuse):
    """``TwoWayAttentionBlock.forward``, with ``keys + key_pe`` formed once."""
    if layer.skip_first_layer_pe:
        queries = layer.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + query_pe
        queries = queries + layer.self_attn(q=q, k=q, v=queries)
    queries = layer.norm1(queries)
    q = queries + query_pe
    if reuse:  # filled by an earlier prompt with the same keys
        k_proj, v_proj, image_q = reuse["k"], reuse["v"], reuse["q"]
    else:
        k = keys + key_pe  # SAM forms this sum again below; keys do not change in between
        k_proj, v_proj = _projections(layer.cross_attn_token_to_image, k, keys)
        image_q = layer.cross_attn_image_to_token.q_proj(k)
        if reuse is not None:
            reuse.update(k=k_proj, v=v_proj, q=image_q)
    attention = _token_to_image(layer.cross_attn_token_to_image, q, k_proj, v_proj, attn_bias)
    queries = layer.norm2(queries + attention)
    queries = layer.norm3(queries + layer.mlp(queries))
    q = queries + query_pe
    update = _image_to_token(layer.cross_attn_image_to_token, image_q, q, queries)
    return queries, layer.norm4(update.add_(keys))  # keys + update, into the fresh tensor


def _projections(attention, k, v):
    """The image side of a token-to-image attention: projected keys and values (hw, D)."""
    return (
        F.linear(k, attention.k_proj.weight, attention.k_proj.bias),
        F.linear(v, attention.v_proj.weight, attention.v_proj.bias),
    )


def _token_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(1, N, D) -> (heads, N, D / heads)."""
    return x[0].view(x.shape[1], heads, -1).transpose(0, 1)


def _token_to_image(attention, q, k_proj, v_proj, attn_bias):
    """Prompt tokens (1, N, C) attend to the image; PerSAM's bias when given."""
    heads = attention.num_heads
    pixels, depth = k_proj.shape
    qh = _token_heads(attention.q_proj(q), heads)  # (heads, N, d)
    kh = k_proj.view(pixels, heads, -1).permute(1, 2, 0)  # (heads, d, hw), read in place
    vh = v_proj.view(pixels, heads, -1).transpose(0, 1)  # (heads, hw, d)
    weights = torch.softmax(torch.matmul(qh, kh) / math.sqrt(depth // heads), dim=-1)
    if attn_bias is not None:
        weights = torch.softmax(weights + attn_bias.reshape(1, 1, -1), dim=-1)
    out = torch.matmul(weights, vh).transpose(0, 1).reshape(1, q.shape[1], depth)
    return attention.out_proj(out)


def _image_to_token(attention, image_q, k, v):
    """Image tokens attend to the prompt tokens: (hw, C) from the projected queries.

    The scores are formed as (tokens, pixels) per head, so the softmax over the few
    tokens runs along contiguous pixels. The output projection is applied to each
    head's token values before mixing (a pixel's output is a mix of N projected
    values per head): one product of (hw, heads N) weights with (heads N, C).
    """
    heads = attention.num_heads
    pixels, depth = image_q.shape
    kh = _token_heads(attention.k_proj(k), heads)  # (heads, N, d)
    vh = _token_heads(attention.v_proj(v), heads)
    qh = image_q.view(pixels, heads, -1).permute(1, 2, 0)  # (heads, d, hw)
    scores = torch.matmul(kh, qh).div_(math.sqrt(depth // heads))  # SAM's q k^T, transposed
    weights = torch.softmax(scores, dim=-2)  # over the prompt tokens
    out_weight = attention.out_proj.weight  # (C, D)
    values = torch.matmul(vh, out_weight.t().reshape(heads, depth // heads, -1))  # (heads, N, C)
    mix = weights.reshape(-1, pixels).t()  # (hw, heads N), read in place
    return torch.addmm(attention.out_proj.bias, mix, values.reshape(-1, out_weight.shape[0]))


def upscale_and_predict(
    decoder: MaskDecoder, keys: torch.Tensor, grid: tuple[int, int], hyper_in: torch.Tensor
) -> torch.Tensor:
    """``output_upscaling`` and the hypernetwork product for one prompt.

    Parameters
    ----------
    keys : (hw, C) image tokens after the transformer.
    grid : (h, w) of the tokens.
    hyper_in : (M, C // 8) the chosen mask tokens through their hypernetwork MLPs.

    Returns
    -------
    (M, 4h, 4w) mask logits, as ``hyper_in @ upscaled`` in ``predict_masks``.
    """
    first, norm, first_act, second, second_act = decoder.output_upscaling
    height, width = grid
    # Cell (y, x) of a 2 x 2, stride-2 transposed convolution writes only output
    # pixels (2y + i, 2x + j): weight (in, out, i, j) as an (in, (i, j, out)) matrix.
    x = torch.addmm(first.bias.repeat(4), keys, _as_matrix(first.weight))  # rows (y, x)
    x = x.view(-1, first.out_channels)  # rows (y, x, i, j)
    x = first_act(F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps))
    x = torch.mm(x, _as_matrix(second.weight)).add_(second.bias.repeat(4))
    x = second_act(x).view(-1, second.out_channels)  # rows (y, x, i, j, i2, j2)
    masks = torch.mm(x, hyper_in.t())
    # (y, x, i, j, i2, j2, m) -> (m, 4y + 2i + i2, 4x + 2j + j2)
    masks = masks.view(height, width, 2, 2, 2, 2, -1).permute(6, 0, 2, 4, 1, 3, 5)
    return masks.reshape(-1, 4 * height, 4 * width)


def _as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """ConvTranspose2d weight (in, out, 2, 2) -> (in, 4 * out), columns (i, j, out)."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)
