"""The CaTeR pipeline end to end under real `dvc`, in throwaway git + DVC workspaces.

Two workspaces are built the same way (a shrunken demo, one teacher): `first` runs the whole
pipeline once and is then used for no-op and ablation re-runs; `second` runs the data stages only,
to compare bytes with `first`, and is then used for the bad-video and changed-dataset checks.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hashlib
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from cater.data.schema import read_samples
from helpers.dvc_workspace import make_workspace, run, set_params

pytestmark = pytest.mark.slow

# 4 + 2 + 2 videos (4 questions each) and a single teacher: the smallest run that has every stage
OVERRIDES = {
    "dataset.shapes.videos": {"train": 4, "val": 2, "test": 2},
    "teacher.models.flamingo": None,
    "teacher.models.chatunivi": None,
}
DATA_STAGES = re.compile(r"^(dataset|frames|splits|prompts@.+)$")
NOOP_LIMIT_S = 10.0
OPEN_AUDIT = Path(__file__).resolve().parent / "helpers/open_audit"


def dvc(root: Path, *args: str, check: bool = True, extra_env: dict[str, str] | None = None):
    return run(["dvc", *args], root, check=check, extra_env=extra_env)


def running_stages(output: str) -> list[str]:
    """Stage names from dvc's "Running stage 'x':" lines, in order."""
    return re.findall(r"^Running stage '([^']+)':", output, flags=re.MULTILINE)


def stage_names(root: Path) -> list[str]:
    return dvc(root, "stage", "list", "--name-only").stdout.split()


def lock(root: Path) -> dict:
    return yaml.safe_load((root / "dvc.lock").read_text())["stages"]


def lock_outs(root: Path, stage: str) -> dict[str, str]:
    """path -> md5 of a stage's outputs, as recorded in dvc.lock."""
    return {out["path"]: out["md5"] for out in lock(root)[stage]["outs"]}


def read_params(root: Path) -> dict:
    return yaml.safe_load((root / "params.yaml").read_text())


@dataclass
class FirstRun:
    root: Path
    output: str
    noop_output: str
    noop_seconds: float
    open_log: Path  # what each stage process opened (tests/helpers/open_audit)


@dataclass
class SecondRun:
    root: Path
    data_outs: dict[str, dict[str, str]]  # stage -> {path: md5}, right after its data stages ran


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> FirstRun:
    root = make_workspace(tmp_path_factory.mktemp("first"), OVERRIDES)
    open_log = tmp_path_factory.mktemp("open_log")
    python_path = os.pathsep.join(filter(None, [str(OPEN_AUDIT), os.environ.get("PYTHONPATH")]))
    result = dvc(root, "repro", extra_env={"PYTHONPATH": python_path, "CATER_OPEN_LOG": str(open_log)})
    start = time.monotonic()
    noop = dvc(root, "repro")
    return FirstRun(root, result.stdout + result.stderr, noop.stdout + noop.stderr, time.monotonic() - start, open_log)


@pytest.fixture(scope="module")
def second(tmp_path_factory) -> SecondRun:
    root = make_workspace(tmp_path_factory.mktemp("second"), OVERRIDES)
    data_stages = [s for s in stage_names(root) if DATA_STAGES.match(s)]
    dvc(root, "repro", *data_stages)
    return SecondRun(root, {stage: lock_outs(root, stage) for stage in data_stages})


# --- a full run, its metrics and plots --------------------------------------------------------


def test_repro_from_nothing_runs_every_stage_once(first):
    ran = running_stages(first.output)
    assert sorted(ran) == sorted(stage_names(first.root)), first.output[-3000:]
    assert ran.index("eval") == len(ran) - 1 and ran.index("train") < ran.index("eval")


