"""`cater verify`: reproduce HEAD in a fresh clone and compare every output hash with the committed dvc.lock."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import contextlib
import copy
import io

import pytest
import yaml

from cater.commands.verify import DATA_REASON, KNOWN_REASONS, compare_locks, main
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
    "train": stage({"data/features": "x1.dir"}, {"models/student.pt": "m1", "metrics/train/metrics.json": "j1"}),
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
    reproduced = edited(reproduced, "train", "outs", "models/student.pt", "m2")
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
    stale = edited(LOCK, "features", "deps", "src/cater/features.py", "c2")
    stale = edited(stale, "features", "outs", "data/features", "x2.dir")
    reason = by_stage(compare_locks(LOCK, stale))["features"].reason
    assert reason == "a dependency changed: src/cater/features.py (source; the committed dvc.lock is out of date)"
    params = copy.deepcopy(reproduced)
    params["stages"]["dataset"]["params"]["params.yaml"]["dataset"] = {"seed": 1}
    assert by_stage(compare_locks(LOCK, params))["dataset"].reason == "a dependency changed: param params.yaml:dataset"


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
