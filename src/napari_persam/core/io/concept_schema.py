"""What a valid concept is, field by field: the one table concept files are checked against.

Every stored field of :class:`~napari_persam.core.engine.concepts.Concept` is declared
once in :data:`CONCEPT_FIELDS`: an array or a scalar, its type, its shape (sizes, or
named sizes such as ``"C"`` that must agree between fields of a class), its range,
and whether it may be absent. Saving writes exactly these fields and loading
checks every one of them, so a damaged or edited file is refused at load with
what is wrong, never later with a reshape error or an empty result.

A new Concept field is one entry here. Files written before it existed still
load: a field marked ``optional`` that a file lacks keeps the Concept's default.

Label values are checked here too: 1 to :data:`MAX_LABEL_VALUE` (label images
are int32; 0 is background).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_persam.core.engine.concepts import Concept
from napari_persam.core.engine.results import MAX_LABEL_VALUE

#: The file format (see :mod:`.concept_file`).
FORMAT_NAME = "napari-persam concept"
# 2 since part-aware prompting and negatives (see :mod:`.concept_file`).
FORMAT_VERSION = 2
METADATA_KEY = "metadata"
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")

ARRAY = "array"
SCALAR = "scalar"
#: Concept fields kept out of files: the model identity is stored once per file,
#: the reference images (``shots``) are large and may be private.
NOT_STORED = frozenset({"shots", "model_fingerprint", "model_name"})
#: Cosine similarities lie in [-1, 1]; float32 sums may pass the ends by rounding.
_SIMILARITY = 1.0 + 1e-3


class SchemaError(ValueError):
    """A field that does not meet its rule; the message says which and how."""


@dataclass(frozen=True)
class FieldRule:
    """The rule of one stored Concept field.

    Attributes
    ----------
    name : str
        The Concept attribute.
    kind : {"array", "scalar"}
        An ndarray (stored as its own ``.npy`` member) or a JSON scalar.
    dtype : str
        Arrays: ``"float32"`` (any real float in the file, float32 in memory) or
        ``"int32"`` (whole numbers in the file, within int32).
        Scalars: ``"float"``, ``"int"``, ``"bool"`` or ``"str"``.
    shape : tuple of int or str
        Arrays: the size of each axis; a string names a size shared by every
        field of the class that uses it (``"C"``: the model's channels), at least 1.
    optional : bool
        The field may be missing (or ``null``): the Concept's default is used.
    finite : bool
        Float values must be finite.
    low, high : float or None
        Inclusive bounds of every value.
    """

    name: str
    kind: str
    dtype: str
    shape: tuple[int | str, ...] = ()
    optional: bool = True
    finite: bool = True
    low: float | None = None
    high: float | None = None


#: Every stored Concept field. Add new fields here (and only here).
CONCEPT_FIELDS: tuple[FieldRule, ...] = (
    FieldRule("target_embedding", ARRAY, "float32", ("C",), optional=False),
    FieldRule("shot_embeddings", ARRAY, "float32", ("K", "C")),
    FieldRule("mask_weights", ARRAY, "float32", (3,)),
    FieldRule("finetune_losses", ARRAY, "float32", ("S",), finite=False),
    FieldRule("object_similarity", SCALAR, "float", low=-_SIMILARITY, high=_SIMILARITY),
    FieldRule("background_similarity", SCALAR, "float", low=-_SIMILARITY, high=_SIMILARITY),
    FieldRule("object_area", SCALAR, "float", low=0.0),
    # The painted object's scale (small objects in large images); files without
    # them are concepts of the whole-image scale.
    FieldRule("object_diameter", SCALAR, "float", low=0.0),
    FieldRule("pixels_per_cell", SCALAR, "float", low=1e-3),
    # Part-aware prompting (P²SAM) and the user's negatives: format version 2.
    FieldRule("part_cells", ARRAY, "float32", ("N", "C")),
    FieldRule("part_prototypes", ARRAY, "float32", ("P", "C")),
    FieldRule("part_groups", ARRAY, "int32", ("P",), low=1),
    FieldRule("background_prototypes", ARRAY, "float32", ("B", "C")),
    FieldRule("background_groups", ARRAY, "int32", ("B",), low=1),
    FieldRule("negative_prototypes", ARRAY, "float32", ("U", "C")),
    FieldRule("object_distance", SCALAR, "float", low=0.0),
    FieldRule("background_distance", SCALAR, "float", low=0.0),
)

RULES: dict[str, FieldRule] = {rule.name: rule for rule in CONCEPT_FIELDS}


def stored_fields() -> list[str]:
    """The Concept fields a file stores; each must have a rule in :data:`CONCEPT_FIELDS`."""
    return [field.name for field in dataclasses.fields(Concept) if field.name not in NOT_STORED]


# ------------------------------------------------------------------- label values
def check_label_value(value: Any, *, what: str = "label value") -> int:
    """``value`` as an int if it is a usable label value (1 .. MAX_LABEL_VALUE)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise SchemaError(f"{what} {value!r} is not a whole number")
    number = int(value)
    if not 1 <= number <= MAX_LABEL_VALUE:
        raise SchemaError(
            f"{what} {number} is outside 1..{MAX_LABEL_VALUE} (0 is background; label "
            "images are 32-bit)"
        )
    return number


# ------------------------------------------------------------------------ values
def check_fields(
    arrays: Mapping[str, Any],
    scalars: Mapping[str, Any],
    *,
    channels: int | None = None,
    model: str = "",
) -> dict[str, Any]:
    """The Concept keyword arguments of one class, each checked against its rule.

    Parameters
    ----------
    arrays : mapping of str to array
        The class's stored arrays by field name (as read: anything, checked here).
    scalars : mapping of str to JSON value
        The class's scalar fields by name; ``None`` stands for an absent optional
        field (array fields without data are written so).
    channels : int, optional
        The embedding length the model has, when known: ``"C"`` must equal it.
    model : str
        That model's name, for the message.

    Returns
    -------
    dict
        Field name to value (float32 arrays, Python scalars); absent optional
        fields are left out so the Concept's default applies.

    Raises
    ------
    SchemaError
        Naming the first field that breaks its rule, and the rule.
    """
    unknown = sorted(set(arrays) - set(RULES)) + sorted(set(scalars) - set(RULES))
    if unknown:
        raise SchemaError(
            f"it has concept field(s) {unknown} this napari-persam does not know (written by "
            "a newer version? then upgrade napari-persam)"
        )
    sizes: dict[str, int] = {} if channels is None else {"C": int(channels)}
    values: dict[str, Any] = {}
    for rule in CONCEPT_FIELDS:
        in_arrays, in_scalars = rule.name in arrays, rule.name in scalars
        if in_arrays and in_scalars:
            raise SchemaError(f"field {rule.name!r} is stored twice")
        content = arrays[rule.name] if in_arrays else scalars.get(rule.name)
        if content is None:
            if not rule.optional:
                raise SchemaError(f"the required field {rule.name!r} is missing")
            continue
        if rule.kind == ARRAY:
            if in_scalars:
                raise SchemaError(f"field {rule.name!r} must be an array, not {content!r}")
            values[rule.name] = _check_array(rule, content, sizes, model)
        else:
            if in_arrays:
                raise SchemaError(f"field {rule.name!r} must be a single value, not an array")
            values[rule.name] = _check_scalar(rule, content)
    return values


def split_concept(concept: Concept) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A Concept's stored fields as (arrays, scalars), checked against the rules.

    ``None`` array fields are left out. Raises :class:`SchemaError` for a value
    that would make an invalid file, and TypeError for a Concept field without a
    rule (add one to :data:`CONCEPT_FIELDS`).
    """
    missing = [name for name in stored_fields() if name not in RULES]
    if missing:
        raise TypeError(
            f"Concept field(s) {missing} have no rule in "
            "napari_persam.core.io.concept_schema.CONCEPT_FIELDS; add one."
        )
    arrays: dict[str, np.ndarray] = {}
    scalars: dict[str, Any] = {}
    for rule in CONCEPT_FIELDS:
        content = getattr(concept, rule.name)
        if content is None:
            continue
        if rule.kind == ARRAY:
            arrays[rule.name] = np.ascontiguousarray(content)
        else:
            scalars[rule.name] = content.item() if isinstance(content, np.generic) else content
    check_fields(arrays, scalars)  # never write what could not be read back
    return {name: _as_dtype(RULES[name], array) for name, array in arrays.items()}, scalars


def _as_dtype(rule: FieldRule, array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.dtype(rule.dtype))


def _check_array(rule: FieldRule, content: Any, sizes: dict[str, int], model: str) -> np.ndarray:
    if not isinstance(content, np.ndarray):
        raise SchemaError(f"field {rule.name!r} is not an array (found {type(content).__name__})")
    integral = rule.dtype == "int32"
    if integral and content.dtype.kind not in "iu":
        raise SchemaError(
            f"array {rule.name!r} has dtype {content.dtype}; it must hold whole numbers"
        )
    if (
        integral
        and content.size
        and not (
            np.iinfo(np.int32).min <= content.min() and content.max() <= np.iinfo(np.int32).max
        )
    ):
        raise SchemaError(f"array {rule.name!r} holds values beyond 32-bit integers")
    if not integral and content.dtype.kind != "f":
        raise SchemaError(f"array {rule.name!r} has dtype {content.dtype}; it must hold floats")
    if content.ndim != len(rule.shape):
        raise SchemaError(
            f"array {rule.name!r} has shape {content.shape}; it must be {_shape_text(rule)}"
        )
    for size, expected in zip(content.shape, rule.shape):
        if isinstance(expected, int):
            if size != expected:
                raise SchemaError(
                    f"array {rule.name!r} has shape {content.shape}; it must be {_shape_text(rule)}"
                )
            continue
        known = sizes.setdefault(expected, size)
        if size < 1 or size != known:
            owner = f"model {model!r}" if model else "the model"
            channel = f" (the embedding channels of {owner})" if expected == "C" else ""
            raise SchemaError(
                f"array {rule.name!r} has shape {content.shape}, but its {expected} axis must "
                f"be {known}{channel}"
                if size >= 1
                else f"array {rule.name!r} is empty (shape {content.shape})"
            )
    array = content.astype(np.dtype(rule.dtype), copy=False)
    if not integral and rule.finite and not np.isfinite(array).all():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise SchemaError(f"array {rule.name!r} holds {bad} NaN or infinite value(s)")
    _check_range(rule, array)
    return array


def _check_scalar(rule: FieldRule, content: Any) -> Any:
    kinds = {
        "float": (int, float),
        "int": (int,),
        "bool": (bool,),
        "str": (str,),
    }[rule.dtype]
    if isinstance(content, bool) != (rule.dtype == "bool") or not isinstance(content, kinds):
        raise SchemaError(f"field {rule.name!r} must be a {rule.dtype}, not {content!r}")
    if rule.dtype == "float":
        content = float(content)
        if rule.finite and not math.isfinite(content):
            raise SchemaError(f"field {rule.name!r} is {content}; it must be finite")
    if rule.dtype in ("float", "int"):
        _check_range(rule, np.asarray(content))
    return content


def _check_range(rule: FieldRule, values: np.ndarray) -> None:
    if values.size == 0:
        return
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    if finite.size == 0:
        return
    low, high = float(finite.min()), float(finite.max())
    if (rule.low is not None and low < rule.low) or (rule.high is not None and high > rule.high):
        bounds = (
            f"{'-inf' if rule.low is None else format(rule.low, '.4g')}.."
            f"{'inf' if rule.high is None else format(rule.high, '.4g')}"
        )
        shown = f"{low:g}" if low == high else f"{low:g} to {high:g}"
        raise SchemaError(f"field {rule.name!r} is {shown}, outside {bounds}")


def _shape_text(rule: FieldRule) -> str:
    return str(tuple(rule.shape)).replace("'", "")
