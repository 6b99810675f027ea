"""The ablation grid: groups, one axis each around the reference row, times seeds; and its order around
upstream stages (an axis a stage upstream of `train` declares runs in waves)."""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from cater.choices import DISTILL_MODES, PROMPT_VARIANTS


PROMPT_AXIS = "train.prompt_variant"
DISTILL_AXIS = "train.distill.mode"
TEACHER_AXIS = "train.teacher"
GENERATOR_AXIS = "train.prompt_generator"
LABEL_AXIS = "train.label_fraction"
CHOICE_TEXT_AXIS = "train.choice_text"
SEED_KEY = "train.seed"
AXES = (PROMPT_AXIS, DISTILL_AXIS, TEACHER_AXIS, GENERATOR_AXIS, LABEL_AXIS, CHOICE_TEXT_AXIS)
GROUP_ORDER = ("prompt", "distill", "teacher", "generator", "subtitles", "labels", "labels_none")
SUBTITLE_CHOICE_TEXTS = ("qa", "qa_subtitles")  # the subtitles group: the student's text without and with subtitles
# the label-scarce setting, where distillation classically pays: labels on this fraction of train, teachers on all of it
LABEL_FRACTIONS = ("0.1", "0.25", "1.0")
EXPERIMENT_STAGES = ("train", "eval")  # the stages a queued experiment is expected to run
EVAL_METRICS = "metrics/eval.json"
SETTINGS_KEYS = {"seeds", "jobs", "groups"}


class AblationError(RuntimeError):
    """The ablation cannot start or its results cannot be read; the message says what to do."""


# ---------------------------------------------------------------- the grid

@dataclass(frozen=True)
class Group:
    name: str       # prompt | distill | teacher | generator | subtitles | labels | labels_none
    axis: str       # the dotted params key this group varies
    values: tuple[str, ...]
    title: str
    fixed: tuple[tuple[str, str], ...] = ()  # other axes this group sets away from the reference
    pair_with: str | None = None  # another group with the same values: the report contrasts the two row by row

    def config(self, reference: dict[str, str], value: str) -> dict[str, str]:
        return {**reference, **dict(self.fixed), self.axis: value}


@dataclass
class Experiment:
    name: str                      # readable and unique: prompt-event-s1
    config: dict[str, str]         # axis -> value, all four axes
    seed: int
    rows: list[tuple[str, str]] = field(default_factory=list)  # (group, value) table rows it serves

    def set_params(self) -> list[str]:
        return [f"{axis}={self.config[axis]}" for axis in AXES] + [f"{SEED_KEY}={self.seed}"]


@dataclass
class Grid:
    groups: list[Group]
    reference: dict[str, str]
    seeds: int
    experiments: list[Experiment]

    def row_config(self, group: Group, value: str) -> dict[str, str]:
        return group.config(self.reference, value)


@dataclass
class Settings:
    seeds: int = 3
    jobs: int = 2
    groups: dict[str, list[str] | None] | None = None  # None: every group the recipe has


def get_dotted(tree: dict, dotted: str) -> Any:
    node: Any = tree
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            raise KeyError(dotted)
        node = node[key]
    return node


def available_groups(params: dict) -> dict[str, Group]:
    """Every group the recipe defines; the generator group only when there is more than one generator, the
    subtitles group only when the dataset has subtitles (TVQA with dataset.subtitles)."""
    teachers = tuple(params.get("teacher", {}).get("models", {}) or ())
    generators = tuple(params.get("prompts", {}).get("generators", {}) or ())
    groups = {
        "prompt": Group("prompt", PROMPT_AXIS, PROMPT_VARIANTS, "Prompt variant"),
        "distill": Group("distill", DISTILL_AXIS, DISTILL_MODES, "Distillation"),
        "teacher": Group("teacher", TEACHER_AXIS, teachers, "Teacher"),
    }
    if len(generators) > 1:
        groups["generator"] = Group("generator", GENERATOR_AXIS, generators, "Prompt generator")
    if (params.get("dataset") or {}).get("subtitles"):
        groups["subtitles"] = Group("subtitles", CHOICE_TEXT_AXIS, SUBTITLE_CHOICE_TEXTS, "Subtitles in the student's text")
    groups["labels"] = Group("labels", LABEL_AXIS, LABEL_FRACTIONS, "Label fraction, hybrid distillation")
    groups["labels_none"] = Group("labels_none", LABEL_AXIS, LABEL_FRACTIONS, "Label fraction, no distillation",
                                  fixed=((DISTILL_AXIS, "none"),), pair_with="labels")
    return groups


def reference_config(params: dict) -> dict[str, str]:
    """Event prompts, hybrid distillation, all labels, and the teacher, generator and choice text that params.yaml names."""
    train = params.get("train", {})
    missing = [key for key in ("teacher", "prompt_generator") if key not in train]
    if missing:
        raise AblationError(f"params.yaml: train.{missing[0]} is missing (the reference row needs it)")
    return {PROMPT_AXIS: "event", DISTILL_AXIS: "hybrid", TEACHER_AXIS: str(train["teacher"]),
            GENERATOR_AXIS: str(train["prompt_generator"]), LABEL_AXIS: "1.0", CHOICE_TEXT_AXIS: str(train.get("choice_text", "qa"))}


