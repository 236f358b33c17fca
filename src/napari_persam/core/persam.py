"""The PerSAM engine: learn a concept from (image, mask), segment it in other images.

Steps (Zhang et al. 2023, with the official code's known bugs fixed):

1. encode each image once (cached by content and model);
2. reference mask -> feature-cell coverage in SAM's resize-and-pad geometry;
3. target embedding = mean foreground feature; similarity = cosine to every cell,
   mapped back to image pixels through the inverse geometry;
4. positive point at the similarity maximum, negative at the minimum;
5. target-guided attention and 6. target-semantic prompt in the first decoding;
7. cascaded refinement with the mask logits, then also the mask's box;
8. PerSAM-F mixes SAM's three masks with learned weights;
9. small connected components are removed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from napari_persam.core.concept import Concept, Segmentation, Shot
from napari_persam.core.config import PerSAMConfig
from napari_persam.core.decoder import attention_bias, decode_masks
from napari_persam.core.devices import resolve_device, supports_bfloat16
from napari_persam.core.embeddings import (
    EmbeddingCache,
    ImageEmbedding,
    encode_image,
    image_digest,
    model_fingerprint,
)
from napari_persam.core.finetune import fit_mask_weights
from napari_persam.core.images import prepare_image, prepare_mask
from napari_persam.core.postprocess import remove_small_components, tight_box
from napari_persam.core.progress import Progress, ProgressGenerator


@dataclasses.dataclass(frozen=True)
class FirstPrompt:
    """The prompts of the first decoding for one image (PerSAM steps 3 to 6).

    Attributes
    ----------
    similarity_grid : (gh, gw) float tensor, on the engine's device
    similarity : (H, W) float32, in image pixels
    points : (N, 2) float (y, x) and labels : (N,) int
    attn_bias : (1, 1, 1, gh * gw) tensor or None
    target : (C,) tensor or None
    """

    similarity_grid: torch.Tensor
    similarity: np.ndarray
    points: np.ndarray
    labels: np.ndarray
    attn_bias: torch.Tensor | None
    target: torch.Tensor | None


class PerSAM:
    """Personalized SAM: one painted example in, the same kind of object out.

    Parameters
    ----------
    sam : segment_anything.modeling.Sam
        Any SAM (ViT-B/L/H, MobileSAM, or a small random one for tests). It is
        moved to ``device`` and set to eval mode, and otherwise left untouched: it
        still answers ordinary prompts exactly as before.
    config : PerSAMConfig, optional
        What the engine does; defaults to ``PerSAMConfig()``.
    device : str or torch.device, optional
        ``None`` picks CUDA, then Apple MPS, then CPU.
    cache : EmbeddingCache, optional
        Share one cache between engines of the same model; by default each engine
        has its own of ``config.cache_size`` images.
    model_name : str, optional
        Registry name of the model (``"vit_b"``...), recorded in learned concepts.

    Examples
    --------
    >>> engine = PerSAM(sam)                       # doctest: +SKIP
    >>> concept = engine.learn(image, mask)        # doctest: +SKIP
    >>> seg = engine.segment(other, concept)       # doctest: +SKIP
    >>> seg.mask.shape == other.shape[:2]          # doctest: +SKIP
    """

    def __init__(
        self,
        sam: torch.nn.Module,
        *,
        config: PerSAMConfig | None = None,
        device: str | torch.device | None = None,
        cache: EmbeddingCache | None = None,
        model_name: str = "",
    ) -> None:
        self.model_name = model_name
        self.config = config if config is not None else PerSAMConfig()
        self.device = resolve_device(device)
        if self.config.encoder_dtype == "bfloat16" and not supports_bfloat16(self.device):
            raise ValueError(
                f"encoder_dtype='bfloat16' is not supported on {self.device}; "
                "use encoder_dtype='float32'."
            )
        first = next(sam.parameters(), None)
        if first is not None and first.device != self.device:
            sam.to(self.device)
        sam.eval()
        self.sam = sam
        self.fingerprint = model_fingerprint(sam)
        self.cache = cache if cache is not None else EmbeddingCache(self.config.cache_size)

    # ------------------------------------------------------------------ encoding
    def embed(self, image: np.ndarray) -> ImageEmbedding:
        """SAM's embedding of ``image`` ((H, W) or (H, W, C), any dtype), cached."""
        return self._embed_rgb(prepare_image(image, channels=self.config.channels))

    def _embed_rgb(self, rgb: np.ndarray) -> ImageEmbedding:
        key = (self.fingerprint, image_digest(rgb), self.config.encoder_dtype)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        embedding = encode_image(
            self.sam, rgb, device=self.device, encoder_dtype=self.config.encoder_dtype
        )
        self.cache.put(key, embedding)
        return embedding

    # ------------------------------------------------------------------ learning
    def learn(
        self,
        image: np.ndarray | Sequence[tuple[np.ndarray, np.ndarray]],
        mask: np.ndarray | None = None,
    ) -> Concept:
        """Learn a concept from one reference, or from several.

        Parameters
        ----------
        image : (H, W) or (H, W, C) array, or a sequence of (image, mask) pairs
            Any numeric or boolean dtype (see :func:`prepare_image`).
        mask : (H, W) array
            Nonzero pixels are the object. Omit it when ``image`` is a sequence of
            pairs.

        Returns
        -------
        Concept
            ``target_embedding`` (C,) float32 is the mean feature of the cells the
            masks cover (coverage >= ``config.foreground_coverage``; for an object
            smaller than that, the best-covered cells).
        """
        if mask is None:
            pairs = list(image)  # type: ignore[arg-type]
            if not pairs:
                raise ValueError("learn() needs at least one (image, mask) pair.")
        else:
            pairs = [(image, mask)]
        shots = [self._shot(ref_image, ref_mask) for ref_image, ref_mask in pairs]
        pooled = np.concatenate([shot.features[:, shot.foreground_cells].T for shot in shots])
        target = pooled.mean(axis=0).astype(np.float32)
        return Concept(
            target_embedding=target,
            model_fingerprint=self.fingerprint,
            model_name=self.model_name,
            shots=tuple(shots),
        )

    def _shot(self, image: np.ndarray, mask: np.ndarray) -> Shot:
        if np.ndim(image) not in (2, 3):
            raise ValueError(
                f"Each reference must be an (image, mask) pair of 2D arrays; got an image "
                f"of shape {np.shape(image)}."
            )
        rgb = prepare_image(image, channels=self.config.channels)
        boolean = prepare_mask(mask, rgb.shape)
        embedding = self._embed_rgb(rgb)
        coverage = embedding.geometry.mask_coverage(boolean)
        foreground = coverage >= self.config.foreground_coverage
        if not foreground.any():
            # A small object covers no cell by half: use the best-covered cell(s).
            foreground = coverage >= coverage.max()
        return Shot(
            features=embedding.features[0].cpu().numpy(),
            mask=boolean,
            geometry=embedding.geometry,
            foreground_cells=foreground,
        )

    def finetune(self, concept: Concept) -> Concept:
        """PerSAM-F: fit the weights of SAM's three masks to the reference mask(s).

        Returns a new :class:`Concept` with ``mask_weights`` (3,) set; ``concept`` is
        not changed. Training uses the same first-step prompts as :meth:`segment`,
        on every reference of the concept.
        """
        self._check_concept(concept)
        if not concept.shots:
            raise ValueError(
                "This concept carries no reference images (was it loaded from a file?); "
                "learn it again from its references to fine-tune it."
            )
        cfg = self.config
        logits, targets = [], []
        for shot in concept.shots:
            features = torch.from_numpy(shot.features)[None].to(self.device)
            embedding = ImageEmbedding(features=features, geometry=shot.geometry)
            prompt = self._first_prompt(embedding, concept)
            low_res, _ = self._decode(
                embedding,
                prompt,
                multimask=True,
                attn_bias=prompt.attn_bias,
                target=prompt.target,
            )
            height, width = shot.geometry.original_hw
            scale = min(1.0, cfg.finetune_max_side / max(height, width))
            fit_hw = (max(1, round(height * scale)), max(1, round(width * scale)))
            logits.append(shot.geometry.grid_to_shape(low_res, fit_hw).flatten(1).cpu())
            mask = torch.from_numpy(shot.mask.astype(np.float32))[None, None]
            target = F.interpolate(mask, size=fit_hw, mode="bilinear", antialias=True)
            targets.append(target.clamp(0, 1).flatten())
        weights, losses = fit_mask_weights(
            logits, targets, steps=cfg.finetune_steps, lr=cfg.finetune_lr
        )
        return dataclasses.replace(concept, mask_weights=weights, finetune_losses=losses)

    # ---------------------------------------------------------------- segmenting
    def segment(self, image: np.ndarray, concept: Concept) -> Segmentation:
        """Find the concept's object in ``image``.

        Parameters
        ----------
        image : (H, W) or (H, W, C) array
            Any numeric or boolean dtype.
        concept : Concept
            From :meth:`learn` or :meth:`finetune` with the same model.

        Returns
        -------
        Segmentation
            ``mask`` (H, W) bool, ``similarity`` (H, W) float32, ``score``,
            ``points`` (N, 2) (y, x), ``point_labels`` (N,), ``box`` or None.
        """
        self._check_concept(concept)
        rgb = prepare_image(image, channels=self.config.channels)
        embedding = self._embed_rgb(rgb)
        return self._segment_embedding(embedding, concept)

    def segment_many(
        self, images: Iterable[np.ndarray], concept: Concept, *, total: int | None = None
    ) -> ProgressGenerator[list[Segmentation]]:
        """Segment several images (or the slices of a stack), yielding progress.

        A generator: each image's :class:`Segmentation` is yielded as
        ``Progress(done, total, message, index=i, result=segmentation)`` as soon as it
        is ready, and the list of all of them is returned at the end. Stop iterating
        to cancel; what was yielded stays valid.
        """
        self._check_concept(concept)
        if total is None and hasattr(images, "__len__"):
            total = len(images)  # type: ignore[arg-type]
        total = int(total or 0)
        results: list[Segmentation] = []
        for index, image in enumerate(images):
            segmentation = self.segment(image, concept)
            results.append(segmentation)
            yield Progress(
                done=index + 1,
                total=max(total, index + 1),
                message=f"segmented {index + 1} of {max(total, index + 1)}",
                index=index,
                result=segmentation,
            )
        return results

    # ---------------------------------------------------------------- internals
    def _check_concept(self, concept: Concept) -> None:
        if not isinstance(concept, Concept):
            raise TypeError(f"Expected a Concept from PerSAM.learn, got {type(concept).__name__}.")
        if concept.model_fingerprint != self.fingerprint:
            raise ValueError(
                "This concept was learned with a different model (or other weights) than this "
                "engine's; learn it again with this model."
            )

    def _first_prompt(self, embedding: ImageEmbedding, concept: Concept) -> FirstPrompt:
        cfg = self.config
        geometry = embedding.geometry
        features = F.normalize(embedding.features[0].flatten(1), dim=0)  # (C, gh*gw)
        target = torch.as_tensor(concept.target_embedding, device=self.device)
        direction = F.normalize(target, dim=0)
        grid = (direction @ features).reshape(geometry.grid_hw).clamp(-1.0, 1.0)
        similarity = geometry.grid_to_image(grid).clamp(-1.0, 1.0).cpu().numpy()
        similarity = similarity.astype(np.float32, copy=False)
        width = similarity.shape[1]
        best = int(np.argmax(similarity))
        points = [(best // width, best % width)]
        labels = [1]
        if cfg.negative_prior:
            worst = int(np.argmin(similarity))
            points.append((worst // width, worst % width))
            labels.append(0)
        bias = None
        if cfg.target_guided_attention:
            valid = torch.from_numpy(geometry.valid_cells()).to(self.device)
            bias = attention_bias(grid, valid)
        return FirstPrompt(
            similarity_grid=grid,
            similarity=similarity,
            points=np.asarray(points, dtype=np.float64),
            labels=np.asarray(labels, dtype=np.int64),
            attn_bias=bias,
            target=target if cfg.semantic_prompt else None,
        )

    def _decode(
        self,
        embedding: ImageEmbedding,
        prompt: FirstPrompt,
        *,
        multimask: bool,
        box_yxyx: np.ndarray | None = None,
        mask_input: torch.Tensor | None = None,
        attn_bias: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoder call: (M, 4gh, 4gw) low-resolution logits and (M,) IoU predictions."""
        geometry = embedding.geometry
        coords = torch.as_tensor(geometry.points_to_sam(prompt.points)[None], device=self.device)
        labels = torch.as_tensor(prompt.labels[None], device=self.device)
        boxes = None
        if box_yxyx is not None:
            boxes = torch.as_tensor(geometry.box_to_sam(box_yxyx)[None], device=self.device)
        if mask_input is not None:
            mask_input = mask_input.reshape(1, 1, *mask_input.shape[-2:])
        with torch.no_grad():
            sparse, dense = self.sam.prompt_encoder(
                points=(coords, labels), boxes=boxes, masks=mask_input
            )
            low_res, iou = decode_masks(
                self.sam.mask_decoder,
                image_embeddings=embedding.features,
                image_pe=self.sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
                attn_bias=attn_bias,
                target_embedding=target,
            )
        return low_res[0], iou[0]

    def _to_mask(self, embedding: ImageEmbedding, logits: torch.Tensor) -> np.ndarray:
        upscaled = embedding.geometry.grid_to_image(logits)
        return (upscaled > self.sam.mask_threshold).cpu().numpy()

    def _segment_embedding(self, embedding: ImageEmbedding, concept: Concept) -> Segmentation:
        cfg = self.config
        prompt = self._first_prompt(embedding, concept)

        def result(mask: np.ndarray | None, score: float, box: np.ndarray | None) -> Segmentation:
            if mask is None or not mask.any():
                mask = np.zeros(embedding.geometry.original_hw, dtype=bool)
                score, box = 0.0, None
            return Segmentation(
                mask=mask,
                similarity=prompt.similarity,
                score=float(score),
                points=prompt.points.copy(),
                point_labels=prompt.labels.copy(),
                box=box,
            )

        # First prediction, guided by the target (PerSAM-F mixes the three masks).
        if concept.mask_weights is not None:
            low_res, iou = self._decode(
                embedding,
                prompt,
                multimask=True,
                attn_bias=prompt.attn_bias,
                target=prompt.target,
            )
            weights = torch.as_tensor(concept.mask_weights, device=low_res.device)
            logits = (low_res * weights[:, None, None]).sum(0)
            score = float((iou * weights).sum())
        else:
            low_res, iou = self._decode(
                embedding,
                prompt,
                multimask=False,
                attn_bias=prompt.attn_bias,
                target=prompt.target,
            )
            logits, score = low_res[0], float(iou[0])
        mask = self._to_mask(embedding, logits)

        # Cascaded post-refinement: the logits fed back, then also the mask's box.
        box = None
        for step in range(1, cfg.refinement_steps + 1):
            if not mask.any():
                return result(None, 0.0, None)
            box = tight_box(mask) if step >= 2 else None
            low_res, iou = self._decode(
                embedding, prompt, multimask=True, box_yxyx=box, mask_input=logits
            )
            best = int(torch.argmax(iou))
            logits, score = low_res[best], float(iou[best])
            mask = self._to_mask(embedding, logits)

        mask = remove_small_components(mask, min_area_fraction=cfg.min_area_fraction)
        return result(mask, score, box)
