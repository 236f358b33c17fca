"""Concept files: what PerSAM learned, saved as ``.npz`` arrays plus one JSON entry.

A concept file never holds pickled objects, so loading one cannot run code
(``numpy.load(allow_pickle=False)``). Layout of format version 1:

``metadata``
    UTF-8 JSON as a uint8 array: format name and version, package version, the
    model (registry name, fingerprint, checkpoint sha256 when known), the
    :class:`PerSAMConfig` it was learned with, the label values, and one entry per
    class naming that class's arrays and scalar fields.
``class_<i>/<field>``
    The ndarray fields of class ``i``'s :class:`Concept` (``target_embedding``
    (C,) float32, ``mask_weights`` (3,) float32 when fine-tuned, ...).

New ndarray or scalar fields of :class:`Concept` (for example per-shot
embeddings) are stored by the same rule; the reference images
(``Concept.shots``) are not stored, so a loaded concept cannot be fine-tuned
again.

Format versions (see ``FORMAT_VERSION``):

1. PerSAM's concept: target and per-shot embeddings, similarity levels, PerSAM-F
   weights.
2. Adds part-aware prompting (P²SAM) and the user's negatives: ``part_cells``,
   ``part_prototypes``/``part_groups``, ``background_prototypes``/
   ``background_groups``, ``negative_prototypes`` (arrays) and
   ``object_distance``/``background_distance`` (scalars). Version 1 files still
   load: their concepts have none of these and are prompted as PerSAM does.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_persam import __version__
from napari_persam.core.config import PerSAMConfig, config_from_dict, config_to_dict
from napari_persam.core.engine.concepts import Concept

FORMAT_NAME = "napari-persam concept"
# ---- format version: 2 since part-aware prompting and negatives (see the module
# docstring); the new Concept fields are written and read by the rule below.
FORMAT_VERSION = 2
METADATA_KEY = "metadata"
#: Concept fields never written: the reference images are large and may be private.
_NOT_SAVED = frozenset({"shots"})


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


# --------------------------------------------------------------------------- saving
def save_concept(
    concept: Concept,
    path: str | os.PathLike,
    *,
    config: PerSAMConfig | None = None,
    checkpoint_sha256: str | None = None,
    label_value: int = 1,
) -> Path:
    """Write one concept to ``path`` (``.npz``; the suffix is added when missing).

    Parameters
    ----------
    concept : Concept
        From :meth:`PerSAM.learn` or :meth:`PerSAM.finetune`.
    path : path
        Target file. Written atomically: an interrupted save leaves any older file
        at ``path`` intact.
    config : PerSAMConfig, optional
        The engine options it was learned with, recorded for reuse.
    checkpoint_sha256 : str, optional
        SHA-256 of the checkpoint file of the model.
    label_value : int
        Label value the concept paints in outputs.

    Returns
    -------
    Path
        The file written.
    """
    return save_concepts(
        {label_value: concept}, path, config=config, checkpoint_sha256=checkpoint_sha256
    )


def save_concepts(
    concepts: Mapping[int, Concept],
    path: str | os.PathLike,
    *,
    config: PerSAMConfig | None = None,
    checkpoint_sha256: str | None = None,
) -> Path:
    """Write several concepts (one per label value, same model) to one file.

    See :func:`save_concept` for the parameters.
    """
    target = Path(path)
    if target.suffix != ".npz":
        target = target.with_name(target.name + ".npz")
    payload = concepts_to_bytes(concepts, config=config, checkpoint_sha256=checkpoint_sha256)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def concepts_to_bytes(
    concepts: Mapping[int, Concept],
    *,
    config: PerSAMConfig | None = None,
    checkpoint_sha256: str | None = None,
) -> bytes:
    """The bytes of a concept file (used to send concepts to Dask workers as data)."""
    if not concepts:
        raise ValueError("Nothing to save: no concept given.")
    items = [(int(value), concept) for value, concept in concepts.items()]
    if len({value for value, _ in items}) != len(items):
        raise ValueError("Label values of the concepts must be distinct.")
    first = items[0][1]
    for value, concept in items:
        if not isinstance(concept, Concept):
            raise TypeError(f"Label {value}: expected a Concept, got {type(concept).__name__}.")
        if concept.model_fingerprint != first.model_fingerprint:
            raise ValueError(
                f"The concept of label {value} was learned with another model than the "
                f"concept of label {items[0][0]}; one file holds concepts of one model."
            )
    arrays: dict[str, np.ndarray] = {}
    classes = []
    for index, (value, concept) in enumerate(items):
        entry: dict[str, Any] = {"label_value": value, "arrays": {}, "fields": {}}
        for field in dataclasses.fields(concept):
            if field.name in _NOT_SAVED or field.name in ("model_fingerprint", "model_name"):
                continue
            content = getattr(concept, field.name)
            if isinstance(content, np.ndarray):
                key = f"class_{index}/{field.name}"
                arrays[key] = np.ascontiguousarray(content)
                entry["arrays"][field.name] = key
            elif content is None or isinstance(content, (str, int, float, bool)):
                entry["fields"][field.name] = content
            else:
                raise TypeError(
                    f"Concept field {field.name!r} of type {type(content).__name__} has no "
                    "file representation; extend napari_persam.core.io.concept_file."
                )
        entry["num_shots"] = len(concept.shots)
        classes.append(entry)
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "model": {
            "name": first.model_name,
            "fingerprint": first.model_fingerprint,
            "checkpoint_sha256": checkpoint_sha256,
        },
        "config": None if config is None else config_to_dict(config),
        "label_values": [value for value, _ in items],
        "classes": classes,
    }
    arrays[METADATA_KEY] = np.frombuffer(json.dumps(metadata).encode("utf-8"), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


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
    ValueError
        If the file is not a concept file, is damaged, or was written by a newer
        napari-persam (the message says which).
    """
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"Concept file {source!r} does not exist.")
    with open(source, "rb") as stream:
        return concept_file_from_bytes(stream.read(), source=repr(source))