def test_eval_metrics_have_test_accuracy_overall_and_per_type_with_counts(first):
    metrics = json.loads((first.root / "metrics/eval.json").read_text())
    test = read_samples(first.root / "data/splits/test.jsonl")
    types = {t: sum(s.question_type == t for s in test) for t in {s.question_type for s in test}}
    assert set(types) == {"after", "count", "direction", "first"}  # the demo's question types
    per_type = metrics["test"]["per_type"]
    assert {t: v["n"] for t, v in per_type.items()} == types
    assert metrics["test"]["n"] == len(test)
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    # overall accuracy is the count-weighted mean of the per-type accuracies
    correct = sum(v["accuracy"] * v["n"] for v in per_type.values())
    assert correct == pytest.approx(metrics["test"]["accuracy"] * len(test), abs=1e-3)
    assert 0.0 < metrics["test"]["chance"] < 1.0


# Paths a stage may touch without declaring them: its resumable cache (by design not an output, so a killed
# stage resumes and a changed one never reuses stale rows), params.yaml (declared per key under `params:`), and
# the git/DVC metadata dvclive reads and marks inside a DVC run (.git, .dvc/, the ignore files).
UNDECLARED_OK = ("data/.cache/", "params.yaml", ".git/", ".dvc/", ".gitignore", ".dvcignore")
# an output's scratch copy, renamed onto it when complete: cater.io's `.<name>.<random>.tmp` and the stages'
# own `<name>.tmp` / `<name>_tmp` folders
SCRATCH = re.compile(r"^(\.(?P<a>.+)\.[A-Za-z0-9_]{8}(\.old)?\.tmp|(?P<b>.+?)(\.tmp|_tmp))$")


def unscratched(path: str) -> str:
    """`path` with each scratch component replaced by the output it becomes."""
    def name(part: str) -> str:
        match = SCRATCH.match(part)
        return (match["a"] or match["b"]) if match else part
    return "/".join(name(part) for part in Path(path).parts)


def undeclared(events: set[tuple[str, str]], deps: list[str], outs: list[str], root: Path) -> dict[str, list[str]]:
    """The audited (path, mode) events of one stage that its dvc.yaml entry does not declare."""
    from test_stage_deps import covered

    declared = deps + outs
    # listings are recorded but not judged: libraries probe folders that do not exist (torch's CUDA library search
    # below sys.path[0], dvclive's plot folders), and what a stage then reads shows up as a read
    bad = sorted(f"{path} ({mode})" for path, mode in events
                 if mode != "list" and not path.startswith(UNDECLARED_OK) and not covered(root / path, declared, root))
    writes = sorted(path for path, mode in events if mode == "w" and not path.startswith(UNDECLARED_OK)
                    and not covered(root / path, outs, root))
    return {k: v for k, v in (("undeclared", bad), ("written outside the outs", writes)) if v}


def audited(log_dir: Path) -> dict[str, set[tuple[str, str]]]:
    touched: dict[str, set[tuple[str, str]]] = {}
    for log in log_dir.glob("*.jsonl"):
        for line in log.read_text().splitlines():
            event = json.loads(line)
            touched.setdefault(event["stage"], set()).add((unscratched(event["path"]), event["mode"]))
    return touched


def test_every_stage_touches_only_its_deps_and_outs(first):
    """Every file each stage process opened, wrote or listed in the workspace (a runtime audit hook,
    tests/helpers/open_audit) is one of its deps or outs in dvc.yaml: an undeclared input is a cache bug DVC cannot
    see, and the import check in test_stage_deps.py cannot see a data file. tests/test_open_audit.py shows that
    the check catches an undeclared read."""
    from test_stage_deps import expanded_stages

    stages = expanded_stages(yaml.safe_load((first.root / "dvc.yaml").read_text()), read_params(first.root))
    touched = audited(first.open_log)
    assert set(touched) == set(stages), f"stages seen in the audit log: {sorted(touched)}"
    problems = {stage: found for stage, events in touched.items()
                if (found := undeclared(events, stages[stage]["deps"], stages[stage]["outs"], first.root))}
    assert not problems, json.dumps(problems, indent=1)
    assert any(p.startswith("data/frames") for p, _ in touched["features"])  # the hook saw the data


