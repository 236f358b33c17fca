"""Segmenting one image with one concept, whole or in tiles, optionally steered.

The one path every mode takes for one image (PerSAM's ``segment`` and
``segment_instances``, and each slice of a stack): :meth:`ImageSegmenter.plan`
decides from the concept's learned scale whether the image is one SAM input or
several tiles (:mod:`.tiles`), and the object or the instances are found
accordingly (:mod:`.tiled` for tiles), with a neighbouring slice's masks as
extra prompts when given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from napari_persam.core.config import PerSAMConfig
from napari_persam.core.engine.concepts import Concept
from napari_persam.core.engine.embeddings import ImageEmbedding
from napari_persam.core.engine.instances import find_instances
from napari_persam.core.engine.prompting import Prompter
from napari_persam.core.engine.results import Instances, Segmentation
from napari_persam.core.engine.retrieval import segment_object
from napari_persam.core.engine.steering import propagation_prompt
from napari_persam.core.engine.tiled import (
    EmbedTile,
    TiledImage,
    iter_instances_tiled,
    iter_segment_tiled,
)
from napari_persam.core.engine.tiles import TilePlan, plan_for
from napari_persam.core.progress import Progress, ProgressGenerator

#: ``embed(image) -> ImageEmbedding``: encodes (and caches) one whole (H, W[, C]) image.
Embed = Callable[[np.ndarray], ImageEmbedding]


class ImageSegmenter:
    """Finds a concept in one image: the object, or every instance.

    Parameters
    ----------
    prompter : Prompter
        Prompts and decodes; its ``config`` holds every option.
    embed : callable
        ``embed(image)``: the cached embedding of a whole image.
    embed_tile : callable
        ``embed_tile(rgb, frame_side)``: the cached embedding of one prepared tile.
    grid : int
        Feature cells along SAM's input side (64).
    """

    def __init__(self, prompter: Prompter, embed: Embed, embed_tile: EmbedTile, *, grid: int):
        self.prompter = prompter
        self.embed = embed
        self.embed_tile = embed_tile
        self.grid = grid

    @property
    def config(self) -> PerSAMConfig:
        return self.prompter.config

    def plan(self, image_shape: Sequence[int], concept: Concept) -> TilePlan:
        """The windows an image of ``image_shape`` is encoded in for ``concept``.

        Raises an :class:`~napari_persam.core.errors.InputError` when the plan would
        exceed ``config.max_tiles``, saying how to coarsen.
        """
        return plan_for(
            image_shape,
            pixels_per_cell=concept.pixels_per_cell,
            object_diameter=concept.object_diameter,
            config=self.config,
            grid=self.grid,
        )

    def iter_object(
        self, image, concept: Concept, *, previous: np.ndarray | None = None
    ) -> ProgressGenerator[Segmentation]:
        """The concept's object in ``image`` (a progress generator counting encodings).

        ``previous`` (H, W) bool: the object in the neighbouring slice, which then
        prompts this one too (propagation).
        """
        plan = self.plan(np.shape(image), concept)
        cfg = self.config
        if plan.tiled:
            source = TiledImage(image, channels=cfg.channels)
            return (
                yield from iter_segment_tiled(
                    self.prompter,
                    self.embed_tile,
                    source,
                    concept,
                    plan,
                    steer=previous,
                    steering=self._steering,
                )
            )
        embedding = self.embed(np.asarray(image))
        yield Progress(1, 1, "encoded the image")
        if previous is None:
            # The prompts config.prompt_mode asks for (PerSAM's, or part-aware), and
            # the user's negatives.
            return segment_object(self.prompter, embedding, concept)
        guidance = self.prompter.guidance(embedding, concept)
        prompt = self._steering(previous, guidance.similarity)
        return self.prompter.segment(embedding, concept, prompt=prompt, guidance=guidance)

    def iter_instances(
        self,
        image,
        concept: Concept,
        *,
        previous: Sequence[np.ndarray] = (),
        class_value: int = 1,
    ) -> ProgressGenerator[Instances]:
        """Every instance of the concept in ``image`` (a progress generator).

        ``previous``: (H, W) bool masks of objects in the neighbouring slice; each
        is tried first, prompted as in propagation, so it keeps being followed.
        """
        plan = self.plan(np.shape(image), concept)
        if plan.tiled:
            source = TiledImage(image, channels=self.config.channels)
            return (
                yield from iter_instances_tiled(
                    self.prompter,
                    self.embed_tile,
                    source,
                    concept,
                    plan,
                    class_value=class_value,
                    previous=previous,
                    steering=self._steering,
                )
            )
        embedding = self.embed(np.asarray(image))
        yield Progress(1, 1, "encoded the image")
        guidance = self.prompter.guidance(embedding, concept)
        seeds = [self._steering(mask, guidance.similarity) for mask in previous]
        return find_instances(
            self.prompter,
            embedding,
            concept,
            class_value=class_value,
            seeds=seeds,
            guidance=guidance,
        )

    def _steering(self, previous: np.ndarray, similarity: np.ndarray):
        cfg = self.config
        return propagation_prompt(
            previous,
            similarity,
            margin=cfg.propagation_margin,
            negative=cfg.negative_prior,
        )
