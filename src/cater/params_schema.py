"""The allowed shape of params.yaml, derived from the typed sections in `cater.sections`: unknown keys and values of
the wrong type are errors.

Each section maps a key to its type (or a nested mapping). `ANY_MAPPING` marks free-form named entries (prompt
generators, teacher models, the demo's split sizes) that their own builders check. `CHOICES` (from `Literal`
annotations) and `BOUNDS` (from `bounded(...)` fields) are derived the same way.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from cater.io import safe_name
from cater.sections import SECTIONS


class ConfigError(ValueError):
    """params.yaml is invalid; the message names the file and the key (re-exported by cater.config)."""


NUM = (int, float)
ANY_MAPPING = "any-mapping"


def _type_spec(annotation: Any) -> Any:
    """The isinstance spec of one annotation: a type, a tuple of types, or ANY_MAPPING."""
    if typing.get_origin(annotation) is typing.Literal:
        return str
    if typing.get_origin(annotation) in (types.UnionType, typing.Union):
        members = typing.get_args(annotation)
        if [m for m in members if m is not type(None)] == [dict]:
            return ANY_MAPPING  # `dict | None`: a mapping with a default
        flat: list[type] = []
        for member in members:
            spec = dict if member is dict else _type_spec(member)  # inside a union: a type, checked as such
            for typ in spec if isinstance(spec, tuple) else (spec,):
                if typ not in flat:
                    flat.append(typ)
        return tuple(flat)
    if annotation is float:
        return NUM
    if annotation is dict:
        return ANY_MAPPING
    if annotation in (int, str, bool, list, type(None)):
        return annotation
    raise TypeError(f"cater.sections: no params type for annotation {annotation!r}")


def _derive(cls: type, path: tuple[str, ...], choices: dict, bounds: dict) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    spec: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.metadata.get("param") is False:
            continue
        key = path + (field.name,)
        nested = field.metadata.get("section") or (hints[field.name] if dataclasses.is_dataclass(hints[field.name]) else None)
        if nested is not None:
            spec[field.name] = _derive(nested, key, choices, bounds)
            continue
        spec[field.name] = _type_spec(hints[field.name])
        if typing.get_origin(hints[field.name]) is typing.Literal:
            choices[key] = typing.get_args(hints[field.name])
        if "bounds" in field.metadata:
            bounds[key] = field.metadata["bounds"]
    return spec


CHOICES: dict[tuple[str, ...], tuple[str, ...]] = {}
# Numeric bounds: (lowest, highest, whether the lowest itself is allowed); None = unbounded on that side.
BOUNDS: dict[tuple[str, ...], tuple[float | None, float | None, bool]] = {}
SCHEMA: dict[str, Any] = {name: _derive(cls, (name,), CHOICES, BOUNDS) for name, cls in SECTIONS.items()}
SCHEMA["ablation"] = ANY_MAPPING  # cater.experiments reads it; no stage depends on it
REQUIRED_SECTIONS = tuple(SECTIONS)


def _check_bounds(value: Any, path: tuple[str, ...], where: str) -> None:
    bounds = BOUNDS.get(path)
    if bounds is None or value is None:
        return
    low, high, low_allowed = bounds
    if value != value:  # NaN
        raise ConfigError(f"{where} is NaN")
    if low is not None and (value < low or (value == low and not low_allowed)):
        raise ConfigError(f"{where} is {value!r}, must be {'>=' if low_allowed else '>'} {low}")
    if high is not None and value > high:
        raise ConfigError(f"{where} is {value!r}, must be <= {high}")


def _type_name(typ) -> str:
    if isinstance(typ, tuple):
        return " or ".join("null" if t is type(None) else t.__name__ for t in typ)
    return typ.__name__


def _check(value: Any, spec: Any, path: tuple[str, ...], source: str) -> None:
    where = f"{source}: {'.'.join(path)}"
    if spec == ANY_MAPPING:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping")
        return
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping")
        for key, sub in value.items():
            if key not in spec:
                raise ConfigError(f"{where}.{key}: unknown key (allowed: {', '.join(sorted(spec))})")
            _check(sub, spec[key], path + (key,), source)
        return
    if isinstance(value, bool) and spec is not bool and not (isinstance(spec, tuple) and bool in spec):
        raise ConfigError(f"{where} is {value!r}, expected {_type_name(spec)}")
    if not isinstance(value, spec):
        raise ConfigError(f"{where} is {value!r} ({type(value).__name__}), expected {_type_name(spec)}")
    _check_bounds(value, path, where)
    allowed = CHOICES.get(path)
    if allowed and value not in allowed:
        raise ConfigError(f"{where} is {value!r}, expected one of {', '.join(allowed)}")


def validate(params: dict[str, Any], source: str = "params.yaml", required: tuple[str, ...] = REQUIRED_SECTIONS) -> None:
    for section in required:
        if section not in params:
            raise ConfigError(f"{source}: missing section {section!r}")
    for section in params:
        if section not in SCHEMA:
            raise ConfigError(f"{source}: unknown section {section!r} (allowed: {', '.join(SCHEMA)})")
    for section, spec in SCHEMA.items():
        if section in params:
            _check(params[section], spec, (section,), source)
    _check_names(params, source)
    train = params.get("train", {})
    prompts = params.get("prompts", {}).get("generators", {})
    if train.get("prompt_generator") and prompts and train["prompt_generator"] not in prompts:
        raise ConfigError(f"{source}: train.prompt_generator {train['prompt_generator']!r} is not in prompts.generators ({', '.join(prompts)})")
    teachers = params.get("teacher", {}).get("models", {})
    if train.get("teacher") and teachers and train["teacher"] not in teachers:
        raise ConfigError(f"{source}: train.teacher {train['teacher']!r} is not in teacher.models ({', '.join(teachers)})")


# Params whose keys (or values) become path components: data/prompts/<generator>.jsonl, data/teacher/<name>/, ...
NAMED_ENTRIES = {("prompts", "generators"): "prompt generator name", ("teacher", "models"): "teacher name"}
NAME_VALUES = {("train", "prompt_generator"): "prompt generator name", ("train", "teacher"): "teacher name"}


def _check_names(params: dict[str, Any], source: str) -> None:
    """Every name that becomes a file or folder name passes `cater.io.safe_name` (no `..`, no `/`, ...)."""
    for (section, key), what in NAMED_ENTRIES.items():
        for name in (params.get(section) or {}).get(key) or {}:
            try:
                safe_name(name, what)
            except ValueError as exc:
                raise ConfigError(f"{source}: {section}.{key}: {exc}") from None
    for (section, key), what in NAME_VALUES.items():
        value = (params.get(section) or {}).get(key)
        if value is not None:
            try:
                safe_name(value, what)
            except ValueError as exc:
                raise ConfigError(f"{source}: {section}.{key}: {exc}") from None
