"""The batched decoder with every prompt's image tokens as a shared part plus a thin one.

In SAM's two-way transformer the image tokens change only through the
image-to-token attention: each block adds ``mix @ values`` to them, with ``mix``
(hw, heads N) the attention weights and ``values`` (heads N, C) the prompt tokens'
projected values, a rank of 8 N (N = 5 output tokens plus the prompt's points and
box corners), and then normalises each token (LayerNorm). The tokens entering the
first block are the image plus a dense embedding of rank 1 (SAM's "no mask") or 17
(a fed-back mask, :mod:`.mask_prompts`). So at every level of the transformer a
prompt's tokens are, exactly,

    keys = scale * (Z @ diag(gamma)) + left @ (right @ diag(gamma)) + beta,

with ``Z`` the image's tokens, centred per row and carried through the norms'
``gamma``: the same for every prompt. ``scale`` (hw, 1) is the product of the norms'
per-row factors, and ``left`` (hw, r), ``right`` (r, C) the prompt's part, which
grows by a ones column and one ``mix`` per block. Each image-side product of a
block, of the final attention and of the output head's first convolution is then
``scale * (Z diag(gamma) P^T)`` (formed once per image, :class:`ImageBasis`) plus
``left @ (right diag(gamma) P^T)``: inner dimension r (65-162) per prompt instead of C
(256). The per-row factors come from the explicit tokens, which are still formed
(two products of rank 8 N per prompt) for their row statistics: the variance is
never taken from expanded terms, and centring ``Z`` and ``right`` by rows keeps the
mean out of the products, so nothing cancels.

The result is segment_anything's decoder to float rounding (``tests`` compare the
three on random weights, with the norms' weights and biases made random too).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from segment_anything.modeling.mask_decoder import MaskDecoder

from napari_persam.core.engine.cpu_products import linear, linear_onto
from napari_persam.core.engine.decoder_head import first_layer_matrix, upscale_and_predict
from napari_persam.core.engine.lean_decoder import (
    block_tokens,
    image_to_token_mix,
    lean_path_supported,
    token_major,
    token_to_image,
)
from napari_persam.core.engine.mask_prompts import MaskPrompt

#: A level's products take the thin form while its rank is at most this share of C
#: (above it, the explicit product reads no more memory and does fewer FLOPs).
MAX_RANK_SHARE = 0.75


class _Product(NamedTuple):
    """One image-side product ``P x + p`` (``+ P pe`` for keys and queries) at one level."""

    weight: torch.Tensor  # P (D, C)
    bias: torch.Tensor  # p (D,)
    scaled: torch.Tensor  # P diag(gamma): applied to the prompt's ``right``
    basis: torch.Tensor  # Z diag(gamma) P^T (hw, D)
    term: torch.Tensor  # beta P^T + p (+ pe P^T): (hw, D), or (D,) without pe
    pe: torch.Tensor | None  # pe P^T, for the explicit product

    def thin(self, scale, left, weight, rows=slice(None)) -> torch.Tensor:
        """The product for ``rows`` of a prompt's factored tokens.

        ``weight``: ``P diag(gamma) right^T`` (D, r), from :meth:`_Level.weights`.
        """
        basis = self.basis[rows]
        term = self.term[rows] if self.term.dim() == 2 else self.term
        base = basis + term if scale is None else torch.addcmul(term, basis, scale[rows])
        return linear_onto(base, left[rows], weight, None)

    def explicit(self, keys: torch.Tensor, rows=slice(None)) -> torch.Tensor:
        """The product of explicit tokens, as the lean decoder forms it."""
        if self.pe is None:
            return linear(keys[rows], self.weight, self.bias)
        return linear_onto(self.pe[rows], keys[rows], self.weight, self.bias)


class _Level(NamedTuple):
    """The tokens entering block ``index`` (the last level: leaving the transformer)."""

    gamma: torch.Tensor | None  # the LayerNorm that formed them (None: the first level)
    beta: torch.Tensor | None
    #: (k, v, image q) of a block; the final attention's (k, v) and the output head's
    #: first convolution at the last level.
    products: tuple[_Product, ...]
    stacked: torch.Tensor  # every product's ``scaled``, stacked by rows

    def weights(self, right: torch.Tensor) -> list[torch.Tensor]:
        """Each product's (D, r) weight for a prompt's ``right``: one matrix product."""
        sizes = [product.weight.shape[0] for product in self.products]
        return list(torch.mm(self.stacked, right.t()).split(sizes))


class ImageBasis(NamedTuple):
    """What the decoder computes of one image embedding independently of the prompts.

    Formed once (about 4 GFLOP for SAM's decoder, the cost of four prompts' savings)
    for all the decoder calls of one image: :func:`image_basis`.
    """

    decoder: MaskDecoder
    features: torch.Tensor  # the (1, C, h, w) embedding it was formed from
    image_pe: torch.Tensor  # and the positional encoding
    tokens: torch.Tensor  # (hw, C)
    levels: tuple[_Level, ...]


def image_basis(
    decoder: torch.nn.Module, image_embeddings: torch.Tensor, image_pe: torch.Tensor
) -> ImageBasis | None:
    """The :class:`ImageBasis` of ``image_embeddings``, or None for another decoder."""
    if not lean_path_supported(decoder):
        return None
    with torch.no_grad():
        tokens = token_major(image_embeddings[0])
        pe = token_major(image_pe[0])
        transformer = decoder.transformer
        levels = []
        z, norm = tokens, None
        for index in range(len(transformer.layers) + 1):
            gamma, beta = (None, None) if norm is None else (norm.weight, norm.bias)
            if index < len(transformer.layers):
                layer = transformer.layers[index]
                t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
                linears = ((t2i.k_proj, True), (t2i.v_proj, False), (i2t.q_proj, True))
                layers = [(m.weight, m.bias, with_pe) for m, with_pe in linears]
            else:
                final = transformer.final_attn_token_to_image
                layers = [(final.k_proj.weight, final.k_proj.bias, True)]
                layers += [(final.v_proj.weight, final.v_proj.bias, False)]
                layers += [(*first_layer_matrix(decoder), False)]
            products = tuple(
                _basis_product(weight, bias, z, gamma, beta, pe if with_pe else None)
                for weight, bias, with_pe in layers
            )
            stacked = torch.cat([product.scaled for product in products])
            levels.append(_Level(gamma, beta, products, stacked))
            if index < len(transformer.layers):
                z = _centred(z if gamma is None else z * gamma)
                norm = transformer.layers[index].norm4
    return ImageBasis(decoder, image_embeddings, image_pe, tokens, tuple(levels))


def _basis_product(weight, bias, z, gamma, beta, pe) -> _Product:
    scaled = weight if gamma is None else weight * gamma
    shift = bias if beta is None else bias + beta @ weight.t()
    pe_product = None if pe is None else linear(pe, weight, None)
    term = shift if pe_product is None else pe_product + shift
    return _Product(weight, bias, scaled, linear(z, scaled, None), term, pe_product)


def _centred(x: torch.Tensor) -> torch.Tensor:
    """``x`` less each row's mean (a LayerNorm's centring)."""
    return x - x.mean(dim=-1, keepdim=True)


def constant_dense(dense_prompt_embeddings: torch.Tensor) -> torch.Tensor | None:
    """The (C,) vector of a (1, C, h, w) dense embedding equal at every pixel, or None."""
    if dense_prompt_embeddings.shape[0] != 1:
        return None
    dense = dense_prompt_embeddings[0].flatten(1)
    vector = dense[:, 0]
    return vector if torch.equal(dense, vector[:, None].expand_as(dense)) else None


def predict_masks(
    basis: ImageBasis,
    *,
    sparse_prompt_embeddings: torch.Tensor,
    dense: torch.Tensor | None,
    mask_prompt: MaskPrompt | None,
    attn_bias: torch.Tensor | None,
    target: torch.Tensor | None,
    chosen: slice,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`.lean_decoder.predict_masks` on ``basis``'s image, every prompt kept thin.

    ``dense``: the (C,) dense embedding of every prompt (:func:`constant_dense`), or
    None with ``mask_prompt``. The other arguments and the result are the lean
    decoder's.
    """
    decoder = basis.decoder
    transformer = decoder.transformer
    count = sparse_prompt_embeddings.shape[0]
    height, width = basis.features.shape[-2:]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat(
        (output_tokens.unsqueeze(0).expand(count, -1, -1), sparse_prompt_embeddings), dim=1
    )
    ones = basis.tokens.new_ones(basis.tokens.shape[0], 1)
    first = basis.levels[0]
    if mask_prompt is None:  # every prompt's first level is the same: formed once
        first_right = dense[None]
        shared_keys = basis.tokens + dense
        shared = _Tokens(first, shared_keys, None, ones, first.weights(first_right))
        shared_side = [shared.product(i) for i in range(3)]
    else:
        first_right = torch.cat([mask_prompt.projection.bias[None], mask_prompt.matrix().t()])
        first_weights = first.weights(first_right)
    indices = range(decoder.num_mask_tokens)[chosen]
    limit = MAX_RANK_SHARE * basis.tokens.shape[1]
    depth = len(transformer.layers)
    masks, ious = [], []
    for b in range(count):
        left, right, scale = ones, first_right, None
        if mask_prompt is None:
            keys, side = shared_keys, shared_side
        else:
            left = torch.cat([ones, token_major(mask_prompt.features[b])], dim=1)
            keys = linear_onto(basis.tokens, left, right.t(), None)
            prompt = _Tokens(first, keys, None, left, first_weights)
            side = [prompt.product(i) for i in range(3)]
        point_embedding = tokens[b : b + 1]
        query_pe = point_embedding if target is None else point_embedding + target
        queries = query_pe
        for index, layer in enumerate(transformer.layers):
            if target is not None:
                queries = queries + target
            k_proj, v_proj, image_q = side
            queries = block_tokens(layer, queries, query_pe, k_proj, v_proj, attn_bias)
            attention = layer.cross_attn_image_to_token
            mix, values = image_to_token_mix(attention, image_q, queries + query_pe, queries)
            norm = layer.norm4
            keys, _, rstd = torch.native_layer_norm(
                linear_onto(keys, mix, values.t(), None),
                norm.normalized_shape,
                norm.weight,
                norm.bias,
                norm.eps,
            )
            left, right, scale = _next_factors(
                basis.levels[index], left, right, scale, mix, values, rstd
            )
            level = basis.levels[index + 1]
            weights = level.weights(right) if left.shape[1] <= limit else None
            prompt = _Tokens(level, keys, scale, left, weights)
            side = [prompt.product(i) for i in range(2 if index + 1 == depth else 3)]
        final = transformer.final_attn_token_to_image
        attention = token_to_image(final, queries + query_pe, side[0], side[1], None)
        queries = transformer.norm_final_attn(queries + attention)
        hyper_in = torch.stack(
            [decoder.output_hypernetworks_mlps[i](queries[0, 1 + i]) for i in indices]
        )

        def first_product(start: int, stop: int, prompt: _Tokens = prompt) -> torch.Tensor:
            return prompt.product(2, slice(start, stop))  # the head's, of the last level

        grid = (height, width)
        masks.append(
            upscale_and_predict(decoder, None, grid, hyper_in, first_product=first_product)
        )
        ious.append(decoder.iou_prediction_head(queries[0, 0])[chosen])
    return torch.stack(masks), torch.stack(ious)


