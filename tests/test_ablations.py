"""Ablations as DVC experiments: the grid, queue parsing, and a real 2x2 run through `dvc exp run --queue`."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import contextlib
import io
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from cater.experiments import (AXES, available_groups, AblationError, Experiment, build_grid, count_stage_runs, exp_show_json,
                             parse_group_specs, parse_queue_status, plan_waves, read_settings, read_show_json,
                             run_ablations, upstream_axes, wait_for_queue, Runner)
from helpers.dvc_workspace import REPO, make_workspace, run

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
DVC_YAML = yaml.safe_load((REPO / "dvc.yaml").read_text())
UPSTREAM = ("tiny_models", "dataset", "frames", "splits", "prompts@annotations", "teacher@videollava", "features")


def with_generators(params: dict, *names: str) -> dict:
    params = json.loads(json.dumps(params))
    for name in names:
        params["prompts"]["generators"][name] = {"backend": "annotations"}
    return params


# ---------------------------------------------------------------- the grid (fast)

def test_full_grid_dedupes_the_reference_row():
    grid = build_grid(PARAMS, seeds=3)
    teachers = list(PARAMS["teacher"]["models"])
    # one generator: no generator group
    assert [g.name for g in grid.groups] == ["prompt", "distill", "teacher", "labels", "labels_none"]
    # the reference row counted once, not in every group; labels_none at 1.0 is the distill group's `none` row
    per_seed = 4 + 4 + len(teachers) + 3 + 3 - 4
    assert len(grid.experiments) == 3 * per_seed
    names = [e.name for e in grid.experiments]
    assert len(set(names)) == len(names)
    reference = [e for e in grid.experiments if e.config == grid.reference]
    assert [e.name for e in reference] == ["prompt-event-s0", "prompt-event-s1", "prompt-event-s2"]
    assert reference[0].rows == [("prompt", "event"), ("distill", "hybrid"), ("teacher", PARAMS["train"]["teacher"]),
                                 ("labels", "1.0")]
    scarce = next(e for e in grid.experiments if e.name == "labels_none-0.1-s0")
    assert scarce.config["train.distill.mode"] == "none" and scarce.config["train.label_fraction"] == "0.1"
    none_row = next(e for e in grid.experiments if e.name == "distill-none-s0")
    assert none_row.rows == [("distill", "none"), ("labels_none", "1.0")]
    soft = next(e for e in grid.experiments if e.name == "distill-soft-s2")
    assert soft.set_params() == ["train.prompt_variant=event", "train.distill.mode=soft",
                                 f"train.teacher={PARAMS['train']['teacher']}",
                                 f"train.prompt_generator={PARAMS['train']['prompt_generator']}", "train.label_fraction=1.0",
                                 "train.choice_text=qa", "train.seed=2"]
    assert {e.name for e in grid.experiments} >= {f"teacher-{t}-s0" for t in teachers if t != PARAMS["train"]["teacher"]}


def test_subtitles_group_appears_only_for_a_dataset_with_subtitles():
    assert "subtitles" not in available_groups(PARAMS)
    with pytest.raises(AblationError, match="needs a dataset with subtitles"):
        build_grid(PARAMS, seeds=1, groups={"subtitles": None})
    tvqa = {**PARAMS, "dataset": {"name": "tvqa", "annotations": "data/raw/tvqa/annotations",
                                  "subtitles": "data/raw/tvqa/subtitles", "use_ts": True}}
    grid = build_grid(tvqa, seeds=1, groups={"prompt": ["event"], "subtitles": None})
    assert [e.name for e in grid.experiments] == ["prompt-event-s0", "subtitles-qa_subtitles-s0"]
    assert grid.experiments[0].rows == [("prompt", "event"), ("subtitles", "qa")]  # the reference row, reused
    assert "train.choice_text=qa_subtitles" in grid.experiments[1].set_params()


def test_generator_group_appears_with_several_generators():
    grid = build_grid(with_generators(PARAMS, "vicuna", "gpt-4o-mini"), seeds=1, groups={"generator": None})
    assert [e.name for e in grid.experiments] == ["generator-annotations-s0", "generator-vicuna-s0", "generator-gpt-4o-mini-s0"]
    assert grid.experiments[1].config["train.prompt_generator"] == "vicuna"
    assert grid.experiments[1].config["train.prompt_variant"] == "event"


@pytest.mark.parametrize("groups, message", [
    ({"bogus": None}, "unknown ablation group 'bogus'"),
    ({"generator": None}, "more than one entry in prompts.generators"),
    ({"prompt": ["event", "evnt"]}, "group prompt: unknown value 'evnt'"),
    ({"teacher": ["gpt5"]}, "unknown value 'gpt5'"),
])
def test_bad_group_selection_is_named(groups, message):
    with pytest.raises(AblationError, match=message):
        build_grid(PARAMS, seeds=1, groups=groups)


def test_settings_and_group_specs():
    settings = read_settings({"ablation": {"seeds": 2, "jobs": 4, "groups": {"prompt": ["none", "event"], "distill": None}}})
    assert (settings.seeds, settings.jobs, settings.groups) == (2, 4, {"prompt": ["none", "event"], "distill": None})
    assert read_settings({}).seeds == 3
    assert parse_group_specs(["prompt", "distill=none,hybrid"]) == {"prompt": None, "distill": ["none", "hybrid"]}
    with pytest.raises(AblationError, match="ablation.seeds is 0"):
        read_settings({"ablation": {"seeds": 0}})
    with pytest.raises(AblationError, match="ablation.seed: unknown key"):
        read_settings({"ablation": {"seed": 3}})


def test_ordering_around_upstream_stages():
    assert upstream_axes(DVC_YAML) == set()  # every ablation axis is a train-only param here
    grid = build_grid(PARAMS, seeds=2, groups={"prompt": ["none", "event"], "distill": ["none", "hybrid"]})
    assert plan_waves(grid.experiments, set()) == [grid.experiments]
    # a pipeline whose features stage read the prompt variant: each variant's first run goes first, alone
    feeding = json.loads(json.dumps(DVC_YAML))
    feeding["stages"]["features"]["params"] = ["features", "train.prompt_variant"]
    upstream = upstream_axes(feeding)
    assert upstream == {"train.prompt_variant"}
    first, rest = plan_waves(grid.experiments, upstream)
    assert [e.name for e in first] == ["prompt-none-s0", "prompt-event-s0"]
    assert len({e.config["train.prompt_variant"] for e in first}) == len(first)
    assert {e.name for e in rest} == {"distill-none-s0", "prompt-none-s1", "prompt-event-s1", "distill-none-s1"}


# ---------------------------------------------------------------- parsing dvc's text output (fast)

QUEUE_STATUS = """\
Task     Name      Created    Status
929d2a8  bad-s0    10:11 AM   Failed
e165fb7  good-s0   10:10 AM   Success
fc13933  good2-s0  Sep 19, 2024   Running
3775500            Sep 19, 2024  Queued

