"""From a concept to SAM prompts, and the prompt cascade, batched.

One :class:`Prompter` per engine holds the SAM and device. It computes the
similarity map and location prior (PerSAM steps 3-4), the target guidance (5-6),
and runs the cascaded refinement (7) for many prompt sets at once: SAM's decoder
takes a batch of prompts for one image, so a hundred instance candidates cost a
few decoder calls, not a hundred.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from napari_persam.core.config import PerSAMConfig
from napari_persam.core.engine.concepts import Concept
from napari_persam.core.engine.decoder import attention_bias, decode_masks
from napari_persam.core.engine.embeddings import ImageEmbedding
from napari_persam.core.engine.low_rank_decoder import ImageBasis, image_basis
from napari_persam.core.engine.mask_prompts import factor_mask_prompt
from napari_persam.core.engine.postprocess import remove_small_components
from napari_persam.core.engine.results import Segmentation

#: Prompt sets in a cascade from which the decoder's image basis is formed: it costs
#: about what four prompt sets' three decoder calls save (low_rank_decoder).
BASIS_FROM = 4


@dataclass(frozen=True)
class Guidance:
    """Similarity of an image to a concept, and the decoder guidance derived from it.

    Attributes
    ----------
    similarity_grid : (gh, gw) float tensor
        Cosine similarity per feature cell (the maximum over the concept's shots).
    similarity : (H, W) float32
        The same in image pixels.
    attn_bias : (1, 1, 1, gh * gw) tensor or None
        Target-guided attention bias (None when switched off).
    target : (C,) tensor or None
        Target-semantic prompt (None when switched off).
    mask_weights : (3,) tensor or None
        PerSAM-F weights of the concept.
    """

    similarity_grid: torch.Tensor
    similarity: np.ndarray
    attn_bias: torch.Tensor | None
    target: torch.Tensor | None
    mask_weights: torch.Tensor | None


@dataclass(frozen=True)
class PromptSet:
    """Prompts for one object.

    Attributes
    ----------
    points : (N, 2) float, (y, x) in image pixels
    labels : (N,) int, 1 positive, 0 negative
    box : (4,) float (y0, x0, y1, x1) or None
        A box known before the cascade (propagation from a neighbouring slice).
    """

    points: np.ndarray
    labels: np.ndarray
    box: np.ndarray | None = None


@dataclass(frozen=True)
class CascadeResult:
    """The outcome of the cascade for one prompt set (mask empty and score 0 if lost).

    The mask is formed (upscaled to image pixels) when first asked for: the
    every-instance search drops many outcomes unseen (their point already lies in an
    accepted object), and a whole-image mask costs milliseconds to form.
    """

    score: float
    box: np.ndarray | None
    form_mask: Callable[[], np.ndarray] = field(repr=False, compare=False)

    @functools.cached_property
    def mask(self) -> np.ndarray:
        """(H, W) bool in image pixels; not empty unless the prompt set was lost."""
        return self.form_mask()


def cosine_similarity_grid(features: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """Maximum cosine similarity of each cell to any of ``embeddings``.

    Parameters
    ----------
    features : (1, C, gh, gw) float tensor
    embeddings : (K, C) float tensor

    Returns
    -------
    (gh, gw) float tensor in [-1, 1]
    """
    cells = F.normalize(features[0].flatten(1), dim=0)  # (C, gh*gw)
    directions = F.normalize(embeddings.reshape(-1, cells.shape[0]), dim=1)
    similarity = (directions @ cells).amax(dim=0)
    return similarity.reshape(features.shape[-2:]).clamp(-1.0, 1.0)


def extreme_points(similarity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) of the similarity maximum and minimum (first in raster order on ties)."""
    width = similarity.shape[1]
    best = int(np.argmax(similarity))
    worst = int(np.argmin(similarity))
    return (
        np.array([best // width, best % width], dtype=np.float64),
        np.array([worst // width, worst % width], dtype=np.float64),
    )


class Prompter:
    """Runs PerSAM's prompting on one SAM.

    Parameters
    ----------
    sam : segment_anything.modeling.Sam
    device : torch.device
    config : PerSAMConfig
    """

    def __init__(self, sam: torch.nn.Module, device: torch.device, config: PerSAMConfig) -> None:
        self.sam = sam
        self.device = device
        self.config = config
        self._dense_pe: torch.Tensor | None = None

    def dense_pe(self) -> torch.Tensor:
        """``prompt_encoder.get_dense_pe()``, computed once: it depends on the model only."""
        if self._dense_pe is None:
            with torch.no_grad():
                self._dense_pe = self.sam.prompt_encoder.get_dense_pe()
        return self._dense_pe

    # ------------------------------------------------------------ guidance
    def guidance(self, embedding: ImageEmbedding, concept: Concept) -> Guidance:
        """Similarity map and decoder guidance of ``concept`` on ``embedding``."""
        cfg = self.config
        geometry = embedding.geometry
        embeddings = torch.as_tensor(concept.shot_embeddings, device=self.device)
        grid = cosine_similarity_grid(embedding.features, embeddings)
        similarity = geometry.grid_to_image(grid).clamp(-1.0, 1.0).cpu().numpy()
        bias = None
        if cfg.target_guided_attention:
            valid = torch.from_numpy(geometry.valid_cells()).to(self.device)
            bias = attention_bias(grid, valid)
        target = None
        if cfg.semantic_prompt:
            target = torch.as_tensor(concept.target_embedding, device=self.device)
        weights = None
        if concept.mask_weights is not None:
            weights = torch.as_tensor(concept.mask_weights, device=self.device)
        return Guidance(
            similarity_grid=grid,
            similarity=similarity.astype(np.float32, copy=False),
            attn_bias=bias,
            target=target,
            mask_weights=weights,
        )

    def prior_prompt(self, guidance: Guidance) -> PromptSet:
        """PerSAM's location prior: positive at the maximum, negative at the minimum."""
        best, worst = extreme_points(guidance.similarity)
        if self.config.negative_prior:
            return PromptSet(points=np.stack([best, worst]), labels=np.array([1, 0]))
        return PromptSet(points=best[None], labels=np.array([1]))

    def segment(
        self,
        embedding: ImageEmbedding,
        concept: Concept,
        *,
        prompt: PromptSet | None = None,
        guidance: Guidance | None = None,
    ) -> Segmentation:
        """One object: the cascade from ``prompt`` (default: the location prior), cleaned up.

        ``guidance`` reuses one computed for this image and concept.
        """
        if guidance is None:
            guidance = self.guidance(embedding, concept)
        if prompt is None:
            prompt = self.prior_prompt(guidance)
        (outcome,) = self.cascade(embedding, [prompt], guidance)
        mask = remove_small_components(
            outcome.mask, min_area_fraction=self.config.min_area_fraction
        )
        found = bool(mask.any())
        return Segmentation(
            mask=mask,
            similarity=guidance.similarity,
            score=float(outcome.score) if found else 0.0,
            points=prompt.points.copy(),
            point_labels=prompt.labels.copy(),
            box=outcome.box if found else None,
        )

    # ------------------------------------------------------------ decoding
    def decode(
        self,
        embedding: ImageEmbedding,
        prompts: Sequence[PromptSet],
        *,
        boxes: Sequence[np.ndarray | None],
        mask_inputs: torch.Tensor | None,
        multimask: bool,
        guidance: Guidance | None,
        basis: ImageBasis | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One batched decoder call.

        All ``prompts`` must have the same number of points, and ``boxes`` must be
        all None or all set. ``mask_inputs``: (B, 4gh, 4gw) logits or None.
        ``basis``: :meth:`image_basis` of ``embedding``, for many prompts.
        Returns low-resolution logits (B, M, 4gh, 4gw) and IoU predictions (B, M).
        """
        geometry = embedding.geometry
        coords = np.stack([geometry.points_to_sam(p.points) for p in prompts])
        labels = np.stack([p.labels for p in prompts])
        box_tensor = None
        if boxes[0] is not None:
            box_tensor = torch.as_tensor(
                np.stack([geometry.box_to_sam(b) for b in boxes]), device=self.device
            )
        masks = None if mask_inputs is None else mask_inputs[:, None]
        with torch.no_grad():
            encoder = self.sam.prompt_encoder
            mask_prompt = None if masks is None else factor_mask_prompt(encoder, masks)
            sparse, dense = encoder(
                points=(
                    torch.as_tensor(coords, device=self.device),
                    torch.as_tensor(labels, device=self.device),
                ),
                boxes=box_tensor,
                masks=masks if mask_prompt is None else None,
            )
            if mask_prompt is not None:
                # The decoder takes the mask inputs in low-rank form (mask_prompts).
                dense = None
            elif masks is None:
                # Every prompt has the same dense embedding (SAM's "no mask"): one for
                # all lets the decoder project the image once (see decode_masks).
                dense = dense[:1]
            return decode_masks(
                self.sam.mask_decoder,
                image_embeddings=embedding.features,
                image_pe=self.dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                mask_prompt=mask_prompt,
                multimask_output=multimask,
                attn_bias=None if guidance is None else guidance.attn_bias,
                target_embedding=None if guidance is None else guidance.target,
                image_basis=basis,
            )

    def image_basis(self, embedding: ImageEmbedding) -> ImageBasis | None:
        """The decoder's prompt-independent products of ``embedding`` (None: not SAM's)."""
        return image_basis(self.sam.mask_decoder, embedding.features, self.dense_pe())

    def to_mask(self, embedding: ImageEmbedding, logits: torch.Tensor) -> np.ndarray:
        """(4gh, 4gw) low-resolution logits -> (H, W) bool mask in image pixels.

        Upscaled only around the logits above SAM's threshold (the same mask as
        upscaling everything: :meth:`SamGeometry.mask_from_logits`).
        """
        return embedding.geometry.mask_from_logits(logits, float(self.sam.mask_threshold))

    def has_mask(self, embedding: ImageEmbedding, logits: torch.Tensor) -> bool:
        """``to_mask(embedding, logits).any()``, mostly without forming the mask."""
        return embedding.geometry.mask_from_logits_any(logits, float(self.sam.mask_threshold))

    def box_of(self, embedding: ImageEmbedding, logits: torch.Tensor) -> np.ndarray | None:
        """``tight_box(to_mask(embedding, logits))``, mostly without forming the mask."""
        return embedding.geometry.box_from_logits(logits, float(self.sam.mask_threshold))

    # ------------------------------------------------------------ cascade
    def cascade(
        self,
        embedding: ImageEmbedding,
        prompts: Sequence[PromptSet],
        guidance: Guidance,
        basis: ImageBasis | None = None,
    ) -> list[CascadeResult]:
        """PerSAM's first prediction and cascaded refinement for each prompt set.

        The first decoding is guided (attention bias, semantic prompt, PerSAM-F
        weights); refinement step 1 feeds the logits back, step 2 and later also
        the tight box of the last mask; of SAM's multimask outputs the highest
        predicted IoU wins. A prompt set whose mask becomes empty ends with an
        empty mask and score 0. ``basis``: :meth:`image_basis` of ``embedding``,
        when the caller runs several cascades on it; otherwise it is formed here
        for ``BASIS_FROM`` or more prompt sets.
        """
        count = len(prompts)
        logits: list[torch.Tensor | None] = [None] * count
        scores = np.zeros(count)
        present = [False] * count  # whether the mask of logits[i] has a pixel
        boxes: list[np.ndarray | None] = [p.box for p in prompts]
        # No mask is formed here. Refinement needs of each step's mask only whether it
        # is empty (its logits are fed back) and its box; the last ones are formed by
        # whoever asks for them (CascadeResult.mask).
        last = self.config.refinement_steps
        next_boxes: list[np.ndarray | None] = [None] * count

        weights = guidance.mask_weights
        if basis is None and count >= BASIS_FROM:
            basis = self.image_basis(embedding)
        for group in self._groups(prompts, boxes, range(count)):
            low, iou = self.decode(
                embedding,
                [prompts[i] for i in group],
                boxes=[boxes[i] for i in group],
                mask_inputs=None,
                multimask=weights is not None,
                guidance=guidance,
                basis=basis,
            )
            if weights is not None:
                mixed = torch.einsum("bmhw,m->bhw", low, weights)
                mixed_scores = iou @ weights
            else:
                mixed, mixed_scores = low[:, 0], iou[:, 0]
            for row, index in enumerate(group):
                logits[index] = mixed[row]
                scores[index] = float(mixed_scores[row])
                present[index] = self.has_mask(embedding, mixed[row])

        for step in range(1, last + 1):
            alive = [i for i in range(count) if present[i]]
            if step >= 2:
                for i in alive:
                    boxes[i] = next_boxes[i]
            for group in self._groups(prompts, boxes, alive):
                low, iou = self.decode(
                    embedding,
                    [prompts[i] for i in group],
                    boxes=[boxes[i] for i in group],
                    mask_inputs=torch.stack([logits[i] for i in group]),
                    multimask=True,
                    guidance=None,
                    basis=basis,
                )
                best = torch.argmax(iou, dim=1)
                for row, index in enumerate(group):
                    chosen = int(best[row])
                    logits[index] = low[row, chosen]
                    scores[index] = float(iou[row, chosen])
                    if step == last:
                        present[index] = self.has_mask(embedding, logits[index])
                    else:
                        next_boxes[index] = self.box_of(embedding, logits[index])
                        present[index] = next_boxes[index] is not None

        shape = embedding.geometry.original_hw
        results = []
        for i in range(count):
            if present[i]:
                form = functools.partial(self.to_mask, embedding, logits[i])
                results.append(CascadeResult(score=scores[i], box=boxes[i], form_mask=form))
            else:
                lost = functools.partial(np.zeros, shape, dtype=bool)
                results.append(CascadeResult(score=0.0, box=None, form_mask=lost))
        return results

    def _groups(
        self,
        prompts: Sequence[PromptSet],
        boxes: Sequence[np.ndarray | None],
        indices,
    ) -> list[list[int]]:
        """Indices batched by (point count, has box), at most ``decoder_batch_size`` each."""
        by_kind: dict[tuple[int, bool], list[int]] = defaultdict(list)
        for i in indices:
            by_kind[(len(prompts[i].points), boxes[i] is not None)].append(i)
        size = self.config.decoder_batch_size
        return [
            members[start : start + size]
            for members in by_kind.values()
            for start in range(0, len(members), size)
        ]