def concept_file_from_bytes(payload: bytes, *, source: str = "the concept data") -> ConceptFile:
    """Parse the bytes of a concept file; ``source`` names it in error messages."""
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception as error:  # zipfile, ValueError (pickled content), OSError...
        raise ValueError(
            f"{source} is not a readable napari-persam concept file ({error}). "
            "Save concepts with napari-persam learn or save_concept()."
        ) from error
    if METADATA_KEY not in arrays:
        raise ValueError(f"{source} is an .npz file but not a napari-persam concept file.")
    try:
        metadata = json.loads(arrays.pop(METADATA_KEY).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{source}: the concept metadata is damaged ({error}).") from error
    if metadata.get("format") != FORMAT_NAME:
        raise ValueError(f"{source} is not a napari-persam concept file.")
    version = int(metadata.get("format_version", 0))
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{source} uses concept format version {version}, written by napari-persam "
            f"{metadata.get('package_version', '?')}; this napari-persam ({__version__}) reads "
            f"up to version {FORMAT_VERSION}. Upgrade napari-persam."
        )
    model = metadata["model"]
    known = {field.name for field in dataclasses.fields(Concept)}
    concepts: dict[int, Concept] = {}
    for entry in metadata["classes"]:
        values: dict[str, Any] = {
            "model_fingerprint": model["fingerprint"],
            "model_name": model.get("name", ""),
        }
        for name, key in entry["arrays"].items():
            if key not in arrays:
                raise ValueError(f"{source} is damaged: array {key!r} is missing.")
            values[name] = arrays[key]
        values.update(entry["fields"])
        unknown = set(values) - known
        if unknown:
            raise ValueError(
                f"{source} has concept fields {sorted(unknown)} this napari-persam does not "
                "know; upgrade napari-persam."
            )
        concepts[int(entry["label_value"])] = Concept(**values)
    config = None
    if metadata.get("config") is not None:
        config = config_from_dict(metadata["config"])
    return ConceptFile(
        concepts=concepts,
        model_name=model.get("name", ""),
        model_fingerprint=model["fingerprint"],
        checkpoint_sha256=model.get("checkpoint_sha256"),
        config=config,
        package_version=str(metadata.get("package_version", "")),
        format_version=version,
    )