Worker status: 0 active, 2 idle
"""


def test_parse_queue_status():
    status = parse_queue_status(QUEUE_STATUS)
    assert status.tasks == {"929d2a8": ("bad-s0", "Failed"), "e165fb7": ("good-s0", "Success"),
                            "fc13933": ("good2-s0", "Running"), "3775500": ("", "Queued")}
    assert (status.active, status.idle) == (0, 2)


def test_count_stage_runs():
    log = ("Stage 'features' didn't change, skipping\nRunning stage 'train':\n> cater train\n"
           "Running stage 'eval':\n> cater eval\n")
    cached = "Stage 'features' didn't change, skipping\nStage 'train' is cached - skipping run, checking out outputs\n"
    counts = count_stage_runs([log, cached])
    assert (counts["train"].ran, counts["train"].restored) == (1, 1)
    assert (counts["features"].ran, counts["features"].skipped) == (0, 2)
    assert counts["eval"].ran == 1


# ---------------------------------------------------------------- a real run (slow)

GROUPS = {"prompt": ["none", "event"], "distill": ["none", "hybrid"]}


@pytest.fixture(scope="module")
def ablated(tmp_path_factory):
    """A small workspace (one teacher) with a 2x2 grid, 1 seed, run by `cater ablations`' library."""
    saved = {k: os.environ.get(k) for k in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL",
                                             "DVC_NO_ANALYTICS")}
    os.environ.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t.invalid", GIT_COMMITTER_NAME="t",
                      GIT_COMMITTER_EMAIL="t@t.invalid", DVC_NO_ANALYTICS="1")
    try:
        root = make_workspace(tmp_path_factory.mktemp("ablate"), {
            "teacher.models.flamingo": None, "teacher.models.chatunivi": None,
            "ablation": {"seeds": 1, "jobs": 2, "groups": GROUPS}})
        params = yaml.safe_load((root / "params.yaml").read_text())
        grid = build_grid(params, seeds=1, groups=GROUPS)
        lines: list[str] = []
        result = run_ablations(root, grid, jobs=2, echo=lines.append, poll=2.0)
        yield root, grid, result, lines
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.mark.slow
def test_grid_runs_only_train_and_eval(ablated):
    root, grid, result, lines = ablated
    assert [e.name for e in grid.experiments] == ["prompt-none-s0", "prompt-event-s0", "distill-none-s0"]
    assert result.states == {"prompt-none-s0": "success", "prompt-event-s0": "success", "distill-none-s0": "success"}
    assert result.failed == [] and result.failure_logs == {}
    for stage in UPSTREAM:  # reproduced once in the workspace, never inside an experiment
        count = result.stage_counts[stage]
        assert (count.ran, count.restored, count.skipped) == (0, 0, 3), stage
    for stage in ("train", "eval"):
        count = result.stage_counts[stage]
        # two new configurations ran; the reference equals the committed baseline, so DVC had nothing to do
        assert (count.ran, count.restored, count.skipped) == (2, 0, 1), stage
    # the baseline's dvc.lock was committed before queueing, and the tree is clean
    assert run(["git", "status", "--porcelain"], root).stdout.strip() == ""
    assert "dvc.lock" in run(["git", "show", "--stat", "--format=%s", "HEAD"], root).stdout
    assert run(["git", "rev-parse", "HEAD"], root).stdout.strip() == result.baseline


