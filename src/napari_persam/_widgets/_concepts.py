"""Concepts the widget learned or loaded: what a Run hands back and what it can reuse.

A Run's concept is handed from the worker to the main thread as a
:class:`LearnedConcept` in a yielded :class:`ConceptReady` step, so the widget can export it
with :mod:`napari_persam.core.io.concept_file` (the file format ``napari-persam learn``
and ``napari-persam segment --concept`` use). torch is imported only when a
function here runs, never when the widget opens.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_persam.core.config import PerSAMConfig
from napari_persam.core.progress import Progress

if TYPE_CHECKING:  # pragma: no cover
    from napari_persam.core.engine.concepts import ClassConcepts, Concept
    from napari_persam.core.io.concept_file import ConceptFile


@dataclass(frozen=True)
class LearnedConcept:
    """The concept(s) a Run used, with what a concept file records about them.

    Attributes
    ----------
    concepts : dict of int to Concept
        One concept per label value, in ascending order of the values.
    model_name : str
        Registry name of the model they belong to.
    checkpoint_sha256 : str or None
        SHA-256 of the model's checkpoint file, when known.
    config : PerSAMConfig
        The engine options of the Run.
    """

    concepts: dict[int, Concept]
    model_name: str
    checkpoint_sha256: str | None
    config: PerSAMConfig

    @property
    def label_values(self) -> list[int]:
        return list(self.concepts)

    def save(self, path: str | os.PathLike) -> Path:
        """Write a concept file (``.npz``; the suffix is added when missing).

        Returns the path written. The write is atomic: an interrupted save leaves
        an older file at ``path`` intact.
        """
        from napari_persam.core.io.concept_file import save_concepts

        return save_concepts(
            self.concepts, path, config=self.config, checkpoint_sha256=self.checkpoint_sha256
        )


@dataclass(frozen=True)
class ConceptReady(Progress):
    """The progress step saying the concept is ready, carrying it to the main thread.

    Its ``result`` stays ``None``: for every other consumer it is an ordinary
    step without an image result.

    Attributes
    ----------
    concept : LearnedConcept or None
    seconds_per_encoding : float or None
        Median time of the Run's encodings so far (for the widget's time estimate).
    """

    concept: LearnedConcept | None = None
    seconds_per_encoding: float | None = None


def learned_concept(
    concept: Concept | ClassConcepts,
    *,
    values: tuple[int, ...],
    model_name: str,
    checkpoint_sha256: str | None,
    config: PerSAMConfig,
) -> LearnedConcept:
    """Wrap the engine's concept (one Concept for ``values[0]``, or ClassConcepts)."""
    concepts = dict(concept.concepts) if hasattr(concept, "concepts") else {values[0]: concept}
    return LearnedConcept(concepts, model_name, checkpoint_sha256, config)


def read_concept(path: str | os.PathLike) -> ConceptFile:
    """A concept file's content; a ValueError saying what is wrong otherwise.

    Needs no torch. The widget reads concept files in its worker (see
    ``Job.concept_path``), never on napari's main thread.
    """
    from napari_persam.core.io.concept_file import read_concept_file

    try:
        return read_concept_file(path)
    except FileNotFoundError as error:
        raise ValueError(
            f"{error} Choose an existing concept file (.npz) in 'concept file', or clear it "
            "to learn from the reference layer."
        ) from error


#: The options a concept file decides for a Run that segments with it: how its concept
#: is prompted, as it was learned (the command line does the same unless a flag is given).
PROMPT_SETTINGS = (
    "prompt_mode",
    "min_parts",
    "max_parts",
    "min_negative_parts",
    "max_negative_parts",
    "instance_max_distance",
)


def with_prompt_settings(config: PerSAMConfig, saved: PerSAMConfig | None) -> PerSAMConfig:
    """``config`` with the prompt settings of a concept file's ``saved`` config, if any."""
    if saved is None:
        return config
    import dataclasses

    return dataclasses.replace(config, **{name: getattr(saved, name) for name in PROMPT_SETTINGS})


def check_export_target(path: str | os.PathLike) -> Path:
    """Where an export goes (``.npz`` added); refuses to replace a file that is not a concept.

    Replacing an older concept file is allowed (the save dialog has asked); any
    other existing file (an image, a mask) is the user's work and is kept.
    """
    target = Path(path)
    if target.suffix != ".npz":
        target = target.with_name(target.name + ".npz")
    if target.is_dir():
        raise ValueError(f"{str(target)!r} is a folder; choose a file name ending in .npz.")
    if target.exists() and not _is_concept_file(target):
        raise ValueError(
            f"{str(target)!r} exists and is not a concept file; it is kept. Choose another "
            "file name."
        )
    return target


def _is_concept_file(path: Path) -> bool:
    from napari_persam.core.io.concept_file import is_concept_file

    return is_concept_file(path)


def describe(content: Any) -> str:
    """A few words on a concept file's content for the status line."""
    values = ", ".join(str(value) for value in content.label_values)
    name = content.model_name or "an unnamed model"
    return f"label value(s) {values}, learned with {name}"
