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

``prompt_mode="part-aware"`` (P²SAM) replaces step 4 with part and background
prototypes and keeps the mask closest to the reference (:mod:`.retrieval`); what
that needs is learned once per concept (:mod:`.learning`, :mod:`.parts`).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from napari_persam.core.config import PerSAMConfig
from napari_persam.core.devices import resolve_device, supports_bfloat16
from napari_persam.core.engine.concepts import ClassConcepts, Concept, check_concept
from napari_persam.core.engine.embeddings import (
    EmbeddingCache,
    ImageEmbedding,
    ImageEncoder,
    encode_image,
    encoder_backend,
    geometry_for,
    image_digest,
    model_fingerprint,
)
from napari_persam.core.engine.finetune import fit_mask_weights
from napari_persam.core.engine.images import prepare_image
from napari_persam.core.engine.instances import merge_class_instances
from napari_persam.core.engine.learning import Learner
from napari_persam.core.engine.prompting import Prompter
from napari_persam.core.engine.results import (
    Instances,
    LabelSegmentation,
    Segmentation,
    merge_class_segmentations,
)
from napari_persam.core.engine.segmenter import ImageSegmenter
from napari_persam.core.engine.stacks import iter_segment_stack
from napari_persam.core.engine.tiles import TilePlan, plans_for
from napari_persam.core.progress import Progress, ProgressGenerator, run


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
    checkpoint_sha256 : str, optional
        SHA-256 of the model's checkpoint file, when known (recorded in concept files).
    image_encoder : callable, optional
        Runs instead of ``sam.image_encoder`` (an exported copy of it on a fast CPU
        runtime, see :data:`~napari_persam.core.engine.embeddings.ImageEncoder`);
        its ``backend`` name is part of every embedding cache key.

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
        checkpoint_sha256: str | None = None,
        image_encoder: ImageEncoder | None = None,
    ) -> None:
        self.model_name = model_name
        self.checkpoint_sha256 = checkpoint_sha256
        self.config = config if config is not None else PerSAMConfig()
        self.device = resolve_device(device)
        if self.config.encoder_dtype == "bfloat16" and not supports_bfloat16(self.device):
            raise ValueError(
                f"encoder_dtype='bfloat16' is not supported natively on {self.device} (it would "
                "be emulated and run many times slower); use encoder_dtype='float32'."
            )
        if self.config.encoder_dtype == "float16" and self.device.type != "cuda":
            raise ValueError(
                f"encoder_dtype='float16' needs a CUDA device, not {self.device}; use "
                "encoder_dtype='float32' (or 'bfloat16' where it is native)."
            )
        first = next(sam.parameters(), None)
        if first is not None and first.device != self.device:
            sam.to(self.device)
        sam.eval()
        self.sam = sam
        self.fingerprint = model_fingerprint(sam)
        self.cache = cache if cache is not None else EmbeddingCache(self.config.cache_size)
        self.image_encoder = image_encoder
        self.encoder_backend = encoder_backend(image_encoder)
        self.prompter = Prompter(sam, self.device, self.config)
        #: Seconds each of the last encodings took (to say how long a plan will take).
        self.encoding_seconds: list[float] = []
        grid = int(sam.prompt_encoder.image_embedding_size[1])
        self.segmenter = ImageSegmenter(self.prompter, self.embed, self.embed_tile, grid=grid)
        self._learner = Learner(
            embed=self.embed,
            embed_tile=self.embed_tile,
            config=self.config,
            fingerprint=self.fingerprint,
            model_name=self.model_name,
            grid=grid,
        )

    # ------------------------------------------------------------------ encoding
    def embed(self, image: np.ndarray) -> ImageEmbedding:
        """SAM's embedding of ``image`` ((H, W) or (H, W, C), any dtype), cached."""
        return self._embed_rgb(prepare_image(image, channels=self.config.channels))

    def embed_tile(self, rgb: np.ndarray, frame_side: int) -> ImageEmbedding:
        """SAM's embedding of one prepared tile ((h, w, 3) uint8) at a fixed scale, cached.

        ``frame_side``: the tile side in image pixels that SAM's input side stands
        for, so a partial tile at the border is padded, not stretched.
        """
        return self._embed_rgb(rgb, frame_side=int(frame_side))

    def _embed_rgb(self, rgb: np.ndarray, *, frame_side: int | None = None) -> ImageEmbedding:
        # The backend is part of the key: its embeddings differ from torch's in the
        # last digits, and a result must not depend on which backend ran first.
        key = (self.fingerprint, image_digest(rgb), self.config.encoder_dtype, self.encoder_backend)
        if frame_side is not None:
            key = (*key, f"tile of {frame_side} px")  # the same pixels at another scale
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        start = time.perf_counter()
        geometry_for(self.sam, rgb.shape, frame_side=frame_side)  # bad input: its own message
        try:
            embedding = encode_image(
                self.sam,
                rgb,
                device=self.device,
                encoder_dtype=self.config.encoder_dtype,
                encoder=self.image_encoder,
                frame_side=frame_side,
            )
        except Exception as error:
            if self.image_encoder is None:
                raise
            # A runtime that loaded but fails on an image (memory, a driver) never stops
            # a run: PyTorch's own encoder takes over, for this engine's remaining images.
            warnings.warn(
                f"The image encoder runs on PyTorch instead: {self.encoder_backend} failed on "
                f"an image ({type(error).__name__}: {error}).",
                RuntimeWarning,
                stacklevel=2,
            )
            self.image_encoder, self.encoder_backend = None, "torch"
            return self._embed_rgb(rgb, frame_side=frame_side)
        self.encoding_seconds = [*self.encoding_seconds[-49:], time.perf_counter() - start]
        self.cache.put(key, embedding)
        return embedding

    def plan_tiles(self, image_shape, concept: Concept | ClassConcepts) -> list[TilePlan]:
        """The windows a run encodes for an image of ``image_shape`` (one plan per class).

        Each plan's :meth:`~.tiles.TilePlan.windows` are ``(y0, x0, y1, x1)``;
        ``sum(len(plan) for plan in plans)`` is the number of encodings (plans of the
        same scale share their encodings through the cache). Raises an
        :class:`~napari_persam.core.errors.InputError` for a plan beyond
        ``config.max_tiles``, saying how to coarsen.
        """
        members = concept.concepts.values() if isinstance(concept, ClassConcepts) else [concept]
        return plans_for(tuple(image_shape), members, config=self.config, grid=self.segmenter.grid)

    # ------------------------------------------------------------------ learning
    def learn(
        self,
        image: np.ndarray | Sequence[tuple[np.ndarray, np.ndarray]],
        mask: np.ndarray | None = None,
        *,
        negatives: np.ndarray | Sequence[np.ndarray | None] | None = None,
    ) -> Concept:
        """Learn a concept from one reference, or from several.

        Parameters
        ----------
        image : (H, W) or (H, W, C) array, or a sequence of (image, mask) pairs
            Any numeric or boolean dtype (see :func:`prepare_image`).
        mask : (H, W) array
            Nonzero pixels are the object. Omit it when ``image`` is a sequence of
            pairs.
        negatives : (H, W) array, or a sequence of them (or None) per pair, optional
            Regions marked "not this" (nonzero pixels) in the reference image: each
            8-connected region becomes a negative prototype. Empty means none; a
            negative may not overlap the object.

        Returns
        -------
        Concept
            ``target_embedding`` (C,) float32 is the mean feature of the cells the
            masks cover (coverage >= ``config.foreground_coverage``; for an object
            smaller than that, the best-covered cells). Part and background
            prototypes and the negatives are learned too (see :class:`Concept`).
        """
        pairs = list(image) if mask is None else [(image, mask)]  # type: ignore[arg-type]
        return self._learner.learn(pairs, negatives=negatives)

    def learn_classes(
        self,
        image: np.ndarray | Sequence[tuple[np.ndarray, np.ndarray]],
        labels: np.ndarray | None = None,
        *,
        values: Sequence[int] | None = None,
        negatives: np.ndarray | Sequence[np.ndarray | None] | None = None,
    ) -> ClassConcepts:
        """Learn one concept per label value of a reference label image.

        Parameters
        ----------
        image : (H, W) or (H, W, C) array, or a sequence of (image, labels) pairs
        labels : (H, W) integer array
            0 is background; every other value is a class.
        values : sequence of int, optional
            Learn only these values (default: every nonzero value present).
        negatives : (H, W) array, or a sequence of them (or None) per pair, optional
            Regions marked "not this" for every class (see :meth:`learn`).

        Returns
        -------
        ClassConcepts
            Each image is encoded once for all classes.
        """
        pairs = list(image) if labels is None else [(image, labels)]  # type: ignore[arg-type]
        return self._learner.learn_classes(pairs, values, negatives=negatives)

    def finetune(self, concept: Concept) -> Concept:
        """PerSAM-F: fit the weights of SAM's three masks to the reference mask(s).

        Returns a new :class:`Concept` with ``mask_weights`` (3,) set; ``concept`` is
        not changed. Training uses the same first-step prompts as :meth:`segment`,
        on every reference of the concept.
        """
        check_concept(concept, self.fingerprint)
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
            # Same first-step prompts as segment(), so the weights fit what they will mix.
            guidance = self.prompter.guidance(
                embedding, dataclasses.replace(concept, mask_weights=None)
            )
            prompt = self.prompter.prior_prompt(guidance)
            low_res, _ = self.prompter.decode(
                embedding,
                [prompt],
                boxes=[None],
                mask_inputs=None,
                multimask=True,
                guidance=guidance,
            )
            low_res = low_res[0]
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
    def segment(
        self, image: np.ndarray, concept: Concept | ClassConcepts
    ) -> Segmentation | LabelSegmentation:
        """Find the concept's object in ``image``.

        Parameters
        ----------
        image : (H, W) or (H, W, C) array
            Any numeric or boolean dtype.
        concept : Concept or ClassConcepts
            From :meth:`learn` / :meth:`finetune` (one object), or from
            :meth:`learn_classes` (one object per class) with the same model.

        Returns
        -------
        Segmentation
            For a Concept: ``mask`` (H, W) bool, ``similarity`` (H, W) float32,
            ``score``, ``points`` (N, 2) (y, x), ``point_labels`` (N,), ``box``.
        LabelSegmentation
            For ClassConcepts: ``labels`` (H, W) int32 holding the reference's
            values; where two classes claim a pixel the higher score wins.
        """
        return run(self.iter_segment(image, concept))

    def iter_segment(
        self, image: np.ndarray, concept: Concept | ClassConcepts
    ) -> ProgressGenerator[Segmentation | LabelSegmentation]:
        """:meth:`segment` as a progress generator counting encodings (tiles)."""
        if not isinstance(concept, ClassConcepts):
            check_concept(concept, self.fingerprint)
            return (yield from self.segmenter.iter_object(image, concept))
        for member in concept.concepts.values():
            check_concept(member, self.fingerprint)
        results = {}
        for value, member in concept.concepts.items():
            results[value] = yield from self.segmenter.iter_object(image, member)
        return merge_class_segmentations(results, tuple(np.shape(image)[:2]))

    def segment_instances(self, image: np.ndarray, concept: Concept | ClassConcepts) -> Instances:
        """Find every instance of the concept (or of each class) in ``image``.

        Candidates are local maxima of the similarity map above
        ``config.instance_threshold`` (default: from the reference), at most one per
        ``config.instance_spacing`` pixels, strongest first, at most
        ``config.max_instances``. Each runs the prompt cascade with the negative
        point, decoded in batches; a candidate already inside an accepted mask is
        skipped and a mask overlapping an accepted one beyond
        ``config.instance_iou_limit`` is dropped.

        Returns
        -------
        Instances
            ``labels`` (H, W) int32 (0 background, 1..N), ``scores`` (N,),
            ``similarity`` (H, W), ``classes`` (N,) (the class value of each object:
            for several classes, ids run across classes and ``class_map()`` gives the
            class image), ``points`` (N, 2), ``distances`` (N,) (part-aware: each
            object's distance to the reference; objects far from it, or closer to a
            negative prototype, are dropped).
        """
        return run(self.iter_segment_instances(image, concept))

    def iter_segment_instances(
        self, image: np.ndarray, concept: Concept | ClassConcepts
    ) -> ProgressGenerator[Instances]:
        """:meth:`segment_instances` as a progress generator counting encodings (tiles)."""
        members = concept.concepts if isinstance(concept, ClassConcepts) else {1: concept}
        for member in members.values():
            check_concept(member, self.fingerprint)
        found = {}
        for value, member in members.items():
            found[value] = yield from self.segmenter.iter_instances(
                image, member, class_value=value
            )
        if not isinstance(concept, ClassConcepts):
            return found[1]
        return merge_class_instances(found, iou_limit=self.config.instance_iou_limit)

    def segment_many(
        self, images: Iterable[np.ndarray], concept: Concept, *, total: int | None = None
    ) -> ProgressGenerator[list[Segmentation]]:
        """Segment several images (or the slices of a stack), yielding progress.

        A generator: each image's :class:`Segmentation` is yielded as
        ``Progress(done, total, message, index=i, result=segmentation)`` as soon as it
        is ready, and the list of all of them is returned at the end. Stop iterating
        to cancel; what was yielded stays valid.
        """
        check_concept(concept, self.fingerprint)
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

    def segment_stack(
        self,
        stack,
        concept: Concept | ClassConcepts,
        *,
        reference_index: int,
        slices: Sequence[int] | None = None,
        instances: bool = False,
        mode: str | None = None,
        keep_results: bool = True,
    ) -> ProgressGenerator[dict]:
        """Segment the slices of a (Z, H, W[, C]) stack; a progress generator.

        ``mode`` "propagate" (default from ``config.stack_mode``) walks outward from
        ``reference_index`` and prompts each slice with its neighbour's result too;
        "independent" uses the concept alone. Each slice's result is yielded as
        ``Progress(index=z, result=...)``; the dict of all results is returned
        (``keep_results=False``: none, for callers that store each result as it
        comes; only what propagation needs is kept). See
        :func:`napari_persam.core.engine.stacks.iter_segment_stack`.
        """
        members = concept.concepts if isinstance(concept, ClassConcepts) else {1: concept}
        for member in members.values():
            check_concept(member, self.fingerprint)
        return iter_segment_stack(
            stack,
            concept,
            segmenter=self.segmenter,
            reference_index=reference_index,
            slices=slices,
            instances=instances,
            mode=mode,
            keep_results=keep_results,
        )
