"""Writing concept files (see :mod:`.concept_file` for the format and for reading them).

Every concept is checked against :mod:`.concept_schema` before a byte is written,
so a file this package writes always passes its own reader.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from napari_persam import __version__
from napari_persam.core.config import PerSAMConfig, config_to_dict
from napari_persam.core.engine.concepts import Concept
from napari_persam.core.errors import InputError
from napari_persam.core.io.concept_schema import (
    FORMAT_NAME,
    FORMAT_VERSION,
    METADATA_KEY,
    SHA256_PATTERN,
    SchemaError,
    check_label_value,
    split_concept,
)
from napari_persam.core.models.download import FILE_MODE


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
        Label value the concept paints in outputs (1 .. 2**31 - 1).

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
        os.chmod(tmp_name, FILE_MODE)  # mkstemp's files are owner-only; concepts are shared
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
    """The bytes of a concept file (used to send concepts to Dask workers as data).

    Raises
    ------
    ValueError
        For no concepts, repeated or unusable label values, concepts of different
        models, or a concept that would not pass :func:`concept_file_from_bytes`.
    """
    if not concepts:
        raise ValueError("Nothing to save: no concept given.")
    items = []
    for value, concept in concepts.items():
        try:
            items.append((check_label_value(value), concept))
        except SchemaError as error:
            raise InputError(f"Cannot save the concept: {error}.") from error
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
    if checkpoint_sha256 is not None and not SHA256_PATTERN.match(str(checkpoint_sha256)):
        raise ValueError(
            f"checkpoint_sha256 must be 64 lowercase hex digits, not {checkpoint_sha256!r}."
        )
    arrays: dict[str, np.ndarray] = {}
    classes = []
    for index, (value, concept) in enumerate(items):
        try:
            stored, scalars = split_concept(concept)
        except SchemaError as error:
            raise ValueError(f"Cannot save the concept of label {value}: {error}.") from error
        entry: dict[str, Any] = {"label_value": value, "arrays": {}, "fields": scalars}
        for name, array in stored.items():
            key = f"class_{index}/{name}"
            arrays[key] = array
            entry["arrays"][name] = key
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