def read_settings(params: dict, source: str = "params.yaml") -> Settings:
    """The optional `ablation:` section: seeds, jobs, groups (a list of names, or name -> values)."""
    section = params.get("ablation") or {}
    unknown = set(section) - SETTINGS_KEYS
    if unknown:
        raise AblationError(f"{source}: ablation.{sorted(unknown)[0]}: unknown key (allowed: {', '.join(sorted(SETTINGS_KEYS))})")
    settings = Settings()
    for key in ("seeds", "jobs"):
        if key in section:
            value = section[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise AblationError(f"{source}: ablation.{key} is {value!r}, expected a positive integer")
            setattr(settings, key, value)
    if "groups" in section:
        groups = section["groups"]
        if isinstance(groups, list):
            settings.groups = {str(name): None for name in groups}
        elif isinstance(groups, dict):
            settings.groups = {str(name): (None if values is None else [str(v) for v in values]) for name, values in groups.items()}
        else:
            raise AblationError(f"{source}: ablation.groups must be a list of group names or a mapping group -> values")
    return settings


def parse_group_specs(specs: Iterable[str]) -> dict[str, list[str] | None]:
    """`prompt distill=none,hybrid` -> {'prompt': None, 'distill': ['none', 'hybrid']}."""
    groups: dict[str, list[str] | None] = {}
    for spec in specs:
        name, _, values = spec.partition("=")
        groups[name.strip()] = [v.strip() for v in values.split(",") if v.strip()] if values else None
    return groups


def _safe(value: str) -> str:
    """A value as a git-ref-safe name part."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", value).strip("-.") or "x"


def build_grid(params: dict, seeds: int, groups: dict[str, list[str] | None] | None = None) -> Grid:
    """The experiments: each selected group's values around the reference, times `seeds` seeds, deduplicated."""
    if seeds < 1:
        raise AblationError(f"seeds must be at least 1, got {seeds}")
    available = available_groups(params)
    reference = reference_config(params)
    wanted = groups if groups is not None else {name: None for name in available}
    selected: list[Group] = []
    for name, values in wanted.items():
        if name not in available:
            why = {"generator": " (it needs more than one entry in prompts.generators)",
                   "subtitles": " (it needs a dataset with subtitles: dataset.subtitles)"}.get(name, "")
            raise AblationError(f"unknown ablation group {name!r}{why}; available: {', '.join(available)}")
        group = available[name]
        if values is not None:
            bad = [v for v in values if v not in group.values]
            if bad:
                raise AblationError(f"group {name}: unknown value {bad[0]!r}; allowed: {', '.join(group.values)}")
            group = Group(group.name, group.axis, tuple(values), group.title, group.fixed, group.pair_with)
        if not group.values:
            raise AblationError(f"group {name} has no values")
        selected.append(group)
    selected.sort(key=lambda g: GROUP_ORDER.index(g.name))
    by_key: dict[tuple, Experiment] = {}
    experiments: list[Experiment] = []
    for seed in range(seeds):
        for group in selected:
            for value in group.values:
                config = group.config(reference, value)
                key = (tuple(config[a] for a in AXES), seed)
                if key not in by_key:
                    by_key[key] = Experiment(f"{group.name}-{_safe(value)}-s{seed}", config, seed)
                    experiments.append(by_key[key])
                by_key[key].rows.append((group.name, value))
    names = Counter(e.name for e in experiments)
    clash = [n for n, c in names.items() if c > 1]
    if clash:
        raise AblationError(f"two experiments would share the name {clash[0]!r}: rename a teacher or generator")
    return Grid(selected, reference, seeds, experiments)


# ---------------------------------------------------------------- ordering around upstream stages

def stage_param_keys(dvc_yaml: dict) -> dict[str, list[str]]:
    """stage name -> the params keys it declares (a templated key is cut before its first `${`)."""
    result: dict[str, list[str]] = {}
    for name, stage in (dvc_yaml.get("stages") or {}).items():
        body = stage.get("do", stage) if isinstance(stage, dict) else {}
        keys: list[str] = []
        for entry in body.get("params", []) or []:
            items = [entry] if isinstance(entry, str) else [k for values in entry.values() for k in (values or [])]
            for key in items:
                key = str(key).split("${", 1)[0].rstrip(".")
                if key:
                    keys.append(key)
        result[name] = keys
    return result


def _covers(declared: str, axis: str) -> bool:
    return axis == declared or axis.startswith(declared + ".") or declared.startswith(axis + ".")


def upstream_axes(dvc_yaml: dict, axes: Iterable[str] = AXES) -> set[str]:
    """Axes that a stage other than train/eval depends on: changing them would re-run an upstream stage."""
    stages = stage_param_keys(dvc_yaml)
    return {axis for axis in axes for stage, keys in stages.items()
            if stage not in EXPERIMENT_STAGES and any(_covers(k, axis) for k in keys)}


def plan_waves(experiments: list[Experiment], upstream: set[str]) -> list[list[Experiment]]:
    """Run order. With upstream axes, the first experiment of each upstream configuration runs in a
    first wave (distinct configurations, so no upstream stage runs twice at once); the others follow
    and restore those stages from DVC's run cache. Without upstream axes: one wave."""
    if not upstream:
        return [list(experiments)]
    first, rest, seen = [], [], set()
    for exp in experiments:
        key = tuple(exp.config.get(axis) for axis in sorted(upstream))
        (rest if key in seen else first).append(exp)
        seen.add(key)
    return [wave for wave in (first, rest) if wave]
