"""Ablations as DVC experiments: the grid, the queue, failure detection, stage counts and the report.

The grid varies one axis of the recipe at a time around the reference configuration
(event prompts, hybrid distillation, the default teacher and prompt generator), each over
several seeds (`train.seed`). A configuration that appears in several groups (the reference
row) is run once and reused in each group's table.

DVC is driven through its command line (`dvc exp run --queue -S ...`, `dvc queue start`,
`dvc queue status`, `dvc queue logs`, `dvc exp show --json`). Known queue problems are handled:
workers that stop while work is still queued are restarted, and a failed experiment is
recognised by its state (`dvc exp show` lists it with the baseline's metrics, which are never used).
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

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


# ---------------------------------------------------------------- running dvc and git

def tool_env() -> dict[str, str]:
    """This interpreter's bin directory first on PATH, so `dvc` and the stages' `cater` are ours."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


class Runner:
    """Runs `dvc`/`git` in one repository; a failing command raises AblationError with its output."""

    def __init__(self, root: Path, echo: Callable[[str], None] = print):
        self.root = Path(root)
        self.echo = echo
        self.env = tool_env()

    def __call__(self, *args: str, check: bool = True, quiet: bool = False, detached: bool = False) -> subprocess.CompletedProcess:
        if not quiet:
            self.echo("$ " + " ".join(_quote(a) for a in args))
        if detached:  # a file, not a pipe: background workers keep it open, and waiting on a pipe would wait for them
            with tempfile.TemporaryFile("w+") as log:
                code = subprocess.run(list(args), cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT).returncode
                log.seek(0)
                result = subprocess.CompletedProcess(list(args), code, log.read(), "")
        else:
            result = subprocess.run(list(args), cwd=self.root, env=self.env, capture_output=True, text=True)
        if check and result.returncode != 0:
            raise AblationError(f"`{' '.join(args)}` failed ({result.returncode}):\n{(result.stdout + result.stderr).strip()[-3000:]}")
        return result


def _quote(arg: str) -> str:
    return arg if re.fullmatch(r"[\w@%+=:,./-]+", arg) else "'" + arg.replace("'", "'\\''") + "'"


def git_changes(run: Runner) -> list[str]:
    """Paths (files) with uncommitted changes, untracked ones included."""
    out = run("git", "status", "--porcelain", "-uall", quiet=True).stdout
    return [line[3:].split(" -> ")[-1].strip('"') for line in out.splitlines() if line.strip()]


def pipeline_files(root: Path) -> list[str]:
    """dvc.lock and the pipeline outputs git tracks (cache: false metrics and plots), relative paths."""
    from dvc.repo import Repo

    paths = ["dvc.lock"]
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            for out in stage.outs:
                if not out.use_cache:
                    paths.append(os.path.relpath(out.fs_path, root))
    return paths


def _is_pipeline_file(path: str, allowed: list[str]) -> bool:
    return Path(path).name == ".gitignore" or any(path == p or path.startswith(p.rstrip("/") + "/") for p in allowed)


def prepare_baseline(run: Runner) -> str:
    """`dvc repro` so every upstream output is current and cached, then commit dvc.lock (and the
    git-tracked metrics) if the tree was otherwise clean. Returns the baseline commit."""
    allowed = pipeline_files(run.root)
    foreign = [p for p in git_changes(run) if not _is_pipeline_file(p, allowed)]
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise AblationError(f"uncommitted changes besides dvc.lock ({shown}): commit or stash them first; "
                            "experiments are queued from the last commit")
    run("dvc", "repro")
    changed = git_changes(run)
    stray = [p for p in changed if not _is_pipeline_file(p, allowed)]
    if stray:
        raise AblationError(f"`dvc repro` changed files outside the pipeline outputs ({', '.join(stray[:5])}); commit them first")
    if changed:
        run("git", "add", "--", *changed)
        run("git", "commit", "-q", "-m", "dvc repro: pipeline outputs before ablations", "--", *changed)
    return run("git", "rev-parse", "HEAD", quiet=True).stdout.strip()


# ---------------------------------------------------------------- the queue

STATUS_ROW = re.compile(r"^(?P<task>[0-9a-f]{7,40})\s+(?P<middle>.*?)\s+(?P<status>Queued|Running|Success|Failed|Unknown)\s*$")
WORKERS = re.compile(r"Worker status:\s*(\d+) active,\s*(\d+) idle")


@dataclass
class QueueStatus:
    tasks: dict[str, tuple[str, str]]  # task id -> (name, status)
    active: int
    idle: int


