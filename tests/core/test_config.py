"""PerSAMConfig and its one JSON form."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from napari_persam.core.config import PerSAMConfig, config_from_dict, config_to_dict


def test_round_trip_through_json_keeps_every_field():
    config = PerSAMConfig(
        channels=(2, 0, 1),
        refinement_steps=1,
        instance_threshold=0.42,
        stack_mode="independent",
        min_area_fraction=0.0,
    )
    text = json.dumps(config_to_dict(config))
    assert config_from_dict(json.loads(text)) == config
    assert config_to_dict(config)["channels"] == [2, 0, 1]


def test_missing_fields_keep_their_defaults_and_unknown_ones_are_skipped_or_refused():
    assert config_from_dict({}) == PerSAMConfig()
    assert config_from_dict({"from_a_newer_version": 3}) == PerSAMConfig()
    with pytest.raises(ValueError, match="unknown option"):
        config_from_dict({"from_a_newer_version": 3}, ignore_unknown=False)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("refinement_steps", "2"),
        ("refinement_steps", 2.5),
        ("target_guided_attention", 1),
        ("channels", ["0"]),
        ("channels", [True]),
        ("instance_threshold", math.nan),
        ("stack_mode", 3),
        ("max_instances", None),
    ],
)
def test_a_value_of_the_wrong_type_names_its_field(field, value):
    with pytest.raises(ValueError, match=field):
        config_from_dict({field: value})


def test_values_out_of_range_are_refused_by_the_dataclass_checks():
    with pytest.raises(ValueError, match="refinement_steps"):
        config_from_dict({"refinement_steps": -1})
    with pytest.raises(ValueError, match="bad options"):
        config_from_dict({"stack_mode": "sideways"})
    with pytest.raises(ValueError, match="JSON object"):
        config_from_dict([1, 2])


def test_an_int_is_accepted_where_a_float_is_expected():
    config = config_from_dict({"min_area_fraction": 0, "instance_threshold": 1})
    assert isinstance(config.min_area_fraction, float) and config.instance_threshold == 1.0


def test_every_field_has_an_annotation_the_reader_understands():
    kinds = {"bool", "int", "float", "str", "None", "tuple[int, ...]"}
    for field in dataclasses.fields(PerSAMConfig):
        parts = {part.strip() for part in str(field.type).split("|")}
        assert parts <= kinds, f"{field.name}: {field.type} needs a rule in config_from_dict"
