"""Concept files: what PerSAM learned, saved as ``.npz`` arrays plus one JSON entry.

A concept file never holds pickled objects, so loading one cannot run code
(``numpy.load(allow_pickle=False)``). Layout (format version 2):

``metadata``
    UTF-8 JSON as a uint8 array: format name and version, package version, the
    model (registry name, fingerprint, checkpoint sha256 when known), the
    :class:`PerSAMConfig` it was learned with, the label values, and one entry per
    class naming that class's arrays and scalar fields.
``class_<i>/<field>``
    The ndarray fields of class ``i``'s :class:`Concept` (``target_embedding``
    (C,) float32, ``mask_weights`` (3,) float32 when fine-tuned, ...).

Which Concept fields are stored, and what makes each valid, is the table of
:mod:`.concept_schema`; reading checks the whole file against it and against the
metadata layout here, so any defect is answered with one message, "... is not a
valid concept file: <what>", before the concept is used. The reference images
(``Concept.shots``) are not stored, so a loaded concept cannot be fine-tuned again.

Format versions (see ``FORMAT_VERSION``):

1. PerSAM's concept: target and per-shot embeddings, similarity levels, PerSAM-F
   weights.
2. Adds part-aware prompting (P²SAM) and the user's negatives: ``part_cells``,
   ``part_prototypes``/``part_groups``, ``background_prototypes``/
   ``background_groups``, ``negative_prototypes`` (arrays) and
   ``object_distance``/``background_distance`` (scalars). Version 1 files still
   load: their concepts have none of these and are prompted as PerSAM does.
   Also the painted object's scale: ``object_diameter`` and ``pixels_per_cell``
   (absent: a concept of the whole-image scale, as every version-1 concept is).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_persam import __version__
from napari_persam.core.config import PerSAMConfig, config_from_dict
from napari_persam.core.engine.concepts import Concept
from napari_persam.core.errors import InputError, option
from napari_persam.core.io.concept_save import concepts_to_bytes, save_concept, save_concepts
from napari_persam.core.io.concept_schema import (
    FORMAT_NAME,
    FORMAT_VERSION,
    METADATA_KEY,
    SHA256_PATTERN,
    SchemaError,
    check_fields,
    check_label_value,
)
from napari_persam.core.models.registry import MODEL_REGISTRY

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "ConceptFile",
    "ConceptFileError",
    "concept_file_from_bytes",
    "concepts_to_bytes",
    "is_concept_file",
    "load_concept",
    "read_concept_file",
    "save_concept",
    "save_concepts",
]

_ADVICE = (
    "Save concepts with `napari-persam learn`, the widget's 'export concept' or save_concept()."
)


class ConceptFileError(InputError):
    """A file that is not a usable concept file; the message says what is wrong."""


@dataclass(frozen=True)
class ConceptFile:
    """Everything a concept file holds.

    Attributes
    ----------
    concepts : dict of int to Concept
        One concept per label value, in file order.
    model_name : str
        Registry name of the model the concepts were learned with ("" if unknown).
    model_fingerprint : str
        :func:`napari_persam.core.engine.embeddings.model_fingerprint` of that model.
    checkpoint_sha256 : str or None
        SHA-256 of the checkpoint file, when it was known at saving time.
    config : PerSAMConfig or None
        The engine options used when learning (``None`` if not recorded).
    package_version : str
        napari-persam version that wrote the file.
    format_version : int
    """

    concepts: dict[int, Concept]
    model_name: str
    model_fingerprint: str
    checkpoint_sha256: str | None
    config: PerSAMConfig | None
    package_version: str
    format_version: int

    @property
    def label_values(self) -> list[int]:
        return list(self.concepts)

    @property
    def embedding_channels(self) -> int:
        """Length of the concepts' embeddings (the model's channels)."""
        return int(next(iter(self.concepts.values())).target_embedding.shape[0])

    def check_model_name(self, model_name: str, *, source: str = "the concept file") -> None:
        """Raise a ValueError when the file names another model than ``model_name``.

        Needs no model: call it before loading (or downloading) one.
        """
        spec = MODEL_REGISTRY.get(model_name)
        if self.model_name and model_name and self.model_name != model_name:
            raise InputError(
                f"{source} was learned with model {self.model_name!r}, not with "
                f"{model_name!r}. Use {option('model')} {self.model_name!r} (and its "
                "checkpoint), or learn the concept again with this model."
            )
        if spec is not None and spec.embedding_channels != self.embedding_channels:
            raise InputError(
                f"{source} holds {self.embedding_channels}-channel embeddings, but model "
                f"{model_name!r} makes {spec.embedding_channels}-channel ones; use the model "
                "it was learned with, or learn the concept again with this model."
            )

    def check_model(
        self,
        *,
        model_name: str,
        model_fingerprint: str,
        checkpoint_sha256: str | None = None,
        source: str = "the concept file",
    ) -> None:
        """Raise a ValueError naming both models when the file's model is not this one.

        Parameters
        ----------
        model_name, model_fingerprint : str
            The model about to be used.
        checkpoint_sha256 : str, optional
            Its checkpoint's hash; compared only when both sides know one.
        source : str
            How to name the file in the message (e.g. its path).
        """
        learned = _describe(self.model_name, self.model_fingerprint, self.checkpoint_sha256)
        current = _describe(model_name, model_fingerprint, checkpoint_sha256)
        advice = (
            f" Use the model it was learned with ({self.model_name!r} and its checkpoint)"
            if self.model_name
            else " Use the model it was learned with"
        ) + ", or learn the concept again with this model."
        if self.model_name and model_name and self.model_name != model_name:
            raise ValueError(
                f"{source} was learned with model {learned}, not with {current}.{advice}"
            )
        if (
            self.checkpoint_sha256
            and checkpoint_sha256
            and self.checkpoint_sha256 != checkpoint_sha256
        ):
            raise ValueError(
                f"{source} was learned with checkpoint {learned}, but the checkpoint loaded "
                f"now is {current}.{advice}"
            )
        if self.model_fingerprint != model_fingerprint:
            raise ValueError(
                f"{source} was learned with model {learned}, but the loaded model is "
                f"{current} (other weights).{advice}"
            )


def _describe(name: str, fingerprint: str, sha256: str | None) -> str:
    text = f"{name or '(unnamed)'!r} [fingerprint {fingerprint[:12]}"
    if sha256:
        text += f", checkpoint sha256 {sha256[:12]}"
    return text + "]"


# -------------------------------------------------------------------------- loading
def load_concept(path: str | os.PathLike) -> Concept:
    """The concept in a file of one concept (see :func:`read_concept_file` for all)."""
    content = read_concept_file(path)
    if len(content.concepts) != 1:
        raise ValueError(
            f"{os.fspath(path)!r} holds {len(content.concepts)} concepts (label values "
            f"{content.label_values}); use read_concept_file() to get all of them."
        )
    return next(iter(content.concepts.values()))


def read_concept_file(path: str | os.PathLike) -> ConceptFile:
    """Read a concept file written by :func:`save_concept` or :func:`save_concepts`.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ConceptFileError
        (a ValueError) If ``path`` is a folder, the file is not a valid concept
        file (damaged, edited, another kind of file), or was written by a newer
        napari-persam; the message says which.
    """
    source = os.fspath(path)
    if os.path.isdir(source):
        raise ConceptFileError(f"{source!r} is a folder, not a concept file (.npz).")
    if not os.path.isfile(source):
        raise FileNotFoundError(f"Concept file {source!r} does not exist.")
    with open(source, "rb") as stream:
        return concept_file_from_bytes(stream.read(), source=repr(source))


def is_concept_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a readable concept file (so replacing it loses no other work)."""
    try:
        read_concept_file(path)
    except (OSError, ValueError):
        return False
    return True