def parse_queue_status(text: str) -> QueueStatus:
    """Parse `dvc queue status` (it has no --json): task, name, created, status; then the worker line."""
    tasks = {}
    for line in text.splitlines():
        match = STATUS_ROW.match(line.strip())
        if match:
            parts = re.split(r"\s{2,}", match["middle"].strip())
            name = parts[0] if len(parts) >= 2 else ""
            tasks[match["task"]] = (name, match["status"])
    workers = WORKERS.search(text)
    active, idle = (int(workers[1]), int(workers[2])) if workers else (0, 0)
    return QueueStatus(tasks, active, idle)


def queue_status(run: Runner) -> QueueStatus:
    return parse_queue_status(run("dvc", "queue", "status", quiet=True).stdout)


def queue_experiments(run: Runner, experiments: list[Experiment]) -> dict[str, str]:
    """`dvc exp run --queue -n NAME -S ...` for each; returns name -> task id (new tasks only)."""
    before = set(queue_status(run).tasks)
    for exp in experiments:
        args = ["dvc", "exp", "run", "--queue", "-n", exp.name]
        for assignment in exp.set_params():
            args += ["-S", assignment]
        run(*args)
    new = {name: task for task, (name, _) in queue_status(run).tasks.items() if task not in before}
    missing = [e.name for e in experiments if e.name not in new]
    if missing:
        raise AblationError(f"queued experiments missing from `dvc queue status`: {', '.join(missing)}")
    return {e.name: new[e.name] for e in experiments}


def wait_for_queue(run: Runner, tasks: dict[str, str], jobs: int, poll: float = 5.0, stall_polls: int = 3,
                   timeout: float | None = None) -> tuple[dict[str, str], int]:
    """Start `jobs` workers and wait until none of `tasks` is queued or running. Workers that all stop
    while our tasks are still queued (a known DVC queue problem) are started again.
    Returns (name -> final queue status, number of restarts)."""
    run("dvc", "queue", "start", "-j", str(max(1, min(jobs, len(tasks)))), detached=True)
    start, stalled, restarts, last = time.monotonic(), 0, 0, None
    missing: Counter = Counter()  # polls in a row a task was absent from the status (briefly, between states)
    while True:
        time.sleep(poll)
        status = queue_status(run)
        states = {name: status.tasks.get(task, ("", "Unknown"))[1] for name, task in tasks.items()}
        for name, state in states.items():
            missing[name] = missing[name] + 1 if state == "Unknown" else 0
        counts = Counter(states.values())
        summary = ", ".join(f"{counts[s]} {s.lower()}" for s in ("Queued", "Running", "Success", "Failed", "Unknown") if counts[s])
        if summary != last:
            run.echo(f"[{time.monotonic() - start:6.0f} s] {summary} (workers: {status.active} active)")
            last = summary
        vanished = all(missing[n] >= 2 * stall_polls for n, s in states.items() if s == "Unknown")
        if not counts["Queued"] and not counts["Running"] and vanished:
            return states, restarts
        stalled = stalled + 1 if counts["Queued"] and not counts["Running"] and status.active == 0 else 0
        if stalled >= stall_polls:
            restarts += 1
            run.echo(f"queue workers stopped with {counts['Queued']} experiment(s) still queued: starting them again")
            run("dvc", "queue", "start", "-j", str(max(1, min(jobs, counts["Queued"]))), detached=True)
            stalled = 0
        if timeout is not None and time.monotonic() - start > timeout:
            raise AblationError(f"experiments still unfinished after {timeout:.0f} s: {summary}")


def queue_logs(run: Runner, task: str) -> str:
    result = run("dvc", "queue", "logs", task, check=False, quiet=True)
    return result.stdout + result.stderr


RUNNING = re.compile(r"^Running stage '(?P<stage>[^']+)':", re.M)
RESTORED = re.compile(r"^Stage '(?P<stage>[^']+)' is cached - skipping run", re.M)
SKIPPED = re.compile(r"^Stage '(?P<stage>[^']+)' didn't change, skipping", re.M)


@dataclass
class StageCount:
    ran: int = 0        # the stage's command ran
    restored: int = 0   # restored from the run cache, command not run
    skipped: int = 0    # unchanged, nothing done


def count_stage_runs(logs: Iterable[str]) -> dict[str, StageCount]:
    """How often each stage actually ran across experiment logs (`dvc queue logs`)."""
    counts: dict[str, StageCount] = {}
    for text in logs:
        for pattern, attr in ((RUNNING, "ran"), (RESTORED, "restored"), (SKIPPED, "skipped")):
            for match in pattern.finditer(text):
                count = counts.setdefault(match["stage"], StageCount())
                setattr(count, attr, getattr(count, attr) + 1)
    return counts


