"""`cater report`: tables (mean ± std over seeds, Δ from the reference, per type) and charts from
`dvc exp show --json` in DVC 3.x's shape. A real run's output is covered in test_ablations.py."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import yaml

from cater.ablations import AblationError, build_grid, read_show_json, summarize
from cater.commands.report import main, write_report

REPO = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
TYPES = ("after", "count", "direction", "first")


def eval_metrics(accuracy: float, per_type: dict | None = None) -> dict:
    per_type = per_type or {t: accuracy for t in TYPES}
    return {"best_epoch": 3, "test": {"accuracy": accuracy, "chance": 0.2, "n": 152,
                                      "per_type": {t: {"accuracy": a, "n": 38} for t, a in per_type.items()}}}


def params_with(**train) -> dict:
    params = copy.deepcopy(PARAMS)
    distill_mode = train.pop("mode", None)
    params["train"].update(train)
    if distill_mode:
        params["train"]["distill"]["mode"] = distill_mode
    return params


def commit_data(params: dict, metrics: dict, rev: str) -> dict:
    return {"rev": rev, "timestamp": "2026-01-01T10:00:00",
            "params": {"params.yaml": {"data": params}},
            "metrics": {"metrics/eval.json": {"data": metrics}}, "deps": {}, "outs": {}, "meta": {}}


def experiment(name: str, params: dict, metrics: dict, state: str = "success") -> dict:
    rev = f"{abs(hash(name)):040x}"[:40]
    error = {"msg": "Experiment run failed", "type": ""} if state == "failed" else None
    return {"revs": [{"rev": rev, "name": name, "data": commit_data(params, metrics, rev), "error": error, "experiments": None}],
            "executor": {"state": state, "name": "dvc-task", "local": {"root": None, "log": "x", "pid": 1,
                                                                      "returncode": 0 if state == "success" else 255,
                                                                      "task_id": rev}},
            "name": name}


BASELINE_METRICS = eval_metrics(0.99)  # what DVC shows for a failed experiment: never counted


def show_json() -> list:
    ref = dict(prompt_variant="event", mode="hybrid", teacher="videollava")
    exps = [experiment(f"prompt-event-s{s}", params_with(**ref, seed=s), eval_metrics(a)) for s, a in enumerate((0.5, 0.6, 0.7))]
    exps += [experiment(f"prompt-none-s{s}", params_with(**{**ref, "prompt_variant": "none"}, seed=s), eval_metrics(a))
             for s, a in enumerate((0.3, 0.4))]
    exps.append(experiment("prompt-none-s2", params_with(**{**ref, "prompt_variant": "none"}, seed=2), BASELINE_METRICS, "failed"))
    exps.append(experiment("distill-soft-s0", params_with(**{**ref, "mode": "soft"}, seed=0),
                           eval_metrics(0.55, {"after": 0.4, "count": 0.5, "direction": 0.6, "first": 0.7})))
    exps.append(experiment("teacher-flamingo-s0", params_with(**{**ref, "teacher": "flamingo"}, seed=0), BASELINE_METRICS, "queued"))
    exps.append(experiment("lr-probe", params_with(**ref, seed=0, lr=0.1), eval_metrics(0.9)))  # not part of the grid
    workspace = {"rev": "workspace", "name": None, "data": commit_data(PARAMS, BASELINE_METRICS, "workspace"),
                 "error": None, "experiments": None}
    head = {"rev": "a" * 40, "name": "main", "data": commit_data(PARAMS, BASELINE_METRICS, "a" * 40), "error": None,
            "experiments": exps}
    return [workspace, head]


def rows(tables, group):
    return {r.value: r for t in tables if t.group.name == group for r in t.rows}


def test_summary_statistics_and_failures():
    baseline = read_show_json(show_json())
    assert baseline.rev == "a" * 40
    tables, unmatched = summarize(build_grid(baseline.params, 1), baseline)
    prompt, distill, teacher = rows(tables, "prompt"), rows(tables, "distill"), rows(tables, "teacher")
    assert prompt["event"].reference and prompt["event"].seeds == [0, 1, 2]
    assert math.isclose(prompt["event"].mean, 0.6) and math.isclose(prompt["event"].std, 0.1)
    assert prompt["none"].seeds == [0, 1] and math.isclose(prompt["none"].mean, 0.35)  # the failed seed's 0.99 is ignored
    assert math.isclose(prompt["none"].std, math.sqrt(0.005))
    assert prompt["none"].failed == ["prompt-none-s2"]
    assert distill["hybrid"].accuracies == prompt["event"].accuracies == teacher["videollava"].accuracies  # one run, three tables
    assert distill["soft"].std is None and distill["soft"].per_type["direction"] == [0.6]
    assert teacher["flamingo"].unfinished == ["teacher-flamingo-s0"] and teacher["flamingo"].mean is None
    assert [r.name for r in unmatched] == ["lr-probe"]


def test_report_markdown_and_charts(tmp_path):
    path = tmp_path / "show.json"
    path.write_text(json.dumps(show_json()))
    out = write_report(Path("reports/ablations.md"), show_json=path, root=tmp_path)
    text = out.read_text()
    assert "| none | 2 (1 failed) | 0.350 ± 0.071 | -0.250 | 152 | 0.350 | 0.350 | 0.350 | 0.350 |" in text
    assert "| **event** (reference) | 3 | 0.600 ± 0.100 | 0 (reference) | 152 |" in text
    assert "| soft | 1 | 0.550 ± – | -0.050 | 152 | 0.400 | 0.500 | 0.600 | 0.700 |" in text
    assert "| random | 0 | – | – | – |" in text
    assert "## Failed experiments" in text and "- `prompt-none-s2`" in text
    assert "`lr-probe`" in text and "0.99" not in text and "0.900" not in text
    for group in ("prompt", "distill", "teacher"):
        assert f"](ablations/{group}.png)" in text
        assert (tmp_path / f"reports/ablations/{group}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<script" not in text and "http" not in text  # plain markdown + PNG: renders offline
    assert "dvc exp show --only-changed" in text


def test_generator_group_only_with_several_generators(tmp_path):
    show = show_json()
    show[1]["data"]["params"]["params.yaml"]["data"]["prompts"]["generators"]["vicuna"] = {"backend": "annotations"}
    baseline = read_show_json(show)
    tables, _ = summarize(build_grid(baseline.params, 1), baseline)
    assert [t.group.name for t in tables] == ["prompt", "distill", "teacher", "generator"]
    assert rows(tables, "generator")["annotations"].reference


def test_cli_errors_name_the_problem(tmp_path, capsys):
    path = tmp_path / "show.json"
    path.write_text(json.dumps([show_json()[0]]))  # the workspace only: no baseline commit
    assert main(["--json", str(path), "--out", str(tmp_path / "r.md")]) == 1
    assert "no baseline commit" in capsys.readouterr().err
    path.write_text(json.dumps(show_json()))
    assert main(["--json", str(path), "--out", str(tmp_path / "r.md"), "--groups", "prompt=none,event"]) == 0
    text = (tmp_path / "r.md").read_text()
    assert "## Prompt variant" in text and "## Distillation" not in text and "| random |" not in text
    with pytest.raises(AblationError, match="no baseline commit"):
        read_show_json(show_json(), rev="b" * 7)
