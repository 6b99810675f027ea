"""Relocatable data: outputs computed in one clone are reused by a clone at another path whose copy of
the official release lives in another folder.

Clone A (the GPU machine) links an MSRVTT-QA layout in as data/raw/msrvtt_qa, writes event prompts
through the real `openai` client against a local OpenAI-compatible server, runs the teacher and the
features, and pushes everything to a local DVC remote. Clone B, elsewhere, links its own copy of the
release, pulls, and reproduces: only `train` and `eval` run, the server gets no request and no teacher
is loaded. The unit tests below pin the rule that makes this work (dataset paths live under
data/raw/<name>, written relative to the repository).
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import re
import shutil
from pathlib import Path

import pytest
import yaml

from cater.data.schema import read_samples
from fake_openai_server import FakeOpenAIServer
from helpers import official_layouts
from helpers.dvc_workspace import link_dataset, make_workspace, run, set_params

KEY_ENV = "FAKE_SERVER_KEY"


def running_stages(output: str) -> list[str]:
    return re.findall(r"^Running stage '([^']+)':", output, flags=re.MULTILINE)


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-relocation-test")
    with FakeOpenAIServer() as srv:
        yield srv


@pytest.mark.slow
def test_a_clone_elsewhere_with_the_release_elsewhere_reruns_nothing_upstream_of_train(server, tmp_path):
    release_a = tmp_path / "disk-a" / "MSRVTT-QA"
    cfg = official_layouts.write_msrvtt_qa(release_a)
    a = make_workspace(tmp_path / "machine-a", {
        "teacher.models.flamingo": None,
        "teacher.models.chatunivi": None,
        "frames.num_frames": 4,
        "prompts.generators": {"gpt": {"backend": "openai", "model": "gpt-4o-mini", "base_url": server.base_url,
                                       "api_key_env": KEY_ENV, "max_retries": 1, "timeout": 5, "image_size": 32}},
        "train.prompt_generator": "gpt",
    })
    set_params(a / "params.yaml", {"dataset": link_dataset(a, cfg, release_a)})
    run(["git", "add", "-A"], a)
    run(["git", "commit", "-qm", "msrvtt_qa"], a)
    result = run(["dvc", "repro", "teacher@videollava", "features"], a)
    assert {"dataset", "frames", "prompts@gpt", "teacher@videollava", "features"} <= set(running_stages(result.stdout))
    requests_a = len(server.requests)
    assert requests_a == len({s.video_id for s in read_samples(a / "data/samples.jsonl")}) > 0  # one per video

    # nothing machine-specific in what is hashed or committed
    for text in [(a / "dvc.lock").read_text(), (a / "params.yaml").read_text(),
                 (a / "data/samples.jsonl").read_text(), *(p.read_text() for p in (a / "data/splits").glob("*.jsonl"))]:
        assert str(tmp_path) not in text and "disk-a" not in text
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-d", "storage", str(remote)], a)
    run(["git", "add", "-A"], a)
    run(["git", "commit", "-qm", "outputs"], a)
    run(["dvc", "push"], a)

    b = tmp_path / "elsewhere" / "machine-b" / "cater"
    run(["git", "clone", "-q", str(a), str(b)], tmp_path)
    release_b = tmp_path / "disk-b" / "datasets" / "msrvtt"
    shutil.copytree(release_a, release_b)  # the same release, another folder (new mtimes and inodes)
    (b / "data/raw/msrvtt_qa").symlink_to(release_b, target_is_directory=True)
    result = run(["dvc", "repro", "--pull"], b)  # the README's command: pull what is up to date, run the rest
    assert running_stages(result.stdout) == ["train", "eval"], result.stdout
    assert len(server.requests) == requests_a  # 0 LLM requests from B
    assert (b / "data/samples.jsonl").read_bytes() == (a / "data/samples.jsonl").read_bytes()
    lock_a = yaml.safe_load((a / "dvc.lock").read_text())["stages"]
    lock_b = yaml.safe_load((b / "dvc.lock").read_text())["stages"]
    for stage in ("dataset", "frames", "splits", "prompts@gpt", "teacher@videollava", "features"):
        assert lock_b[stage] == lock_a[stage], stage
    assert "Data and pipelines are up to date" in run(["dvc", "status"], b).stdout

    # the dependency is real: an edited annotation file in B's release makes `dataset` stale there
    test_qa = release_b / "annotations" / "test_qa.json"
    test_qa.write_text(test_qa.read_text().replace("?", " ?", 1), encoding="utf-8")
    assert "dataset:" in run(["dvc", "status", "dataset"], b).stdout


# --- the rule: dataset paths under data/raw/<name>, relative to the repository ---------------------------


@pytest.fixture
def repo_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/raw/msrvtt_qa").mkdir(parents=True)
    return tmp_path


@pytest.mark.parametrize("key,value", [
    ("annotations", "/datasets/msrvtt/annotations"),  # a machine path
    ("videos", "data/raw/msrvtt_qa/../../../videos"),  # climbs out
    ("videos", ["data/raw/msrvtt_qa/videos", "/mnt/more_videos"]),  # one of a list
    ("annotations", "datasets/msrvtt/annotations"),  # relative, but not where dvc.yaml looks
    ("video_mapping", "data/raw/msvd_qa/youtube_mapping.txt"),  # another dataset's folder
])
def test_dataset_paths_outside_data_raw_name_fail_naming_the_key(repo_dir, key, value):
    from cater.stages.dataset import check_declared_paths

    cfg = {"name": "msrvtt_qa", "annotations": "data/raw/msrvtt_qa/annotations", "videos": "data/raw/msrvtt_qa/videos",
           key: value}
    with pytest.raises(ValueError, match=rf"params.yaml: dataset\.{key} is .*data/raw/msrvtt_qa/.*ln -s"):
        check_declared_paths(cfg, "msrvtt_qa")


def test_dataset_paths_inside_data_raw_name_pass_and_a_missing_folder_fails(repo_dir):
    from cater.stages.dataset import check_declared_paths

    check_declared_paths({"annotations": "data/raw/msrvtt_qa/annotations", "videos": ["./data/raw/msrvtt_qa/v1",
                                                                                      "data/raw/msrvtt_qa/v2"],
                          "subtitles": None}, "msrvtt_qa")
    with pytest.raises(ValueError, match=r"data/raw/tvqa/ does not exist.*ln -s"):
        check_declared_paths({"annotations": "data/raw/tvqa/annotations"}, "tvqa")


def test_the_dataset_stage_writes_repository_relative_video_paths(repo_dir, tmp_path):
    from cater.stages.dataset import run as run_dataset

    release = tmp_path.parent / f"{tmp_path.name}-release"
    cfg = official_layouts.write_msrvtt_qa(release)
    (repo_dir / "data/raw/msrvtt_qa").rmdir()
    params = {"dataset": {**link_dataset(repo_dir, cfg, release), "shapes": {}}}
    run_dataset(params, None)
    videos = {s.video for s in read_samples(repo_dir / "data/samples.jsonl")}
    assert videos and all(v.startswith("data/raw/msrvtt_qa/videos/video") for v in videos), sorted(videos)[:3]
    assert str(release) not in (repo_dir / "data/samples.jsonl").read_text()
    # the same release named by its machine path is refused before anything is written
    (repo_dir / "data/samples.jsonl").unlink()
    with pytest.raises(ValueError, match="dataset.annotations"):
        run_dataset({"dataset": cfg}, None)
    assert not (repo_dir / "data/samples.jsonl").exists()