class _Tokens(NamedTuple):
    """One prompt's image tokens at one level, thin (``weights`` given) or explicit."""

    level: _Level
    keys: torch.Tensor  # explicit (hw, C)
    scale: torch.Tensor | None  # (hw, 1); None: 1
    left: torch.Tensor  # (hw, r)
    weights: list[torch.Tensor] | None  # :meth:`_Level.weights` of the prompt's ``right``

    def product(self, index: int, rows: slice = slice(None)) -> torch.Tensor:
        """The level's product ``index`` for ``rows`` of these tokens."""
        product = self.level.products[index]
        if self.weights is None:
            return product.explicit(self.keys, rows)
        return product.thin(self.scale, self.left, self.weights[index], rows)


def _next_factors(level: _Level, left, right, scale, mix, values, rstd):
    """The factors of the tokens a block's LayerNorm forms from ``level``'s plus ``mix @ values``.

    Centred by rows, the sum is ``scale * centred(Z gamma) + [left, 1, mix] @
    [centred(right gamma); centred(beta); centred(values)]`` (no ones column at the
    first level, which has no norm before it); the norm multiplies every row by its
    ``rstd``.
    """
    lefts, rights = [left], [_centred(right if level.gamma is None else right * level.gamma)]
    if level.beta is not None:
        lefts.append(torch.ones_like(rstd))
        rights.append(_centred(level.beta[None]))
    lefts.append(mix)
    rights.append(_centred(values))
    new_scale = rstd if scale is None else rstd * scale
    return torch.cat(lefts, dim=1).mul_(rstd), torch.cat(rights), new_scale
