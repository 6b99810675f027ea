"""The typed params sections (cater.sections): params.yaml's defaults, and the schema derived from them.

Every key of params.yaml is a field of its section's dataclass, with params.yaml's value as its default (a config
built without arguments runs the recipe); the validator's keys, types, bounds and allowed values come from the same
classes, so a new param is one field.
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from cater import choices
from cater.config import load_params
from cater.params_schema import ANY_MAPPING, BOUNDS, CHOICES, SCHEMA, ConfigError, validate
from cater.sections import SECTIONS, DistillConfig, ShapesConfig, StudentConfig, TrainConfig

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


@pytest.fixture(scope="module")
def params() -> dict:
    return load_params(REPO_PARAMS)


def defaults(cls) -> dict:
    """A dataclass's field defaults (default or default_factory), by name, nested sections as dicts."""
    out = {}
    for f in dataclasses.fields(cls):
        value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return out


def mismatches(section: dict, cls, where: str) -> list[str]:
    """params.yaml keys whose value differs from the field default (nested sections recursively)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    found, values = [], defaults(cls)
    for key, value in section.items():
        if key not in fields:
            found.append(f"{where}.{key}: no field")
            continue
        nested = fields[key].metadata.get("section") or (hints[key] if dataclasses.is_dataclass(hints[key]) else None)
        if nested is None and hints[key] in (dict, dict | None):
            continue  # a free-form mapping of named entries (generators, teacher models, split sizes): data, not a default
        if nested is not None and isinstance(value, dict):
            found += mismatches(value, nested, f"{where}.{key}")
        elif values[key] != value:
            found.append(f"{where}.{key}: params.yaml {value!r}, default {values[key]!r}")
    return found


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_every_default_is_params_yaml(params, section):
    assert mismatches(params[section], SECTIONS[section], section) == []


def test_the_configs_the_code_runs_on_are_the_sections():
    """TrainConfig().distill is DistillConfig(), and student/shapes defaults are the params' (no second copy)."""
    from cater.data.shapes import ShapesConfig as shapes_config
    from cater.distill import DistillConfig as distill_config
    from cater.models.student import StudentConfig as student_config
    from cater.train import TrainConfig as train_config

    assert (shapes_config, distill_config, student_config, train_config) == (ShapesConfig, DistillConfig,
                                                                            StudentConfig, TrainConfig)
    assert TrainConfig().distill == DistillConfig() and TrainConfig().student == {}


def test_the_schema_comes_from_the_sections():
    assert list(SCHEMA) == [*SECTIONS, "ablation"]
    assert set(SCHEMA["train"]["student"]) == {f.name for f in dataclasses.fields(StudentConfig)} - {"embed_dim", "num_frames"}
    assert SCHEMA["train"]["distill"]["temperature"] == (int, float)  # a float field takes 2 as well as 2.0
    assert SCHEMA["dataset"]["shapes"]["videos"] == ANY_MAPPING and SCHEMA["teacher"]["models"] == ANY_MAPPING
    assert SCHEMA["splits"]["val_from_train"] == (int, float, type(None))
    assert SCHEMA["dataset"]["splits"] == (list, dict, type(None))
    assert CHOICES[("train", "prompt_variant")] == choices.PROMPT_VARIANTS == ("none", "random", "frame", "event")
    assert CHOICES[("train", "student", "frame_pool")] == choices.FRAME_POOLS
    assert BOUNDS[("train", "label_fraction")] == (0, 1, False) and BOUNDS[("frames", "quality")] == (1, 100, True)


def test_a_new_field_is_a_new_param(params, monkeypatch):
    """Adding a field to a section is all it takes for params.yaml to accept (and check) the key."""
    import cater.params_schema as schema

    bad = {**params, "frames": {**params["frames"], "fps_hint": 3}}
    with pytest.raises(ConfigError, match=r"frames\.fps_hint: unknown key"):
        validate(bad)

    @dataclasses.dataclass
    class Frames(SECTIONS["frames"]):
        fps_hint: int = dataclasses.field(default=4, metadata={"bounds": (1, None, True)})

    derived_choices, derived_bounds = {}, {}
    monkeypatch.setitem(schema.SCHEMA, "frames", schema._derive(Frames, ("frames",), derived_choices, derived_bounds))
    monkeypatch.setattr(schema, "BOUNDS", {**schema.BOUNDS, **derived_bounds})
    validate(bad)
    with pytest.raises(ConfigError, match=r"frames\.fps_hint is 0, must be >= 1"):
        validate({**params, "frames": {**params["frames"], "fps_hint": 0}})
