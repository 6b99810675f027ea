"""`cater report`: tables (mean ± std over seeds, Δ from the reference, per type) and charts from
`dvc exp show --json` in DVC 3.x's shape. A real run's output is covered in test_ablations.py."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import yaml

from cater.experiments import AblationError, build_grid, read_show_json, summarize
from cater.commands.report import main, write_report

REPO = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
TYPES = ("after", "count", "direction", "first")


BASELINES = {"majority_letter": {"accuracy": 0.2, "ci95": [0.15, 0.25]},
             "majority_answer_per_type": {"accuracy": 0.25, "ci95": [0.18, 0.32]}}


def ci(accuracy: float, half_width: float) -> list[float]:
    return [round(accuracy - half_width, 4), round(accuracy + half_width, 4)]


def eval_metrics(accuracy: float | None, per_type: dict | None = None, with_ci: bool = True) -> dict:
    """metrics/eval.json as `cater eval` writes it: CIs ±0.07 overall and ±0.15 per type, and the baselines."""
    per_type = per_type or {t: accuracy for t in TYPES}
    test = {"accuracy": accuracy, "chance": 0.2, "n": 152,
            "per_type": {t: {"accuracy": a, "n": 38} for t, a in per_type.items()}}
    if with_ci and accuracy is not None:
        test["ci95"] = ci(accuracy, 0.07)
        test["baselines"] = copy.deepcopy(BASELINES)
        for t, a in per_type.items():
            test["per_type"][t].update(ci95=ci(a, 0.15), **copy.deepcopy(BASELINES))
    return {"best_epoch": 3, "test": test}


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
    # CIs separate from the reference's, but one seed lies inside the reference's seed range: no claim
    exps += [experiment(f"distill-hard-s{s}", params_with(**{**ref, "mode": "hard"}, seed=s), eval_metrics(a))
             for s, a in enumerate((0.1, 0.1, 0.55))]
    exps.append(experiment("distill-none-s0", params_with(**{**ref, "mode": "none"}, seed=0), eval_metrics(None)))  # no labels
    exps.append(experiment("teacher-chatunivi-s0", params_with(**{**ref, "teacher": "chatunivi"}, seed=0),
                           eval_metrics(0.2, with_ci=False)))  # written before eval.json had CIs
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
    # the pooled CI is the mean of the seeds' bounds; the seed range is min/max accuracy
    assert prompt["event"].ci == pytest.approx((0.53, 0.67)) and prompt["event"].seed_range == (0.5, 0.7)
    assert prompt["none"].ci == pytest.approx((0.28, 0.42)) and prompt["none"].type_ci("first") == pytest.approx((0.2, 0.5))
    assert prompt["none"].separates_from(prompt["event"]) is True
    assert distill["soft"].separates_from(prompt["event"]) is False  # CIs overlap
    assert distill["hard"].ci == pytest.approx((0.18, 0.32))  # disjoint from [0.53, 0.67] ...
    assert distill["hard"].separates_from(prompt["event"]) is False  # ... but its 0.55 seed is inside 0.5-0.7
    assert distill["none"].unlabelled == ["distill-none-s0"] and distill["none"].mean is None
    assert teacher["chatunivi"].mean == 0.2 and teacher["chatunivi"].ci is None
    assert teacher["chatunivi"].separates_from(prompt["event"]) is None  # no CI: cannot tell


def test_report_markdown_and_charts(tmp_path):
    path = tmp_path / "show.json"
    path.write_text(json.dumps(show_json()))
    out = write_report(Path("reports/ablations.md"), show_json=path, root=tmp_path)
    text = out.read_text()
    assert ("| Prompt variant | seeds | test accuracy (mean ± std) | 95% CI | seed range | Δ vs reference "
            "| CI separates from reference | test n | after | count | direction | first |") in text
    assert ("| none | 2 (1 failed) | 0.350 ± 0.071 | [0.280, 0.420] | 0.300–0.400 | -0.250 | yes | 152 "
            "| 0.350 [0.200, 0.500] | 0.350 [0.200, 0.500] | 0.350 [0.200, 0.500] | 0.350 [0.200, 0.500] |") in text
    assert "| **event** (reference) | 3 | 0.600 ± 0.100 | [0.530, 0.670] | 0.500–0.700 | 0 (reference) | reference | 152 |" in text
    assert ("| soft | 1 | 0.550 ± – | [0.480, 0.620] | 0.550–0.550 | -0.050 | no | 152 "
            "| 0.400 [0.250, 0.550] | 0.500 [0.350, 0.650] | 0.600 [0.450, 0.750] | 0.700 [0.550, 0.850] |") in text
    assert "| hard | 3 | 0.250 ± 0.260 | [0.180, 0.320] | 0.100–0.550 | -0.350 | no | 152 |" in text
    assert "| none | 0 (1 without test labels) | – | – | – | – | – | – |" in text
    assert "| chatunivi | 1 | 0.200 ± – | – | 0.200–0.200 | -0.400 | – | 152 | 0.200 | 0.200 |" in text
    assert "| random | 0 | – | – | – | – | – | – |" in text
    # the baselines, once, with their CIs; and the header says how the CI column is pooled
    assert text.count("## Trivial baselines (test split)") == 1
    assert "| majority letter | 0.200 | [0.150, 0.250] |" in text and "| majority answer per type | 0.250 | [0.180, 0.320] |" in text
    assert "| chance (mean 1/options) | 0.200 | – |" in text
    assert "mean over seeds of those lower and upper bounds" in text
    # the prose claims differences only where the CIs separate
    assert "Below the reference `event` (CIs separate): `none`." in text
    claims = [line for line in text.splitlines() if line.startswith(("Above the reference", "Below the reference"))]
    assert not any("`soft`" in line or "`hard`" in line for line in claims), claims
    assert "Not distinguishable from the reference `hybrid` (CIs overlap, or seeds on both sides; no difference is claimed): `hard`, `soft`." in text
    assert "Above the best trivial baseline (majority answer per type, CIs separate): `event`." in text
    assert "Not distinguishable from the best trivial baseline (majority answer per type): `none`." in text
    assert "so no comparison is made: `chatunivi`." in text
    assert "## Failed experiments" in text and "- `prompt-none-s2`" in text
    assert "`lr-probe`" in text and "0.99" not in text and "0.900" not in text
    for group in ("prompt", "distill", "teacher"):
        assert f"](ablations/{group}.png)" in text
        assert (tmp_path / f"reports/ablations/{group}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<script" not in text and "http" not in text  # plain markdown + PNG: renders offline
    assert "dvc exp show --only-changed" in text
    # the per-row CSV beside it: the same numbers, unrounded, one line per row of every group
    import csv

    rows = list(csv.DictReader((tmp_path / "reports/ablations.csv").open()))
    assert "[ablations.csv](ablations.csv)" in text
    none = next(r for r in rows if r["group"] == "prompt" and r["value"] == "none")
    assert (none["seeds"], none["failed"], none["ci_separates_from_reference"], none["test_n"]) == ("2", "1", "yes", "152")
    assert float(none["mean"]) == pytest.approx(0.35) and float(none["std"]) == pytest.approx(0.0707107, rel=1e-5)
    assert float(none["delta_vs_reference"]) == pytest.approx(-0.25) and float(none["ci95_low"]) == pytest.approx(0.28)
    assert sorted(float(x.split(":")[1]) for x in none["per_seed"].split()) == pytest.approx([0.3, 0.4])
    event = next(r for r in rows if r["group"] == "prompt" and r["value"] == "event")
    assert event["reference"] == "True" and event["ci_separates_from_reference"] == "reference"
    assert {"prompt", "distill", "teacher"} <= {r["group"] for r in rows}


def test_generator_group_only_with_several_generators(tmp_path):
    show = show_json()
    show[1]["data"]["params"]["params.yaml"]["data"]["prompts"]["generators"]["vicuna"] = {"backend": "annotations"}
    baseline = read_show_json(show)
    tables, _ = summarize(build_grid(baseline.params, 1), baseline)
    assert [t.group.name for t in tables] == ["prompt", "distill", "teacher", "generator", "labels", "labels_none"]
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


def test_label_groups_are_contrasted_row_by_row():
    """labels (hybrid) vs labels_none at each fraction: the contrast the label-scarce axis exists for."""
    from cater.experiments import Row, Table, available_groups, render_pairs

    groups = available_groups(PARAMS_FOR_PAIRS)
    def row(value, accs, cis):
        return Row(value, {}, False, seeds=list(range(len(accs))), accuracies=accs, cis=cis)
    hybrid = Table(groups["labels"], [row("0.1", [0.40, 0.41], [(0.36, 0.44), (0.37, 0.45)]),
                                      row("1.0", [0.38, 0.38], [(0.34, 0.42), (0.34, 0.42)])])
    none = Table(groups["labels_none"], [row("0.1", [0.30, 0.31], [(0.26, 0.34), (0.27, 0.35)]),
                                         row("1.0", [0.39, 0.37], [(0.35, 0.43), (0.33, 0.41)])])
    text = render_pairs(hybrid, none)
    lines = text.splitlines()
    assert groups["labels_none"].pair_with == "labels"
    assert "| 0.1 | 0.405 [0.365, 0.445] | 0.305 [0.265, 0.345] | +0.100 | yes |" in lines
    assert "| 1.0 | 0.380 [0.340, 0.420] | 0.380 [0.340, 0.420] | +0.000 | no |" in lines


PARAMS_FOR_PAIRS = {"teacher": {"models": {"videollava": {}}}, "prompts": {"generators": {"annotations": {}}},
                    "train": {"teacher": "videollava", "prompt_generator": "annotations"}}
