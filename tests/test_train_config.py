"""TrainConfig's defaults are params.yaml's `train:` section: a TrainConfig built without arguments trains the recipe."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cater.config import load_params
from cater.models.student import StudentConfig
from cater.train import TrainConfig

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


@pytest.fixture(scope="module")
def train_params() -> dict:
    return load_params(REPO_PARAMS)["train"]


def defaults(cls) -> dict:
    """A dataclass's field defaults (default or default_factory), by name."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def mismatches(section: dict, fields: dict, where: str) -> list[str]:
    return [f"{where}.{key}: params.yaml {value!r}, default {fields[key]!r}"
            for key, value in section.items() if key in fields and fields[key] != value]


def test_every_train_key_has_a_trainconfig_field(train_params):
    assert set(train_params) <= set(defaults(TrainConfig))


def test_trainconfig_defaults_equal_params_yaml(train_params):
    fields = defaults(TrainConfig)
    flat = {key: value for key, value in train_params.items() if not isinstance(value, dict)}
    assert mismatches(flat, fields, "train") == []


def test_distill_defaults_equal_params_yaml(train_params):
    """train.distill is typed (DistillConfig): TrainConfig().distill holds params.yaml's values."""
    distill = dataclasses.asdict(TrainConfig().distill)
    assert set(train_params["distill"]) <= set(distill)
    assert mismatches(train_params["distill"], distill, "train.distill") == []


def test_student_defaults_equal_params_yaml(train_params):
    """train.student is StudentConfig's keyword arguments (TrainConfig().student is empty: StudentConfig's defaults)."""
    assert TrainConfig().student == {}
    student = defaults(StudentConfig)
    assert set(train_params["student"]) <= set(student)
    assert mismatches(train_params["student"], student, "train.student") == []