@pytest.mark.slow
def test_experiments_carry_their_params_and_metrics(ablated):
    root, grid, result, _ = ablated
    baseline = read_show_json(exp_show_json(Runner(root, echo=lambda _: None)), result.baseline)
    records = {r.name: r for r in baseline.experiments}
    assert set(records) == {e.name for e in grid.experiments}
    for exp in grid.experiments:
        record = records[exp.name]
        assert record.state == "success"
        for axis in AXES:
            node = record.params
            for key in axis.split("."):
                node = node[key]
            assert str(node) == exp.config[axis]  # label_fraction is a number in params.yaml
        assert record.test["n"] == 12 and set(record.test["per_type"]) == {"after", "count", "direction", "first"}


@pytest.mark.slow
def test_failed_experiment_is_detected_and_reported(ablated):
    root, grid, _, _ = ablated
    bad = Experiment("bad-variant-s0", {**grid.reference, "train.prompt_variant": "bogus"}, 0)
    lines: list[str] = []
    result = run_ablations(root, grid, jobs=1, echo=lines.append, poll=2.0, extra=[bad])
    assert result.states == {"prompt-none-s0": "reused", "prompt-event-s0": "reused", "distill-none-s0": "reused",
                             "bad-variant-s0": "failed"}
    assert result.failed == ["bad-variant-s0"]
    assert "train.prompt_variant" in result.failure_logs["bad-variant-s0"] and "bogus" in result.failure_logs["bad-variant-s0"]
    assert result.stage_counts["train"].ran == 1 and "eval" not in result.stage_counts  # train failed, eval never started
    # DVC lists the failed experiment with its baseline's metrics; they must not be read as its own
    show = exp_show_json(Runner(root, echo=lambda _: None))
    commit = next(c for c in show if c["rev"] == result.baseline)
    entry = next(e for e in commit["experiments"] if e["name"] == "bad-variant-s0")
    assert entry["executor"]["state"] == "failed"
    assert entry["revs"][0]["data"]["metrics"]["metrics/eval.json"] == commit["data"]["metrics"]["metrics/eval.json"]
    record = next(r for r in read_show_json(show, result.baseline).experiments if r.name == "bad-variant-s0")
    assert record.state == "failed" and record.test is None