def format_stage_counts(counts: dict[str, StageCount], experiments: int) -> str:
    lines = [f"stage runs inside {experiments} experiment(s) (ran / restored from run cache / unchanged):"]
    for stage, c in counts.items():
        lines.append(f"  {stage:<24} {c.ran:>3} / {c.restored:>3} / {c.skipped:>3}")
    return "\n".join(lines)


# ---------------------------------------------------------------- reading `dvc exp show --json`

@dataclass
class ExpRecord:
    name: str
    rev: str
    state: str                 # success | failed | queued | running
    params: dict               # the full params.yaml of the experiment
    test: dict | None          # metrics/eval.json's `test`; None unless the experiment succeeded
    timestamp: str | None = None
    task_id: str | None = None
    error: str | None = None


@dataclass
class Baseline:
    rev: str
    name: str | None
    params: dict
    experiments: list[ExpRecord]


def _params_of(data: dict) -> dict:
    return ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}


def read_show_json(show: list, rev: str | None = None) -> Baseline:
    """The baseline commit (`rev`, else the first one) and its experiments from `dvc exp show --json`
    (DVC 3.x: a list of commits, each with `experiments`: [{name, executor: {state, ...}, revs: [...]}])."""
    if not isinstance(show, list):
        raise AblationError("`dvc exp show --json`: expected a list of commits")
    commits = [c for c in show if c.get("rev") != "workspace"]
    if rev:
        commits = [c for c in commits if c.get("rev", "").startswith(rev) or c.get("name") == rev]
    if not commits:
        raise AblationError(f"`dvc exp show --json` has no baseline commit{' ' + rev if rev else ''}")
    commit = commits[0]
    records = []
    for entry in commit.get("experiments") or []:
        executor = entry.get("executor") or {}
        for item in entry.get("revs") or []:
            data = item.get("data") or {}
            error = item.get("error")
            state = executor.get("state") or ("failed" if error else "success")
            if error and state == "success":
                state = "failed"
            test = None
            if state == "success":  # a failed experiment shows its baseline's metrics: never read them
                test = (((data.get("metrics") or {}).get(EVAL_METRICS) or {}).get("data") or {}).get("test")
            records.append(ExpRecord(
                name=item.get("name") or entry.get("name") or item.get("rev", "")[:7], rev=item.get("rev", ""),
                state=state, params=_params_of(data), test=test, timestamp=data.get("timestamp"),
                task_id=(executor.get("local") or {}).get("task_id"),
                error=(error or {}).get("msg") if isinstance(error, dict) else error))
    return Baseline(commit.get("rev", ""), commit.get("name"), _params_of(commit.get("data") or {}), records)


def fill_eval_from_git(run: Runner, baseline: Baseline) -> None:
    """Experiments whose `test` block has no CI (an eval.json from before `ci95_low`/`ci95_high`: DVC's
    metrics reader drops lists) get the whole `test` block of their committed metrics/eval.json."""
    from cater.metrics import ci_of

    for record in baseline.experiments:
        if record.state != "success" or record.test is None or ci_of(record.test) is not None or not record.rev:
            continue
        shown = run("git", "show", f"{record.rev}:{EVAL_METRICS}", check=False, quiet=True)
        if shown.returncode == 0:
            record.test = (json.loads(shown.stdout).get("test") or record.test)


def exp_show_json(run: Runner, rev: str | None = None) -> list:
    args = ["dvc", "exp", "show", "--json"] + (["--rev", rev] if rev else [])
    try:
        return json.loads(run(*args, quiet=True).stdout)
    except json.JSONDecodeError as exc:
        raise AblationError(f"`{' '.join(args)}` did not print JSON ({exc})") from None


def final_states(baseline: Baseline, tasks: dict[str, str], queue_states: dict[str, str]) -> dict[str, str]:
    """name -> success | failed for the experiments we queued. A success needs `dvc exp show` to say so,
    with metrics, and the queue not to call it failed (a task may have left the queue's list)."""
    by_task = {r.task_id: r for r in baseline.experiments if r.task_id}
    result = {}
    for name, task in tasks.items():
        record = next((r for t, r in by_task.items() if t.startswith(task)), None)
        if record is None:  # no executor record (left the queue): a name is unique among an experiment's successes
            record = next((r for r in baseline.experiments if r.name == name and r.state == "success"), None)
        ok = queue_states.get(name) in ("Success", "Unknown") and record is not None and record.state == "success" \
            and record.test is not None
        result[name] = "success" if ok else "failed"
    return result