def test_dvc_metrics_show_reads_the_declared_metrics(first):
    shown = json.loads(dvc(first.root, "metrics", "show", "--json").stdout)
    files = shown[""]["data"]
    eval_json = json.loads((first.root / "metrics/eval.json").read_text())
    assert files["metrics/eval.json"]["data"]["test"]["accuracy"] == eval_json["test"]["accuracy"]
    assert set(files) == {"metrics/eval.json"}  # the training curves are plots only
    train = json.loads((first.root / "metrics/train/metrics.json").read_text())
    assert train["step"] == read_params(first.root)["train"]["epochs"] - 1
    assert "best_val_accuracy" in train


def test_dvc_plots_show_json_renders_the_declared_plots_offline(first):
    plots = json.loads(dvc(first.root, "plots", "show", "--json").stdout)["data"]
    assert {"plots/per_type_accuracy.csv", "plots/confusion.csv", "metrics/train/plots/metrics/val/accuracy.tsv"} <= set(plots)
    rows = plots["plots/per_type_accuracy.csv"][0]["content"]["data"]["values"]
    per_type = json.loads((first.root / "metrics/eval.json").read_text())["test"]["per_type"]
    assert {r["question_type"]: float(r["accuracy"]) for r in rows} == {t: v["accuracy"] for t, v in per_type.items()}
    confusion = plots["plots/confusion.csv"][0]["content"]["data"]["values"]
    assert len(confusion) == json.loads((first.root / "metrics/eval.json").read_text())["test"]["n"]
    epochs = plots["metrics/train/plots/metrics/val/accuracy.tsv"][0]["content"]["data"]["values"]
    assert [int(r["step"]) for r in epochs] == list(range(read_params(first.root)["train"]["epochs"]))


def test_cater_plots_writes_a_page_that_renders_offline(first):
    run(["cater", "plots"], first.root)
    page = (first.root / "dvc_plots/index.html").read_text()
    plots = json.loads(dvc(first.root, "plots", "show", "--json").stdout)["data"]
    assert page.count("<svg") == len(plots) >= 8 and page.count("<figcaption>") == len(plots)
    assert "http" not in page and "<script" not in page and "src=" not in page  # nothing to fetch: renders offline
    for name in plots:
        assert f"<code>{name}</code>" in page
    confusion = (first.root / "dvc_plots/plots_confusion.csv.svg").read_text()
    assert confusion.startswith("<svg") and "mark-rect" in confusion  # the heat map's cells were drawn
    curve = (first.root / "dvc_plots/metrics_train_plots_metrics_val_accuracy.tsv.svg").read_text()
    assert "mark-line" in curve
    assert "dvc_plots" in run(["git", "check-ignore", "dvc_plots/index.html"], first.root).stdout


# --- re-runs -------------------------------------------------------------------------------------


def test_noop_repro_runs_nothing_and_is_fast(first, record_property):
    record_property("noop_repro_seconds", round(first.noop_seconds, 2))
    print(f"no-op dvc repro: {first.noop_seconds:.2f} s")
    assert running_stages(first.noop_output) == []
    for stage in stage_names(first.root):
        assert f"Stage '{stage}' didn't change, skipping" in first.noop_output
    assert first.noop_seconds < NOOP_LIMIT_S


@pytest.mark.parametrize("key, value", [("train.distill.mode", "soft"), ("train.prompt_variant", "frame")])
def test_an_ablation_param_reruns_only_train_and_eval(first, key, value):
    assert value != _get(read_params(first.root), key)
    set_params(first.root / "params.yaml", {key: value})
    result = dvc(first.root, "repro")
    assert running_stages(result.stdout) == ["train", "eval"], result.stdout[-3000:]
    section, rest = key.split(".", 1)
    assert _get(lock(first.root)["train"]["params"]["params.yaml"][section], rest) == value


def _get(node: dict, dotted: str):
    for part in dotted.split("."):
        node = node[part]
    return node