@pytest.mark.slow
def test_command_reuses_finished_runs_and_writes_the_report(ablated, monkeypatch):
    from cater.commands.ablations import main

    root, _, _, _ = ablated
    monkeypatch.chdir(root)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([])  # groups, seeds and jobs from params.yaml's ablation section
    text = out.getvalue()
    assert code == 0, text
    assert "0 succeeded, 3 reused, 0 failed" in text
    report = (root / "reports/ablations.md").read_text()
    assert "| **event** (reference) | 1 |" in report and "| none | 1 |" in report
    assert (root / "reports/ablations/prompt.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "dvc exp show --only-changed" in text


def test_dirty_tree_stops_before_queueing(tmp_path):
    from cater.experiments import prepare_baseline

    root = make_workspace(tmp_path)
    (root / "src/cater/distill.py").write_text((root / "src/cater/distill.py").read_text() + "\n# local edit\n")
    with pytest.raises(AblationError, match=r"uncommitted changes besides dvc.lock \(src/cater/distill.py\)"):
        prepare_baseline(Runner(root, echo=lambda _: None))
    assert not (root / "dvc.lock").exists()  # stopped before `dvc repro`


class ScriptedDvc:
    """Answers `dvc queue status` from a script of outputs and records every command: the control
    logic of wait_for_queue without real workers (the real queue is exercised by the slow tests)."""

    def __init__(self, statuses: list[str]):
        self.statuses, self.calls, self.echo = list(statuses), [], (lambda _: None)

    def __call__(self, *args, **kwargs):
        self.calls.append(args)
        out = self.statuses.pop(0) if args[:3] == ("dvc", "queue", "status") else ""
        return subprocess.CompletedProcess(list(args), 0, out, "")


def status_text(rows: dict[str, str], active: int) -> str:
    lines = ["Task     Name      Created    Status"]
    lines += [f"{task}  exp-{task[:2]}    10:10 AM   {state}" for task, state in rows.items()]
    return "\n".join(lines) + f"\n\nWorker status: {active} active, 0 idle\n"


def test_workers_that_stop_early_are_restarted():
    tasks = {"exp-aa": "aaaaaaa", "exp-bb": "bbbbbbb"}
    stuck = status_text({"aaaaaaa": "Success", "bbbbbbb": "Queued"}, active=0)
    dvc = ScriptedDvc([status_text({"aaaaaaa": "Running", "bbbbbbb": "Queued"}, 1)] + [stuck] * 3
                      + [status_text({"aaaaaaa": "Success"}, 1),  # a task briefly missing from the list: not finished
                         status_text({"aaaaaaa": "Success", "bbbbbbb": "Running"}, 1),
                         status_text({"aaaaaaa": "Success", "bbbbbbb": "Failed"}, 0)])
    states, restarts = wait_for_queue(dvc, tasks, jobs=2, poll=0, stall_polls=3)
    assert states == {"exp-aa": "Success", "exp-bb": "Failed"} and restarts == 1
    starts = [c for c in dvc.calls if c[:3] == ("dvc", "queue", "start")]
    assert starts == [("dvc", "queue", "start", "-j", "2"), ("dvc", "queue", "start", "-j", "1")]
    assert dvc.calls.index(starts[1]) == 5  # right after the third poll that found queued work and no worker


@pytest.mark.slow
def test_compare_shows_axes_and_accuracy_with_its_ci_only(ablated, monkeypatch, capfd):
    from cater.commands.compare import main

    root, grid, _, _ = ablated
    monkeypatch.chdir(root)
    assert main([]) == 0
    table = capfd.readouterr().out.splitlines()
    header = next(line for line in table if line.startswith("| Experiment"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns == ["Experiment", "test.accuracy", "test.ci95_high", "test.ci95_low", "train.prompt_variant",
                       "train.distill.mode"]
    names = {e.name for e in grid.experiments}
    assert sum(any(f"[{n}]" in line for n in names) for line in table) == len(names)
    assert not any("bad-variant" in line for line in table)  # failed runs are hidden


def test_the_docs_quote_the_curated_command_as_cater_compare_runs_it():
    from cater.experiments import compare_command

    for doc in ("docs/ablations.md", "README.zh-CN.md"):
        assert compare_command() in (Path(__file__).resolve().parents[1] / doc).read_text(encoding="utf-8"), doc