def concept_file_from_bytes(payload: bytes, *, source: str = "the concept data") -> ConceptFile:
    """Parse and check the bytes of a concept file; ``source`` names it in messages.

    Raises
    ------
    ConceptFileError
        For anything that is not a valid concept file of a version this package
        reads, saying what is wrong.
    """
    members = _members(payload, source)
    metadata = _metadata(members.pop(METADATA_KEY, None), source)
    reader = _MetadataReader(metadata, source)
    return reader.concept_file(members)


def _invalid(source: str, what: str) -> ConceptFileError:
    return ConceptFileError(f"{source} is not a valid concept file: {what}. {_ADVICE}")


def _members(payload: bytes, source: str) -> dict[str, Any]:
    try:
        archive = np.load(io.BytesIO(payload), allow_pickle=False)
    except Exception as error:  # zipfile, ValueError (pickled file), OSError...
        raise _invalid(source, f"it is not an .npz archive ({_first_line(error)})") from error
    if not hasattr(archive, "files"):
        raise _invalid(source, "it is a single .npy array, not an .npz archive")
    members: dict[str, Any] = {}
    with archive:
        for key in archive.files:
            try:
                members[key] = archive[key]
            except ValueError as error:  # object arrays need pickle: never loaded
                raise _invalid(
                    source, f"its member {key!r} holds pickled Python objects ({error})"
                ) from error
            except Exception as error:  # a damaged member (bad CRC, truncated)
                what = f"its member {key!r} is damaged ({_first_line(error)})"
                raise _invalid(source, what) from error
    return members


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _metadata(member: Any, source: str) -> dict[str, Any]:
    if member is None:
        raise _invalid(source, f"it has no {METADATA_KEY!r} entry (an .npz file of other data)")
    # A member that is not a .npy array comes back as bytes; the metadata is uint8 text.
    if not isinstance(member, np.ndarray) or member.dtype != np.uint8 or member.ndim != 1:
        raise _invalid(source, f"its {METADATA_KEY!r} entry is not UTF-8 JSON text")
    try:
        metadata = json.loads(member.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _invalid(source, f"its metadata is damaged ({error})") from error
    if not isinstance(metadata, dict):
        raise _invalid(source, f"its metadata is a JSON {type(metadata).__name__}, not an object")
    return metadata


_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", int: "a whole number"}


class _MetadataReader:
    """Reads the metadata JSON entry by entry; every defect is a ConceptFileError."""

    def __init__(self, metadata: dict[str, Any], source: str) -> None:
        self.metadata = metadata
        self.source = source

    def invalid(self, what: str) -> ConceptFileError:
        return _invalid(self.source, what)

    def get(self, mapping: dict[str, Any], key: str, kind: type, where: str, **default: Any) -> Any:
        """``mapping[key]``, which must be of ``kind`` (``default=`` makes it optional)."""
        if key not in mapping or (mapping[key] is None and "default" in default):
            if "default" in default:
                return default["default"]
            raise self.invalid(f"{where} has no {key!r}")
        value = mapping[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.invalid(
                f"{where}'s {key!r} is {value!r}; it must be {_JSON_TYPES.get(kind, kind.__name__)}"
            )
        return value

    def concept_file(self, members: dict[str, Any]) -> ConceptFile:
        meta = self.metadata
        name = meta.get("format")
        if name != FORMAT_NAME:
            raise self.invalid(f"its format is {name!r}, not {FORMAT_NAME!r}")
        version = self.get(meta, "format_version", int, "the metadata")
        package = self.get(meta, "package_version", str, "the metadata", default="")
        if version < 1:
            raise self.invalid(f"its format version is {version}")
        if version > FORMAT_VERSION:
            raise ConceptFileError(
                f"{self.source} uses concept format version {version}, written by "
                f"napari-persam {package or '?'}; this napari-persam ({__version__}) reads up "
                f"to version {FORMAT_VERSION}. Upgrade napari-persam."
            )
        model = self.get(meta, "model", dict, "the metadata")
        fingerprint = self.get(model, "fingerprint", str, "the model entry")
        if not fingerprint:
            raise self.invalid("the model entry's 'fingerprint' is empty")
        model_name = self.get(model, "name", str, "the model entry", default="")
        sha256 = self.get(model, "checkpoint_sha256", str, "the model entry", default=None)
        if sha256 is not None and not SHA256_PATTERN.match(sha256):
            raise self.invalid(f"its checkpoint SHA-256 {sha256!r} is not 64 hex digits")
        config = None
        if meta.get("config") is not None:
            try:
                config = config_from_dict(self.get(meta, "config", dict, "the metadata"))
            except ValueError as error:
                raise self.invalid(f"its engine options are wrong: {error}") from error
        spec = MODEL_REGISTRY.get(model_name)
        channels = spec.embedding_channels if spec is not None else None
        concepts = self.concepts(members, fingerprint, model_name, channels)
        return ConceptFile(
            concepts=concepts,
            model_name=model_name,
            model_fingerprint=fingerprint,
            checkpoint_sha256=sha256,
            config=config,
            package_version=package,
            format_version=version,
        )

    def concepts(
        self, members: dict[str, Any], fingerprint: str, model_name: str, channels: int | None
    ) -> dict[int, Concept]:
        values = self.get(self.metadata, "label_values", list, "the metadata")
        classes = self.get(self.metadata, "classes", list, "the metadata")
        if not classes:
            raise self.invalid("it holds no concept")
        if len(values) != len(classes):
            raise self.invalid(f"it lists {len(values)} label values for {len(classes)} classes")
        used: set[str] = set()
        concepts: dict[int, Concept] = {}
        for index, (listed, entry) in enumerate(zip(values, classes)):
            where = f"class {index}"
            if not isinstance(entry, dict):
                raise self.invalid(f"{where} is {entry!r}, not an object")
            value = self.label_value(entry, listed, where)
            if value in concepts:
                raise self.invalid(f"label value {value} appears twice")
            names = self.get(entry, "arrays", dict, where)
            scalars = self.get(entry, "fields", dict, where, default={})
            self.get(entry, "num_shots", int, where, default=0)
            arrays = {}
            for field, key in names.items():
                if not isinstance(key, str) or key == METADATA_KEY or key not in members:
                    raise self.invalid(f"{where}'s array {field!r} ({key!r}) is missing")
                if key in used:
                    raise self.invalid(f"array {key!r} is used twice")
                used.add(key)
                arrays[field] = members[key]
            try:
                checked = check_fields(arrays, scalars, channels=channels, model=model_name)
                concepts[value] = Concept(
                    model_fingerprint=fingerprint, model_name=model_name, **checked
                )
            except (SchemaError, ValueError, TypeError) as error:
                raise self.invalid(f"the concept of label value {value}: {error}") from error
        unused = sorted(set(members) - used)
        if unused:
            raise self.invalid(f"its member(s) {unused} belong to no concept")
        return concepts

    def label_value(self, entry: dict[str, Any], listed: Any, where: str) -> int:
        value = entry.get("label_value")
        try:
            value = check_label_value(value)
            check_label_value(listed)
        except SchemaError as error:
            raise self.invalid(f"{where}: {error}") from error
        if value != listed:
            raise self.invalid(f"{where} has label value {value} but the list says {listed}")
        return value
