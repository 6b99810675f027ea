"""`cater verify`: reproduce HEAD in a fresh clone and compare every output hash with the committed dvc.lock."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import contextlib
import copy
import io

import pytest
import yaml

from cater.commands import verify as verify_module
from cater.commands.verify import (DATA_REASON, KNOWN_REASONS, STALE, StageResult, Verification, check_metrics,
                                   compare_locks, compare_metrics, format_verification, main)
from helpers.dvc_workspace import make_workspace, run


def stage(deps: dict, outs: dict, params: dict | None = None) -> dict:
    entry = {"cmd": "x", "deps": [{"path": p, "md5": h} for p, h in deps.items()],
             "outs": [{"path": p, "md5": h} for p, h in outs.items()]}
    if params:
        entry["params"] = {"params.yaml": params}
    return entry


LOCK = {"schema": "2.0", "stages": {
    "dataset": stage({"src/cater/stages/dataset.py": "d1"}, {"data/samples.jsonl": "s1", "data/videos": "v1.dir"}, {"dataset": {"seed": 0}}),
    "frames": stage({"data/videos": "v1.dir"}, {"data/frames": "f1.dir"}),
    "features": stage({"data/frames": "f1.dir", "src/cater/features.py": "c1"}, {"data/features": "x1.dir"}),
    "train": stage({"data/features": "x1.dir"}, {"models/student.safetensors": "m1", "metrics/train/metrics.json": "j1"}),
}}


def edited(lock: dict, stage_name: str, kind: str, path: str, value: str) -> dict:
    lock = copy.deepcopy(lock)
    for entry in lock["stages"][stage_name][kind]:
        if entry["path"] == path:
            entry["md5"] = value
    return lock


def by_stage(results):
    return {r.stage: r for r in results}


def test_identical_locks():
    results = compare_locks(LOCK, copy.deepcopy(LOCK))
    assert [r.stage for r in results] == ["dataset", "frames", "features", "train"]
    assert all(r.identical for r in results)


def test_float_stage_with_same_inputs_gets_the_known_reason():
    reproduced = edited(LOCK, "features", "outs", "data/features", "x2.dir")
    reproduced = edited(reproduced, "train", "deps", "data/features", "x2.dir")
    reproduced = edited(reproduced, "train", "outs", "models/student.safetensors", "m2")
    results = by_stage(compare_locks(LOCK, reproduced))
    assert results["features"].differing_outs == ["data/features"]
    assert results["features"].reason == KNOWN_REASONS["features"]
    assert "floating-point outputs of the backbone differ across CPUs" in results["features"].reason
    assert results["train"].reason == "a dependency changed: data/features (from stage features)"
    assert not results["train"].data_stage and results["frames"].identical


def test_data_stage_difference_and_stale_lock():
    reproduced = edited(LOCK, "dataset", "outs", "data/samples.jsonl", "s2")
    results = by_stage(compare_locks(LOCK, reproduced))
    assert results["dataset"].data_stage and results["dataset"].reason == DATA_REASON
    assert results["dataset"].counted and not results["dataset"].stale
    # the committed lock is stale: the committed features.py is not the one the lock records
    stale = edited(LOCK, "features", "deps", "src/cater/features.py", "c2")
    stale = edited(stale, "features", "outs", "data/features", "x2.dir")
    stale = edited(stale, "train", "deps", "data/features", "x2.dir")
    stale = edited(stale, "train", "outs", "models/student.safetensors", "m2")
    results = by_stage(compare_locks(LOCK, stale))
    assert results["features"].stale and results["features"].reason == f"{STALE}: src/cater/features.py changed"
    # a stage fed by a stale stage is stale too: its committed outputs came from other inputs
    assert results["train"].stale and results["train"].reason == f"{STALE}: upstream stage features is stale"
    assert not results["frames"].stale and results["frames"].identical
    params = copy.deepcopy(reproduced)
    params["stages"]["dataset"]["params"]["params.yaml"]["dataset"] = {"seed": 1}
    results = by_stage(compare_locks(LOCK, params))
    assert results["dataset"].reason == f"{STALE}: param params.yaml:dataset"
    assert results["dataset"].stale and not results["dataset"].counted  # a stale data stage is not a difference
    # a stale entry whose outputs did not change is still identical, and says it is stale
    refactor = edited(LOCK, "features", "deps", "src/cater/features.py", "c3")
    features = by_stage(compare_locks(LOCK, refactor))["features"]
    assert features.identical and features.stale
    new_command = copy.deepcopy(LOCK)
    new_command["stages"]["train"]["cmd"] = "cater train --fast"
    assert by_stage(compare_locks(LOCK, new_command))["train"].reason == f"{STALE}: its command"


def eval_json(test: float | None, ci: list | None, val: float = 0.5) -> dict:
    test_block = {"accuracy": test, "n": 152 if test is not None else 0}
    if ci is not None:
        test_block["ci95"] = ci
    return {"best_epoch": 3, "test": test_block, "val": {"accuracy": val, "ci95": [val - 0.08, val + 0.08], "n": 152}}


COMMITTED = eval_json(0.3553, [0.2829, 0.4276])


def test_reproduced_accuracy_inside_the_committed_ci_passes():
    check = compare_metrics(COMMITTED, eval_json(0.3421, [0.27, 0.41]))
    assert check.split == "test" and check.within and not check.failed
    assert check.difference == pytest.approx(-0.0132)
    assert compare_metrics(COMMITTED, COMMITTED).within  # the same number


def test_reproduced_accuracy_outside_the_committed_ci_fails():
    check = compare_metrics(COMMITTED, eval_json(0.2500, [0.18, 0.32]))
    assert check.within is False and check.failed
    assert compare_metrics(COMMITTED, eval_json(0.4300, None)).failed  # above the CI is a change too
    assert not compare_metrics(COMMITTED, eval_json(0.2500, None), stale=True).failed  # stale lock: not counted


def test_numbers_that_cannot_be_checked():
    old = eval_json(0.3553, None)  # written before eval.json had CIs
    assert compare_metrics(old, eval_json(0.3553, None)).within and not compare_metrics(old, eval_json(0.3553, None)).failed
    check = compare_metrics(old, eval_json(0.34, None))
    assert check.failed and "no test.ci95" in check.problem
    assert compare_metrics(None, COMMITTED).failed
    # TVQA's test_public has no labels: the validation split is compared instead
    check = compare_metrics(eval_json(None, None, val=0.5), eval_json(None, None, val=0.45))
    assert check.split == "val" and check.within and check.ci95 == (0.42, 0.58)


def eval_stage(identical: bool, stale: bool = False) -> StageResult:
    return StageResult("eval", identical, [] if identical else ["metrics/eval.json"], KNOWN_REASONS["eval"], stale=stale)


def test_verify_exits_non_zero_on_a_numerical_regression(monkeypatch):
    """The whole command, with the reproduction replaced by its outcome: a float stage differs, and
    the reproduced test accuracy falls outside the committed 95% CI."""
    features = StageResult("features", False, ["data/features"], KNOWN_REASONS["features"])
    results = [StageResult("dataset", True), features, eval_stage(False)]
    regression = Verification(results, check_metrics(results, COMMITTED, eval_json(0.25, [0.18, 0.32])))
    monkeypatch.setattr(verify_module, "verify", lambda *args, **kwargs: regression)
    code, text = verify_cli([])
    assert code == 1, text
    assert ("eval test accuracy       committed 0.3553, reproduced 0.2500, difference -0.1053; "
            "tolerance: the committed 95% CI [0.2829, 0.4276] (-0.0724 / +0.0723): OUTSIDE the committed 95% CI") in text
    assert "error: numerical regression: the reproduced test accuracy 0.2500 is outside" in text
    # the same float differences, with the accuracy inside the CI: verified
    fine = Verification(results, check_metrics(results, COMMITTED, eval_json(0.3421, [0.27, 0.41])))
    monkeypatch.setattr(verify_module, "verify", lambda *args, **kwargs: fine)
    code, text = verify_cli([])
    assert code == 0, text
    assert "difference -0.0132" in text and ": within the CI" in text
    assert "features                 DIFFERENT (model stage) [data/features]" in text


def test_stale_stages_are_reported_and_not_counted():
    lock = copy.deepcopy(LOCK)
    lock["stages"]["eval"] = stage({"models/student.safetensors": "m1", "src/cater/stages/evaluate.py": "e1"}, {"metrics/eval.json": "e1"})
    reproduced = edited(lock, "eval", "deps", "src/cater/stages/evaluate.py", "e2")  # code changed, lock not refreshed
    reproduced = edited(reproduced, "eval", "outs", "metrics/eval.json", "e2")
    results = compare_locks(lock, reproduced)
    verification = Verification(results, check_metrics(results, COMMITTED, eval_json(0.25, [0.18, 0.32])))
    assert verification.metrics.stale and verification.exit_code == 0
    text = format_verification(verification)
    assert "eval                     STALE IN DVC.LOCK (model stage) [metrics/eval.json]" in text
    assert f"reason: {STALE}: src/cater/stages/evaluate.py changed" in text
    assert "OUTSIDE the committed 95% CI" in text and "not counted" in text
    assert "1 stage(s) stale in dvc.lock, not counted: eval" in text
    # a data stage that differs without being stale still fails
    data = edited(reproduced, "dataset", "outs", "data/samples.jsonl", "s2")
    results = compare_locks(lock, data)
    assert Verification(results, check_metrics(results, COMMITTED, COMMITTED)).exit_code == 1


@pytest.fixture(scope="module")
def committed(tmp_path_factory):
    """The small demo (one teacher), reproduced and committed with its dvc.lock."""
    root = make_workspace(tmp_path_factory.mktemp("verify"), {"teacher.models.flamingo": None, "teacher.models.chatunivi": None})
    run(["dvc", "repro"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "reproduced"], root)
    return root


def verify_cli(args: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue() + err.getvalue()


@pytest.mark.slow
def test_verify_the_small_demo(committed):
    code, text = verify_cli(["--repo", str(committed)])
    assert code == 0, text
    for name in ("dataset", "frames", "splits", "prompts@annotations"):  # data stages: byte-identical
        assert f"  {name:<24} identical" in text, text
    stages = yaml.safe_load((committed / "dvc.lock").read_text())["stages"]
    assert f"of {len(stages)} stage(s) identical to the committed dvc.lock" in text
    assert run(["git", "status", "--porcelain"], committed).stdout == ""  # the user's checkout is untouched


@pytest.mark.slow
def test_verify_fails_when_a_data_stage_differs(committed):
    lock = yaml.safe_load((committed / "dvc.lock").read_text())
    for out in lock["stages"]["dataset"]["outs"]:
        if out["path"] == "data/samples.jsonl":
            out["md5"] = "0" * 32  # as if the committed samples had come from another machine
    (committed / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    run(["git", "commit", "-qam", "doctored lock"], committed)
    code, text = verify_cli(["--repo", str(committed), "dataset"])  # reproduce just the dataset stage
    assert code == 1, text
    assert "dataset                  DIFFERENT (data stage) [data/samples.jsonl]" in text
    assert DATA_REASON in text and "data stage(s) differ: dataset" in text


def test_prompt_response_caches_are_reused_not_resent(tmp_path, monkeypatch):
    from cater.commands.verify import PROMPT_CACHE, copy_response_caches

    repo, clone = tmp_path / "repo", tmp_path / "clone"
    for generator, files in (("gpt", 3), ("vicuna", 1)):
        folder = repo / PROMPT_CACHE / generator / "responses" / "ab"
        folder.mkdir(parents=True)
        for i in range(files):
            (folder / f"{i}.json").write_text("{}")
    (repo / PROMPT_CACHE / "gpt" / "rows").mkdir()  # finished rows are not copied: the stage rebuilds them
    said = []
    assert copy_response_caches(repo, clone, said.append) == 4
    assert (clone / PROMPT_CACHE / "gpt/responses/ab/2.json").is_file() and not (clone / PROMPT_CACHE / "gpt/rows").exists()
    assert "reusing 4 cached prompt response file(s)" in said[0] and "no LLM request is sent again" in said[0]
    seen = {}
    monkeypatch.setattr(verify_module, "verify", lambda *a, **k: seen.update(k) or Verification([], None))
    verify_cli(["--resend-prompts"])
    assert seen == {"resend_prompts": True}
    verify_cli([])
    assert seen == {"resend_prompts": False}