# ---------------------------------------------------------------- the whole run

@dataclass
class AblationResult:
    baseline: str
    states: dict[str, str]                 # name -> success | failed | reused
    stage_counts: dict[str, StageCount]
    failure_logs: dict[str, str]
    restarts: int
    seconds: float

    @property
    def failed(self) -> list[str]:
        return [n for n, s in self.states.items() if s == "failed"]


def run_ablations(root: Path, grid: Grid, jobs: int, echo: Callable[[str], None] = print,
                  prepare: bool = True, poll: float = 5.0, extra: list[Experiment] | None = None) -> AblationResult:
    """Reproduce and commit the baseline, queue the grid's experiments (reusing ones that already
    succeeded at this baseline), run them, and collect states, stage counts and failure logs.
    `extra` queues further experiments as they are (tests use it for a deliberately bad one)."""
    import yaml

    start = time.monotonic()
    run = Runner(root, echo)
    # parallel workers share the cores: one torch thread pool each would oversubscribe them
    run.env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, jobs))))
    baseline = prepare_baseline(run) if prepare else run("git", "rev-parse", "HEAD", quiet=True).stdout.strip()
    experiments = list(grid.experiments) + list(extra or [])
    done = {r.name for r in read_show_json(exp_show_json(run), baseline).experiments if r.state == "success"}
    reused = [e for e in experiments if e.name in done]
    todo = [e for e in experiments if e.name not in done]
    if reused:
        echo(f"reusing {len(reused)} experiment(s) that already succeeded at this baseline: {', '.join(e.name for e in reused)}")
    dvc_yaml = yaml.safe_load((Path(root) / "dvc.yaml").read_text()) or {}
    states: dict[str, str] = {e.name: "reused" for e in reused}
    tasks: dict[str, str] = {}
    restarts = 0
    for number, wave in enumerate(plan_waves(todo, upstream_axes(dvc_yaml)) if todo else [], start=1):
        echo(f"wave {number}: queueing {len(wave)} experiment(s)")
        wave_tasks = queue_experiments(run, wave)
        queue_states, wave_restarts = wait_for_queue(run, wave_tasks, jobs, poll=poll)
        restarts += wave_restarts
        show = read_show_json(exp_show_json(run), baseline)
        states.update(final_states(show, wave_tasks, queue_states))
        tasks.update(wave_tasks)
    logs = {name: queue_logs(run, task) for name, task in tasks.items()}
    failure_logs = {name: logs[name] for name, state in states.items() if state == "failed"}
    return AblationResult(baseline, states, count_stage_runs(logs.values()), failure_logs, restarts,
                          time.monotonic() - start)


def log_tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


# ---------------------------------------------------------------- the report

@dataclass
class Row:
    value: str
    config: dict[str, str]
    reference: bool
    seeds: list[int] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)
    cis: list[tuple[float, float] | None] = field(default_factory=list)   # per seed: the test accuracy's 95% CI
    n: set = field(default_factory=set)
    chance: list[float] = field(default_factory=list)
    per_type: dict[str, list[float]] = field(default_factory=dict)
    per_type_cis: dict[str, list[tuple[float, float] | None]] = field(default_factory=dict)
    baselines: list[dict] = field(default_factory=list)  # per seed: eval.json's test.baselines
    failed: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    unlabelled: list[str] = field(default_factory=list)  # succeeded, but the test split has no labels

    @property
    def mean(self) -> float | None:
        return sum(self.accuracies) / len(self.accuracies) if self.accuracies else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds (None below two seeds)."""
        k = len(self.accuracies)
        if k < 2:
            return None
        mean = self.mean
        return math.sqrt(sum((a - mean) ** 2 for a in self.accuracies) / (k - 1))

    @property
    def ci(self) -> tuple[float, float] | None:
        """The pooled 95% CI: the mean over seeds of each seed's CI bounds (None if a seed has no CI)."""
        return _mean_ci(self.cis)

    @property
    def seed_range(self) -> tuple[float, float] | None:
        return (min(self.accuracies), max(self.accuracies)) if self.accuracies else None

    def type_ci(self, qtype: str) -> tuple[float, float] | None:
        return _mean_ci(self.per_type_cis.get(qtype, []))

    def separates_from(self, other: "Row | None") -> bool | None:
        """True when this row's pooled CI and `other`'s are disjoint and every seed of one row is above
        every seed of the other; None when either row lacks results or CIs."""
        if other is None or self.ci is None or other.ci is None:
            return None
        cis_apart = self.ci[0] > other.ci[1] or self.ci[1] < other.ci[0]
        (lo, hi), (other_lo, other_hi) = self.seed_range, other.seed_range
        return cis_apart and (lo > other_hi or hi < other_lo)