def test_an_invalid_param_fails_before_training_naming_the_key(first):
    params = first.root / "params.yaml"
    saved, lock_before = params.read_text(), (first.root / "dvc.lock").read_text()
    try:
        set_params(params, {"train.prompt_variant": "bogus"})
        result = dvc(first.root, "repro", check=False)
    finally:
        params.write_text(saved)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "train.prompt_variant" in output and "bogus" in output, output[-3000:]
    assert running_stages(result.stdout) == ["train"]  # refused at once; eval never started
    assert (first.root / "dvc.lock").read_text() == lock_before


def test_an_invalid_param_stops_a_fresh_pipeline_at_its_first_stage(tmp_path):
    root = make_workspace(tmp_path, {**OVERRIDES, "train.prompt_variant": "bogus"})
    result = dvc(root, "repro", "dataset", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "train.prompt_variant" in output and "bogus" in output, output[-3000:]
    assert not (root / "data/samples.jsonl").exists()


# --- a second workspace built the same way ------------------------------------------------------


def test_data_stages_are_byte_identical_across_workspaces(first, second):
    assert set(second.data_outs) >= {"dataset", "frames", "splits", "prompts@annotations"}
    for stage, outs in second.data_outs.items():
        assert outs, stage
        assert lock_outs(first.root, stage) == outs, stage


def test_a_bad_video_fails_frames_naming_it_and_skip_bad_drops_its_samples(second):
    """(A full run with skip_bad and a broken official video: test_datasets_pipeline.py, msvd_qa.)"""
    root = second.root
    samples = read_samples(root / "data/samples.jsonl")
    victim = next(s for s in samples if s.split == "train")
    n_victim = sum(s.video_id == victim.video_id for s in samples)
    (root / victim.video).write_bytes(b"this is not a video\n" * 64)
    dvc(root, "commit", "--force", "dataset")  # the corrupt file is now part of the dataset, as a user's would be

    failed = dvc(root, "repro", "frames", check=False)
    assert failed.returncode != 0
    assert victim.video in failed.stderr and "skip_bad" in failed.stderr, failed.stderr[-3000:]

    set_params(root / "params.yaml", {"frames.skip_bad": True})
    done = dvc(root, "repro", "splits")
    assert running_stages(done.stdout) == ["frames", "splits"]
    summary = json.loads((root / "data/splits/summary.json").read_text())
    assert summary["dropped_without_frames"] == n_victim
    assert victim.video_id in json.loads((root / "data/frames/bad_videos.json").read_text())
    kept = read_samples(root / "data/splits/train.jsonl")
    assert victim.video_id not in {s.video_id for s in kept}
    assert len(kept) == sum(s.split == "train" for s in samples) - n_victim


@pytest.fixture(scope="module")
def reseeded(second) -> dict[str, tuple[str, str]]:
    """New videos under the same ids (dataset.seed 0 -> 1): outputs after `dvc repro` with the work
    caches of the old videos, and the same outputs recomputed with no cache at all."""
    root = second.root
    dvc(root, "repro", "prompts@annotations", "features")  # the old videos' work is in the caches
    set_params(root / "params.yaml", {"dataset.seed": read_params(root)["dataset"]["seed"] + 1})
    dvc(root, "repro", "prompts@annotations", "features")
    watched = ["data/prompts/annotations.jsonl", "data/features/video/000000.safetensors"]
    after_repro = {path: file_md5(root, path) for path in watched}
    shutil.move(root / "data/.cache", root.parent / "old-cache")
    dvc(root, "repro", "--force", "--single-item", "prompts@annotations")
    dvc(root, "repro", "--force", "--single-item", "features")
    return {path: (after_repro[path], file_md5(root, path)) for path in watched}


def file_md5(root: Path, path: str) -> str:
    return hashlib.md5((root / path).read_bytes()).hexdigest()



def test_prompts_after_a_dataset_change_equal_a_run_without_cache(reseeded):
    repro, scratch = reseeded["data/prompts/annotations.jsonl"]
    assert repro == scratch



def test_features_after_a_dataset_change_equal_a_run_without_cache(reseeded):
    repro, scratch = reseeded["data/features/video/000000.safetensors"]
    assert repro == scratch
