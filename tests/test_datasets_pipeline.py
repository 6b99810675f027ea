"""Official datasets through the whole pipeline under real `dvc`.

The synthetic layouts of tests/helpers/official_layouts.py (official annotation formats, real
videos, TVQA .srt subtitles) are fed to the `dataset` stage by params, as a user would point it at
a downloaded release. One workspace is shared: each test switches `dataset` to its layout and runs
`dvc repro`, so only `tiny_models` is reused between them. The MSVD-QA release gets one broken
clip, which `frames.skip_bad: true` drops (and counts) while the pipeline completes.

Official datasets carry no ground-truth events, which the offline `annotations` prompt backend
needs, so these workspaces generate prompts with the `hf` backend and a tiny scripted causal LM
(scripts/make_tiny_llm.py): it reads a visual summary of the frames, never events.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

from cater.data.schema import read_samples
from cater.io import read_jsonl
from helpers import official_layouts
from helpers.dvc_workspace import REPO, link_dataset, make_workspace, run, set_params

pytestmark = pytest.mark.slow

NUM_FRAMES = 8
# test-split question types of each synthetic layout, by the dataset's own type names
TEST_TYPES = {
    "msrvtt_qa": {"what": 2, "who": 1, "where": 1, "other": 1},
    "msvd_qa": {"what": 2, "who": 1, "where": 1, "other": 1},
    "activitynet_qa": {"motion": 1, "spatial": 1, "temporal": 1, "yes_no": 2, "color": 1, "object": 1,
                       "location": 1, "number": 1, "other": 1},
}


# MSVD-QA's run also has one undecodable train clip (3 questions), dropped by frames.skip_bad
BROKEN = {"msvd_qa": ("vid1", f"{official_layouts.msvd_clip_name(1)}.avi")}


def dvc(root: Path, *args: str, check: bool = True):
    return run(["dvc", *args], root, check=check)


def running_stages(output: str) -> list[str]:
    return re.findall(r"^Running stage '([^']+)':", output, flags=re.MULTILINE)


def tiny_llm_script(num_frames: int) -> list[str]:
    spec = importlib.util.spec_from_file_location("make_tiny_llm", REPO / "scripts/make_tiny_llm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.fixed_answer(num_frames)


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory) -> Path:
    from cater.testing.tiny.causal_lm import write_tiny_causal_lm

    return write_tiny_causal_lm(tmp_path_factory.mktemp("llm") / "tiny-llm", seed=0, script=tiny_llm_script(NUM_FRAMES))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_llm) -> Path:
    return make_workspace(tmp_path_factory.mktemp("official"), {
        "frames.num_frames": NUM_FRAMES,
        "teacher.models.flamingo": None,
        "teacher.models.chatunivi": None,
        "prompts.generators": {"tinyllm": {"backend": "hf", "model": str(tiny_llm), "max_new_tokens": 64}},
        "train.prompt_generator": "tinyllm",
    })


def use_dataset(root: Path, tmp_path: Path, name: str) -> dict:
    """Write the official layout of `name` under tmp_path, link it in as data/raw/<name> and point params
    `dataset` at it; returns the layout's config with absolute paths (where the files really are)."""
    cfg = getattr(official_layouts, f"write_{name}")(tmp_path / name)
    set_params(root / "params.yaml", {"dataset": link_dataset(root, cfg, tmp_path / name)})  # the whole section: no `shapes`
    return cfg


def check_prompts(root: Path, samples) -> None:
    rows = read_jsonl(root / "data/prompts/tinyllm.jsonl")
    assert sorted(r["video_id"] for r in rows) == sorted({s.video_id for s in samples})
    assert all(len(r["frames"]) == NUM_FRAMES and r["events"] for r in rows)
    assert json.loads((root / "data/prompts/tinyllm.failures.json").read_text()) == []


def split_samples(root: Path):
    return [s for split in ("train", "val", "test") for s in read_samples(root / f"data/splits/{split}.jsonl")]


@pytest.mark.parametrize("name", sorted(TEST_TYPES))
def test_official_dataset_runs_through_eval_with_its_own_question_types(workspace, tmp_path, name):
    cfg = use_dataset(workspace, tmp_path, name)
    broken = BROKEN.get(name)
    set_params(workspace / "params.yaml", {"frames.skip_bad": broken is not None})
    if broken:  # a clip of the release that cannot be decoded
        (Path(cfg["videos"]) / broken[1]).write_bytes(b"\x00garbage" * 100)
    result = dvc(workspace, "repro")
    ran = running_stages(result.stdout)
    assert {"dataset", "frames", "splits", "prompts@tinyllm", "teacher@videollava", "features", "train", "eval"} <= set(ran)

    samples = read_samples(workspace / "data/samples.jsonl")
    assert {s.dataset for s in samples} == {name}
    kept = split_samples(workspace)
    dropped = [s for s in samples if broken and s.video_id == broken[0]]
    assert sorted(s.id for s in kept) == sorted(s.id for s in samples if s not in dropped)
    summary = json.loads((workspace / "data/splits/summary.json").read_text())
    assert summary["dropped_without_frames"] == len(dropped) == (3 if broken else 0)
    bad = json.loads((workspace / "data/frames/bad_videos.json").read_text())
    assert list(bad) == ([broken[0]] if broken else [])
    check_prompts(workspace, kept)

    metrics = json.loads((workspace / "metrics/eval.json").read_text())
    per_type = metrics["test"]["per_type"]
    assert {t: v["n"] for t, v in per_type.items()} == TEST_TYPES[name]
    assert all(0.0 <= v["accuracy"] <= 1.0 for v in per_type.values())
    assert metrics["test"]["n"] == sum(TEST_TYPES[name].values())