def _mean_ci(cis: list) -> tuple[float, float] | None:
    if not cis or any(ci is None for ci in cis):
        return None
    return sum(ci[0] for ci in cis) / len(cis), sum(ci[1] for ci in cis) / len(cis)


def _ci_of(block: dict) -> tuple[float, float] | None:
    from cater.metrics import ci_of

    return ci_of(block)


@dataclass
class Table:
    group: Group
    rows: list[Row]

    def reference_row(self) -> Row | None:
        return next((r for r in self.rows if r.reference), None)


def _without(params: dict, keys: Iterable[str]) -> dict:
    params = copy.deepcopy(params)
    for dotted in keys:
        *parents, last = dotted.split(".")
        node = params
        for key in parents:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    return params


def summarize(grid: Grid, baseline: Baseline) -> tuple[list[Table], list[ExpRecord]]:
    """Group the baseline's experiments into the grid's rows by their params: every param but the
    axes and the seed must equal the baseline's. Returns the tables and the experiments left out."""
    common = _without(baseline.params, AXES + (SEED_KEY,))
    tables = [Table(g, [Row(v, grid.row_config(g, v), grid.row_config(g, v) == grid.reference) for v in g.values])
              for g in grid.groups]
    rows_by_config: dict[tuple, list[Row]] = {}
    for table in tables:
        for row in table.rows:
            rows_by_config.setdefault(tuple(row.config[a] for a in AXES), []).append(row)
    unmatched, chosen = [], {}
    for record in sorted(baseline.experiments, key=lambda r: r.timestamp or ""):
        try:
            config = tuple(str(get_dotted(record.params, a)) for a in AXES)
            seed = int(get_dotted(record.params, SEED_KEY))
        except (KeyError, TypeError, ValueError):
            unmatched.append(record)
            continue
        if config not in rows_by_config or _without(record.params, AXES + (SEED_KEY,)) != common:
            unmatched.append(record)
            continue
        if record.state == "success" and record.test is not None:
            if record.test.get("accuracy") is None:  # e.g. TVQA test_public: no labels, nothing to average
                for row in rows_by_config[config]:
                    row.unlabelled.append(record.name)
            else:
                chosen[(config, seed)] = record  # the newest run of a configuration and seed wins
        elif record.state == "failed":
            for row in rows_by_config[config]:
                row.failed.append(record.name)
        else:
            for row in rows_by_config[config]:
                row.unfinished.append(record.name)
    for (config, seed), record in sorted(chosen.items(), key=lambda kv: kv[0][1]):
        test = record.test
        for row in rows_by_config[config]:
            row.seeds.append(seed)
            row.accuracies.append(float(test["accuracy"]))
            row.cis.append(_ci_of(test))
            row.n.add(test.get("n"))
            if test.get("chance") is not None:
                row.chance.append(float(test["chance"]))
            if test.get("baselines"):
                row.baselines.append(test["baselines"])
            for qtype, value in (test.get("per_type") or {}).items():
                if value.get("accuracy") is not None:
                    row.per_type.setdefault(qtype, []).append(float(value["accuracy"]))
                    row.per_type_cis.setdefault(qtype, []).append(_ci_of(value))
    return tables, unmatched


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _fmt_ci(ci: tuple[float, float] | None) -> str:
    return "–" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


SEPARATES = {True: "yes", False: "no", None: "–"}


