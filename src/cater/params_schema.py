"""The allowed shape of params.yaml: unknown keys and values of the wrong type are errors.

Each section maps a key to its type (or a nested mapping). `ANY_MAPPING` marks free-form named
entries (prompt generators, teacher models, dataset-adapter options) that their own builders check.
"""
from __future__ import annotations

from typing import Any

from cater.io import safe_name
from cater.choices import (BACKBONE_LIBRARIES, CHOICE_TEXTS, DISTILL_MODES, FRAME_CODECS, FRAME_POOLS, FUSIONS, LR_SCHEDULES,
                           MIXED_PRECISION, PROMPT_VARIANTS, SPLIT_SUBSETS, TEMPORAL_HEADS)


class ConfigError(ValueError):
    """params.yaml is invalid; the message names the file and the key (re-exported by cater.config)."""


NUM = (int, float)
OPT_INT = (int, type(None))
OPT_STR = (str, type(None))
ANY_MAPPING = "any-mapping"

SCHEMA: dict[str, Any] = {
    "dataset": {
        "name": str,
        "seed": int,
        "shapes": {"videos": ANY_MAPPING, "size": int, "fps": int, "seconds": NUM, "min_objects": int, "max_objects": int},
        # official-dataset adapters (see src/cater/data/adapters.py)
        "annotations": OPT_STR,
        "videos": (str, list, type(None)),
        "splits": (list, dict, type(None)),
        "check_videos": bool,
        "num_choices": int,
        "use_ts": bool,
        "subtitles": OPT_STR,
        "frames_dir": OPT_STR,
        "video_mapping": OPT_STR,
        "frames_root": OPT_STR,
        "min_answer_freq": int,
    },
    "frames": {"num_frames": int, "size": int, "workers": int, "skip_bad": bool, "codec": str, "quality": int},
    "splits": {"train_n": OPT_INT, "val_n": OPT_INT, "test_n": OPT_INT, "seed": int, "subset": str,
               "val_from_train": (int, float, type(None))},
    "prompts": {"batch_size": int, "max_failures": int, "generators": ANY_MAPPING},
    "teacher": {"batch_size": int, "models": ANY_MAPPING},
    "features": {"backbone": str, "pretrained": OPT_STR, "seed": int, "device": str, "batch_size": int, "text_chunk": int,
                 "truncate_text": bool, "library": str},
    "train": {
        "prompt_variant": str,
        "prompt_generator": str,
        "teacher": str,
        "distill": {"mode": str, "temperature": NUM, "label_weight": NUM, "hard_weight": NUM, "soft_weight": NUM, "align_weight": NUM,
                    "embed_weight": NUM, "embed_seed": int},
        "student": {
            "heads": int, "temporal_heads": int, "cross_layers": int, "temporal_layers": int, "dropout": NUM,
            "fusion": str, "frame_pool": str, "temporal_head": str,
            "question_conditioning": bool, "text_head": bool, "logit_scale_init": NUM, "learn_logit_scale": bool,
        },
        "choice_text": str,
        "epochs": int,
        "batch_size": int,
        "lr": NUM,
        "lr_schedule": str,
        "warmup_fraction": NUM,
        "weight_decay": NUM,
        "label_fraction": NUM,
        "seed": int,
        "backbone_on_the_fly": bool,
        "loader_workers": int,
        "mixed_precision": str,
    },
    "ablation": ANY_MAPPING,
}
REQUIRED_SECTIONS = ("dataset", "frames", "splits", "prompts", "teacher", "features", "train")
CHOICES = {
    ("train", "prompt_variant"): PROMPT_VARIANTS,
    ("train", "distill", "mode"): DISTILL_MODES,
    ("train", "choice_text"): CHOICE_TEXTS,
    ("train", "lr_schedule"): LR_SCHEDULES,
    ("splits", "subset"): SPLIT_SUBSETS,
    ("train", "student", "fusion"): FUSIONS,
    ("train", "student", "frame_pool"): FRAME_POOLS,
    ("train", "student", "temporal_head"): TEMPORAL_HEADS,
    ("train", "mixed_precision"): MIXED_PRECISION,
    ("frames", "codec"): FRAME_CODECS,
    ("features", "library"): BACKBONE_LIBRARIES,
}

# Numeric bounds: (lowest, highest, whether the lowest itself is allowed); None = unbounded on that side.
BOUNDS: dict[tuple[str, ...], tuple[float | None, float | None, bool]] = {
    ("dataset", "num_choices"): (2, 5, True),
    ("dataset", "shapes", "size"): (16, None, True),
    ("dataset", "shapes", "fps"): (1, None, True),
    ("dataset", "shapes", "seconds"): (0, None, False),
    ("frames", "num_frames"): (1, None, True),
    ("frames", "size"): (8, None, True),
    ("frames", "workers"): (1, None, True),
    ("frames", "quality"): (1, 100, True),
    ("splits", "train_n"): (1, None, True),
    ("splits", "val_n"): (1, None, True),
    ("splits", "test_n"): (1, None, True),
    ("prompts", "batch_size"): (1, None, True),
    ("prompts", "max_failures"): (0, None, True),
    ("teacher", "batch_size"): (1, None, True),
    ("features", "batch_size"): (1, None, True),
    ("features", "text_chunk"): (1, None, True),
    ("train", "epochs"): (1, None, True),
    ("train", "batch_size"): (1, None, True),
    ("train", "lr"): (0, None, False),
    ("train", "warmup_fraction"): (0, 0.999999, True),  # < 1: some steps must follow the warmup
    ("train", "weight_decay"): (0, None, True),
    ("train", "label_fraction"): (0, 1, False),
    ("train", "distill", "temperature"): (0, None, False),
    ("train", "distill", "label_weight"): (0, None, True),
    ("train", "distill", "hard_weight"): (0, None, True),
    ("train", "distill", "soft_weight"): (0, None, True),
    ("train", "distill", "align_weight"): (0, None, True),
    ("train", "distill", "embed_weight"): (0, None, True),
    ("train", "student", "heads"): (1, None, True),
    ("train", "student", "temporal_heads"): (1, None, True),
    ("train", "student", "cross_layers"): (1, None, True),
    ("train", "student", "temporal_layers"): (0, None, True),
    ("train", "student", "dropout"): (0, 1, True),
    ("train", "student", "logit_scale_init"): (0, None, False),
}


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