@pytest.fixture(scope="module")
def tvqa(workspace, tmp_path_factory) -> Path:
    """TVQA with subtitles and `use_ts` windows, run through `train` (eval: see the xfail below)."""
    cfg = use_dataset(workspace, tmp_path_factory.mktemp("tvqa"), "tvqa")
    assert cfg["use_ts"] is True and cfg["subtitles"]
    result = dvc(workspace, "repro", "train")
    assert {"dataset", "prompts@tinyllm", "teacher@videollava", "train"} <= set(running_stages(result.stdout))
    return workspace


def test_tvqa_subtitles_and_windows_reach_the_samples(tvqa):
    samples = {s.id: s for s in read_samples(tvqa / "data/samples.jsonl")}
    assert {s.dataset for s in samples.values()} == {"tvqa"}
    # tvqa-0 asks about 0.5-1.25 s: the first two cues overlap it, the third does not
    assert samples["tvqa-0"].subtitles == "(Sheldon:) Where is my spot?\n(Leonard:) You are sitting in it. Really."
    assert (samples["tvqa-0"].start, samples["tvqa-0"].end) == (0.5, 1.25)
    # this clip's .srt is ISO-8859-1, as many official ones are
    assert samples["tvqa-2"].subtitles == "(Penny:) Café time!"
    assert samples["tvqa-6"].answer_idx is None and samples["tvqa-6"].split == "test"  # test_public has no labels
    kept = split_samples(tvqa)
    assert {s.id: s.subtitles for s in kept} == {k: s.subtitles for k, s in samples.items()}
    check_prompts(tvqa, kept)


def _no_nan(token: str):
    raise ValueError(f"{token} is not JSON")


def test_tvqa_eval_reports_per_type_metrics_with_an_unlabelled_test_split(tvqa):
    result = dvc(tvqa, "repro", check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tvqa / "metrics/eval.json").read_text(), parse_constant=_no_nan)
    assert set(metrics["test"]["per_type"]) == {"when", "other"}  # "Whose ..." is not a TVQA question word
    assert metrics["test"]["n"] == 0
    assert set(metrics["val"]["per_type"]) == {"how", "which"}
    assert 0.0 <= metrics["val"]["accuracy"] <= 1.0
    # test_public has no labels: its predictions go to the official server as {qid: answer index}
    run(["cater", "eval", "--predictions", "submission.json"], tvqa)
    submission = json.loads((tvqa / "submission.json").read_text())
    test = read_samples(tvqa / "data/splits/test.jsonl")
    assert sorted(submission) == sorted(s.id.removeprefix("tvqa-") for s in test) and all(k.isdigit() for k in submission)
    assert set(submission.values()) <= set(range(5))


@pytest.fixture(scope="module")
def msvd_with_annotations_prompts(tmp_path_factory):
    """MSVD-QA with the demo's default prompt generator (`annotations`), run up to the prompts."""
    base = tmp_path_factory.mktemp("msvd-annotations")
    cfg = official_layouts.write_msvd_qa(base / "msvd_qa")
    root = make_workspace(base)
    set_params(root / "params.yaml", {"dataset": link_dataset(root, cfg, base / "msvd_qa")})
    return root, cfg, dvc(root, "repro", "prompts@annotations", check=False)


def test_annotations_prompts_on_an_official_dataset_fail_naming_the_missing_events(msvd_with_annotations_prompts):
    """The demo's default generator needs ground-truth events: on an official dataset it must stop
    with a clear reason instead of writing empty prompts."""
    root, _, result = msvd_with_annotations_prompts
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert running_stages(result.stdout)[-1] == "prompts@annotations"
    assert "no event annotations" in output and "use an openai or hf generator" in output, output[-3000:]
    assert not (root / "data/prompts/annotations.jsonl").exists()


def test_an_edited_official_annotation_file_makes_the_dataset_stage_stale(msvd_with_annotations_prompts):
    root, cfg, _ = msvd_with_annotations_prompts
    assert "dataset" in yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    test_qa = Path(cfg["annotations"]) / "test_qa.json"
    test_qa.write_text(test_qa.read_text().replace("umbrella", "parasol"), encoding="utf-8")
    status = dvc(root, "status", "dataset")
    assert "dataset:" in status.stdout, status.stdout


def test_switching_dataset_name_keeps_working_with_the_demo_shapes_block(tmp_path):
    cfg = official_layouts.write_msrvtt_qa(tmp_path / "msrvtt_qa", with_videos=True)
    root = make_workspace(tmp_path)
    # what a user does: change `name` and add the adapter's keys, leaving `shapes:` in place
    cfg = link_dataset(root, cfg, tmp_path / "msrvtt_qa")
    set_params(root / "params.yaml", {f"dataset.{key}": value for key, value in cfg.items()})
    assert "shapes" in yaml.safe_load((root / "params.yaml").read_text())["dataset"]
    result = dvc(root, "repro", "dataset", check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {s.dataset for s in read_samples(root / "data/samples.jsonl")} == {"msrvtt_qa"}