def render_table(table: Table, reference: "Row | float | None") -> str:
    """The group's markdown table. `reference` is the reference row (a float, the old reference mean,
    still gives Δ but no CI comparison); the group's own reference row is preferred when it has one."""
    own = table.reference_row()
    if own is not None and own.mean is not None:
        reference = own
    reference_row = reference if isinstance(reference, Row) else None
    reference_mean = reference_row.mean if reference_row is not None else reference
    types = sorted({t for row in table.rows for t in row.per_type})
    header = [table.group.title, "seeds", "test accuracy (mean ± std)", "95% CI", "seed range", "Δ vs reference",
              "CI separates from reference", "test n"] + types
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in table.rows:
        label = f"**{row.value}** (reference)" if row.reference else row.value
        accuracy = "–" if row.mean is None else f"{row.mean:.3f} ± {_fmt(row.std)}"
        delta = None if row.mean is None or reference_mean is None else row.mean - reference_mean
        seeds = str(len(row.seeds)) + (f" ({len(row.failed)} failed)" if row.failed else "") + (
            f" ({len(row.unfinished)} unfinished)" if row.unfinished else "") + (
            f" ({len(row.unlabelled)} without test labels)" if row.unlabelled else "")
        n = "/".join(str(v) for v in sorted(row.n, key=str)) or "–"
        seed_range = "–" if row.seed_range is None else f"{row.seed_range[0]:.3f}–{row.seed_range[1]:.3f}"
        if row.reference and row.mean is not None:
            delta_cell, separates = "0 (reference)", "reference"
        else:
            delta_cell = _fmt(delta, True)
            separates = "–" if row.mean is None else SEPARATES[row.separates_from(reference_row)]
        cells = [label, seeds, accuracy, _fmt_ci(row.ci), seed_range, delta_cell, separates, n]
        for t in types:
            if not row.per_type.get(t):
                cells.append("–")
                continue
            ci = row.type_ci(t)
            cells.append(_fmt(sum(row.per_type[t]) / len(row.per_type[t])) + ("" if ci is None else " " + _fmt_ci(ci)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


CSV_HEADER = ["group", "axis", "value", "reference", "seeds", "failed", "mean", "std", "ci95_low", "ci95_high", "seed_min",
              "seed_max", "delta_vs_reference", "ci_separates_from_reference", "test_n", "per_seed"]


def render_csv(tables: list[Table], reference: "Row | None") -> str:
    """One line per row of every group, the numbers of the markdown tables unrounded (the seed's results CSV)."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for table in tables:
        own = table.reference_row()
        ref = own if own is not None and own.mean is not None else reference
        for row in table.rows:
            delta = None if row.mean is None or ref is None or ref.mean is None else row.mean - ref.mean
            separates = "reference" if row.reference else {True: "yes", False: "no", None: ""}[row.separates_from(ref)]
            ci, seed_range = row.ci or (None, None), row.seed_range or (None, None)
            cells = [table.group.name, table.group.axis, row.value, row.reference, len(row.seeds), len(row.failed), row.mean,
                     row.std, *ci, *seed_range, delta, separates, "/".join(str(v) for v in sorted(row.n, key=str)),
                     " ".join(f"{seed}:{acc}" for seed, acc in zip(row.seeds, row.accuracies))]
            writer.writerow(["" if cell is None else cell for cell in cells])
    return buffer.getvalue()


def render_pairs(first: Table, second: Table) -> str:
    """Row by row at equal values: `first`'s row against `second`'s (e.g. hybrid vs no distillation at
    each label fraction), with the same separation rule as against the reference."""
    lines = [f"{first.group.title} vs {second.group.title}, at each `{second.group.axis}`:", "",
             f"| {second.group.axis} | {first.group.title} | {second.group.title} | Δ | CIs separate |", "|---|---:|---:|---:|---:|"]
    other = {r.value: r for r in second.rows}
    for row in first.rows:
        mate = other.get(row.value)
        if mate is None:
            continue
        cell = lambda r: "–" if r.mean is None else f"{r.mean:.3f} {_fmt_ci(r.ci)}"
        delta = None if row.mean is None or mate.mean is None else row.mean - mate.mean
        lines.append(f"| {row.value} | {cell(row)} | {cell(mate)} | {_fmt(delta, True)} | {SEPARATES[row.separates_from(mate)]} |")
    return "\n".join(lines)


def _names(rows: list[Row]) -> str:
    return ", ".join(f"`{r.value}`" for r in rows)


def conclusions(table: Table, reference: Row | None, baselines: dict[str, dict] | None = None) -> list[str]:
    """What the table allows one to say: a difference only where the CIs separate (see `Row.separates_from`)."""
    own = table.reference_row()
    if own is not None and own.mean is not None:
        reference = own
    rows = [r for r in table.rows if r.mean is not None and r is not reference and not r.reference]
    if reference is None or reference.ci is None or not rows:
        return []
    above = [r for r in rows if r.separates_from(reference) and r.mean > reference.mean]
    below = [r for r in rows if r.separates_from(reference) and r.mean < reference.mean]
    no_ci = [r for r in rows if r.ci is None]
    unclear = [r for r in rows if r not in above and r not in below and r not in no_ci]
    lines = []
    if above:
        lines.append(f"Above the reference `{reference.value}` (CIs separate): {_names(above)}.")
    if below:
        lines.append(f"Below the reference `{reference.value}` (CIs separate): {_names(below)}.")
    if unclear:
        lines.append(f"Not distinguishable from the reference `{reference.value}` (CIs overlap, or seeds on both sides; "
                     f"no difference is claimed): {_names(unclear)}.")
    if no_ci:
        lines.append(f"No CI recorded (metrics/eval.json from before CIs: re-run these experiments), "
                     f"so no comparison is made: {_names(no_ci)}.")
    best = _best_baseline(baselines)
    if best is not None:
        name, ci = best
        beaten = [r for r in [reference] + rows if r.ci is not None and r.ci[0] > ci[1]]
        not_beaten = [r for r in [reference] + rows if r.ci is not None and r not in beaten]
        if beaten:
            lines.append(f"Above the best trivial baseline ({BASELINE_TITLES[name]}, CIs separate): {_names(beaten)}.")
        if not_beaten:
            lines.append(f"Not distinguishable from the best trivial baseline ({BASELINE_TITLES[name]}): {_names(not_beaten)}.")
    return lines


BASELINE_TITLES = {"majority_letter": "majority letter", "majority_answer_per_type": "majority answer per type"}


def report_baselines(tables: list[Table]) -> tuple[dict[str, dict] | None, int]:
    """The trivial baselines of the test split (eval.json's test.baselines; they depend on the data only,
    so every experiment has the same ones). Returns the reference row's first seed's (else any row's)
    and how many distinct versions the experiments have."""
    rows = sorted((r for t in tables for r in t.rows if r.baselines), key=lambda r: not r.reference)
    distinct = {json.dumps(b, sort_keys=True) for r in rows for b in r.baselines}
    return (rows[0].baselines[0] if rows else None), len(distinct)


def _best_baseline(baselines: dict[str, dict] | None) -> tuple[str, tuple[float, float]] | None:
    candidates = [(name, _ci_of(b), b.get("accuracy")) for name, b in (baselines or {}).items() if name in BASELINE_TITLES]
    candidates = [(name, ci, acc) for name, ci, acc in candidates if ci is not None and acc is not None]
    if not candidates:
        return None
    name, ci, _ = max(candidates, key=lambda c: c[2])
    return name, ci


def render_baselines(baselines: dict[str, dict], chance: float | None, distinct: int) -> list[str]:
    lines = ["| baseline | test accuracy | 95% CI |", "|---|---:|---:|"]
    if chance is not None:
        lines.append(f"| chance (mean 1/options) | {chance:.3f} | – |")
    for name, title in BASELINE_TITLES.items():
        if name in baselines:
            lines.append(f"| {title} | {_fmt(baselines[name].get('accuracy'))} | {_fmt_ci(_ci_of(baselines[name]))} |")
    if distinct > 1:
        lines += ["", f"Note: the experiments report {distinct} different sets of baselines (their test data differ); "
                      "shown: the reference row's."]
    return lines


def render_chart(table: Table, path: Path, baselines: dict[str, dict] | None = None) -> None:
    """A bar chart of mean test accuracy with 95% CI error bars (± std where a row has no CI), chance
    and the trivial baselines as lines (Agg backend: no display, no JS)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cater.io import atomic_path

    rows = [r for r in table.rows if r.mean is not None]
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * max(len(rows), 1), 3.2), dpi=110)
    try:
        x = range(len(rows))
        below = [r.mean - r.ci[0] if r.ci else (r.std or 0.0) for r in rows]
        above = [r.ci[1] - r.mean if r.ci else (r.std or 0.0) for r in rows]
        ax.bar(x, [r.mean for r in rows], yerr=[below, above], capsize=4,
               color=["#d95f02" if r.reference else "#1b9e77" for r in rows])
        ax.set_xticks(list(x), [r.value for r in rows], rotation=20 if len(rows) > 4 else 0)
        chance = [c for r in rows for c in r.chance]
        if chance:
            ax.axhline(sum(chance) / len(chance), color="grey", linestyle="--", linewidth=1, label="chance")
        for (name, title), style in zip(BASELINE_TITLES.items(), (":", "-.")):
            value = ((baselines or {}).get(name) or {}).get("accuracy")
            if value is not None:
                ax.axhline(value, color="black", linestyle=style, linewidth=1, label=title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=7)
        ax.set_ylabel("test accuracy (95% CI)")
        ax.set_ylim(0, 1)
        ax.set_title(f"{table.group.title} ({table.group.axis})", fontsize=10)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


def build_report(grid: Grid, baseline: Baseline, out: Path, compare_command: str | None = None) -> str:
    """Write `out` (markdown) and one PNG per group beside it, in `<out stem>/`; returns the markdown."""
    from cater.io import atomic_write_text

    tables, unmatched = summarize(grid, baseline)
    reference = next((r for t in tables for r in t.rows if r.reference and r.mean is not None), None)
    baselines, distinct = report_baselines(tables)
    chance = [c for t in tables for r in t.rows for c in r.chance]
    reference_text = ", ".join(f"`{axis}={value}`" for axis, value in grid.reference.items())
    lines = [
        "# Ablations",
        "",
        f"Baseline commit `{baseline.rev[:7]}`{f' ({baseline.name})' if baseline.name else ''}. "
        f"Generated by `cater report` from `dvc exp show --json`; only experiments that succeeded are counted "
        "(a failed experiment is listed there with its baseline's metrics, which are ignored).",
        "",
        f"Reference row: {reference_text}; it is run once per seed and shared by every group. "
        "Accuracy is the mean over seeds (`train.seed`) ± the sample standard deviation; Δ is the difference of means "
        "from the reference row.",
        "",
        "**95% CI**: each seed's `metrics/eval.json` has a 95% percentile-bootstrap CI of its test accuracy that "
        "resamples videos (questions about one video are correlated); the column shows the mean over seeds of those "
        "lower and upper bounds, i.e. the test-set sampling uncertainty of one typical seed. It is not a CI of the "
        "mean over seeds: every seed is scored on the same test questions, so more seeds do not narrow it. "
        "**Seed range** is the lowest and highest seed's accuracy (training randomness). "
        "**CI separates from reference** is `yes` only when the row's CI and the reference row's CI are disjoint "
        "*and* every seed of one row is above every seed of the other; only those differences are claimed below. "
        "The per-type columns are mean accuracies per question type with their mean per-seed CIs.",
    ]
    if baselines:
        lines += ["", "## Trivial baselines (test split)", "",
                  "Fit on the train split, scored on the test split, with the same video bootstrap: `majority letter` "
                  "predicts the most frequent correct option position in train; `majority answer per type` predicts, per "
                  "question type, the choice whose text is train's most frequent correct answer (the type's majority "
                  "position when no choice has that text). A row is worth discussing only where its CI clears them.",
                  ""] + render_baselines(baselines, sum(chance) / len(chance) if chance else None, distinct)
    image_dir = out.parent / out.stem
    for table in tables:
        lines += ["", f"## {table.group.title} (`{table.group.axis}`)", "", render_table(table, reference)]
        said = conclusions(table, reference, baselines)
        if said:
            lines += [""] + said
        paired = next((t for t in tables if t.group.name == table.group.pair_with), None)
        if paired is not None:
            lines += ["", render_pairs(paired, table)]
        if any(r.mean is not None for r in table.rows):
            image = image_dir / f"{table.group.name}.png"
            render_chart(table, image, baselines)
            lines += ["", f"![{table.group.title}]({image.relative_to(out.parent).as_posix()})"]
    failed = sorted({name for t in tables for r in t.rows for name in r.failed})
    if failed:
        lines += ["", "## Failed experiments", "", "Not counted above; see `dvc queue logs <name>`:", ""]
        lines += [f"- `{name}`" for name in failed]
    if unmatched:
        lines += ["", f"{len(unmatched)} other experiment(s) at this baseline are not part of the grid and are not shown: "
                  + ", ".join(f"`{r.name}`" for r in unmatched[:10]) + (" ..." if len(unmatched) > 10 else "")]
    if compare_command:
        lines += ["", "All experiments side by side:", "", "```", compare_command, "```"]
    lines += ["", f"Every row's numbers, unrounded: [{out.stem}.csv]({out.stem}.csv)."]
    text = "\n".join(lines) + "\n"
    atomic_write_text(out.with_suffix(".csv"), render_csv(tables, reference))
    atomic_write_text(out, text)
    return text


# The curated comparison: one column per axis that varies, test accuracy kept, the noise dropped.
COMPARE_ARGS = [
    "dvc", "exp", "show", "--only-changed", "--hide-failed", "--hide-queued", "--hide-workspace",
    # dvc matches these from the start of the full column name (`metrics/eval.json:test.accuracy`)
    "--drop", r".*(loss|(^|[:.])val\.|best_val|step$|best_epoch|chance|per_type|ci95|baselines|test\.n$|[:.]lr$|models/student\.safetensors)|Created|State|Executor",
    "--keep", r".*test\.accuracy$",
    "--sort-by", f"{EVAL_METRICS}:test.accuracy", "--sort-order", "desc", "--precision", "3",
]


def compare_command() -> str:
    return " ".join(_quote(a) for a in COMPARE_ARGS)
