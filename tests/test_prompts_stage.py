"""The prompts stage end to end: openai (fake server), hf (tiny model) and annotations backends."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fake_openai_server import FakeOpenAIServer, write_workspace
from cater.io import read_jsonl
from cater.stages.prompts import main

KEY = "sk-stage-test-SECRET-31337"  # the fake server's key, in FAKE_SERVER_KEY (named by api_key_env)
KEY_ENV = "FAKE_SERVER_KEY"
OPENAI_KEY = "sk-openai-NEVER-SENT-TO-ANOTHER-HOST"


@pytest.fixture
def server():
    with FakeOpenAIServer() as srv:
        yield srv


def gpt(server, **options) -> dict:
    return {"gpt": {"backend": "openai", "model": "gpt-4o-mini", "base_url": server.base_url, "api_key_env": KEY_ENV,
                    "max_retries": 1, "timeout": 5, "concurrency": 2, "image_size": 32, **options}}


def run_stage(workdir: Path, monkeypatch, generator: str = "gpt") -> int:
    monkeypatch.chdir(workdir)
    return main(["--generator", generator])


def all_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_openai_stage_output_rerun_and_cache(server, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv(KEY_ENV, KEY)
    ws = write_workspace(tmp_path, gpt(server), num_videos=5)
    assert run_stage(tmp_path, monkeypatch) == 0
    out = tmp_path / "data/prompts/gpt.jsonl"
    rows = read_jsonl(out)
    assert [r["video_id"] for r in rows] == ws["videos"]
    assert all(len(r["frames"]) == 4 and r["events"] for r in rows)
    assert json.loads((tmp_path / "data/prompts/gpt.failures.json").read_text()) == []
    assert len(server.requests) == 5
    # questions reach the server; choices and answers never do
    sent = json.dumps([r["body"] for r in server.requests])
    assert "Question 1 about video003?" in sent and "SECRET-CHOICE" not in sent
    first_output = out.read_bytes()

    assert run_stage(tmp_path, monkeypatch) == 0  # rerun: rows are done, nothing is asked
    assert len(server.requests) == 5 and out.read_bytes() == first_output

    # without the finished rows (and without a key), the response cache alone rebuilds the output
    import shutil

    shutil.rmtree(tmp_path / "data/.cache/prompts/gpt/rows")
    out.unlink()
    monkeypatch.delenv(KEY_ENV)
    assert run_stage(tmp_path, monkeypatch) == 0
    assert len(server.requests) == 5 and out.read_bytes() == first_output

    # a server that quotes the key back in an error: the failure reason does not keep it
    monkeypatch.setenv(KEY_ENV, KEY)
    shutil.rmtree(tmp_path / "data/.cache/prompts/gpt")
    server.rules.append(("about video000?", "401"))
    assert run_stage(tmp_path, monkeypatch) == 1
    [failure] = json.loads((tmp_path / "data/prompts/gpt.failures.json").read_text())
    assert "HTTP 401 AuthenticationError" in failure["error"] and "Incorrect API key provided: <redacted>." in failure["error"]

    # the key is in no file and in no printed line
    printed = capfd.readouterr()
    assert "request(s) to gpt-4o-mini" in printed.out  # the cost estimate came before the requests
    for path in all_files(tmp_path):
        assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in printed.out + printed.err


def test_failures_are_reported_and_retried_on_the_next_run(server, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv(KEY_ENV, KEY)
    write_workspace(tmp_path, gpt(server), num_videos=4)
    server.rules.append(("about video002?", "500"))
    assert run_stage(tmp_path, monkeypatch) == 1  # max_failures 0
    failures = json.loads((tmp_path / "data/prompts/gpt.failures.json").read_text())
    assert [f["video_id"] for f in failures] == ["video002"]
    assert "HTTP 500 InternalServerError (max_retries 1)" in failures[0]["error"]
    assert not (tmp_path / "data/prompts/gpt.jsonl").exists()  # no output that looks complete
    assert "1 video(s) without prompts" in capfd.readouterr().err

    server.rules.clear()
    before = len(server.requests)
    assert run_stage(tmp_path, monkeypatch) == 0
    assert len(server.requests) == before + 1  # only the failed video is asked again
    assert len(read_jsonl(tmp_path / "data/prompts/gpt.jsonl")) == 4
    assert json.loads((tmp_path / "data/prompts/gpt.failures.json").read_text()) == []


def test_failures_within_threshold_leave_the_video_out(server, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    write_workspace(tmp_path, gpt(server, api="chat"), num_videos=4, max_failures=1)
    server.rules.append(("about video001?", "schema"))
    assert run_stage(tmp_path, monkeypatch) == 0
    rows = read_jsonl(tmp_path / "data/prompts/gpt.jsonl")
    assert [r["video_id"] for r in rows] == ["video000", "video002", "video003"]
    [failure] = json.loads((tmp_path / "data/prompts/gpt.failures.json").read_text())
    assert failure["video_id"] == "video001" and "violates the schema" in failure["error"]


def test_missing_key_stops_the_stage_before_any_request(server, tmp_path, monkeypatch, capfd):
    monkeypatch.delenv(KEY_ENV, raising=False)
    write_workspace(tmp_path, gpt(server), num_videos=2)
    assert run_stage(tmp_path, monkeypatch) == 1
    assert f"{KEY_ENV} is not set" in capfd.readouterr().err
    assert server.requests == []


def test_another_host_without_api_key_env_stops_the_stage_before_any_request(server, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    generators = gpt(server)
    del generators["gpt"]["api_key_env"]
    write_workspace(tmp_path, generators, num_videos=2)
    assert run_stage(tmp_path, monkeypatch) == 1
    err = capfd.readouterr().err
    assert "prompts.generators.gpt" in err and "api_key_env" in err and server.base_url in err, err
    assert server.requests == []


def test_the_stage_sends_the_named_key_and_never_the_openai_one(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv(KEY_ENV, KEY)
    write_workspace(tmp_path, gpt(server), num_videos=3)
    assert run_stage(tmp_path, monkeypatch) == 0
    assert len(server.requests) == 3 and {r["authorization"] for r in server.requests} == {f"Bearer {KEY}"}
    assert not any(OPENAI_KEY in json.dumps(r["headers"]) for r in server.requests)


def test_annotations_backend_through_the_stage(tmp_path, monkeypatch):
    ws = write_workspace(tmp_path, {"annotations": {"backend": "annotations", "omit_prob": 0.0, "confuse_prob": 0.0}},
                         num_videos=3)
    assert run_stage(tmp_path, monkeypatch, "annotations") == 0
    rows = read_jsonl(tmp_path / "data/prompts/annotations.jsonl")
    assert [r["video_id"] for r in rows] == ws["videos"]
    assert all(r["events"][0]["text"].startswith("First, a ") for r in rows)


@pytest.mark.parametrize("name", ["../../../escaped", ".."])
def test_generator_names_cannot_leave_the_repository(tmp_path, monkeypatch, capfd, name):
    """`--generator ../../../x` once wrote data/prompts/../../../x.jsonl (and its cache) outside the workspace."""
    ws = tmp_path / "a" / "ws"
    write_workspace(ws, {name: {"backend": "annotations", "omit_prob": 0.0, "confuse_prob": 0.0}}, num_videos=3)
    before = {p for p in tmp_path.rglob("*")}
    assert run_stage(ws, monkeypatch, name) == 1
    err = capfd.readouterr().err
    assert repr(name) in err and "prompts.generators" in err, err
    assert {p for p in tmp_path.rglob("*")} == before  # nothing written, inside the workspace or out of it


def test_hf_backend_through_the_stage(tmp_path, monkeypatch):
    from cater.testing.tiny.causal_lm import write_tiny_causal_lm

    script = ["Events:\n", "1. A white square crosses the frame.\n", "Frames:\n", "1. Square at the left.\n",
              "2. Square left of centre.\n", "3. Square right of centre.\n", "4. Square at the right.\n"]
    good = write_tiny_causal_lm(tmp_path / "models/scripted", seed=0, script=script)
    noisy = write_tiny_causal_lm(tmp_path / "models/random", seed=0)
    generators = {"llama3": {"backend": "hf", "model": str(good), "max_new_tokens": 16},
                  "mistral": {"backend": "hf", "model": str(noisy), "max_new_tokens": 8}}
    ws = write_workspace(tmp_path / "ws", generators, num_videos=3)
    assert run_stage(tmp_path / "ws", monkeypatch, "llama3") == 0
    rows = read_jsonl(tmp_path / "ws/data/prompts/llama3.jsonl")
    assert [r["video_id"] for r in rows] == ws["videos"]
    assert rows[0]["frames"][3] == "Square at the right." and rows[0]["events"][0]["end_frame"] == 3
    assert run_stage(tmp_path / "ws", monkeypatch, "mistral") == 1  # random text: all failures, none filled
    failures = json.loads((tmp_path / "ws/data/prompts/mistral.failures.json").read_text())
    assert len(failures) == 3 and all("neither JSON nor" in f["error"] for f in failures)


# ---- kill and resume ----------------------------------------------------------------------------


def _stage_process(workdir: Path) -> subprocess.Popen:
    env = {**os.environ, KEY_ENV: KEY, "OPENAI_API_KEY": OPENAI_KEY, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "cater.stages.prompts", "--generator", "gpt"], cwd=workdir, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_killed_runs_resume_to_identical_output(tmp_path):
    videos, kills, concurrency = 16, 4, 2
    with FakeOpenAIServer(latency=0.15) as srv:
        generators = gpt(srv, concurrency=concurrency)
        reference, resumed = tmp_path / "reference", tmp_path / "resumed"
        for root in (reference, resumed):
            write_workspace(root, generators, num_videos=videos, batch_size=2)
        proc = _stage_process(reference)
        assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()
        reference_requests = len(srv.requests)
        assert reference_requests == videos

        rng = random.Random(7)
        for _ in range(kills):  # each kill lands at a random point after the run's first request
            seen = len(srv.requests)
            proc = _stage_process(resumed)
            deadline = time.monotonic() + 60
            while len(srv.requests) == seen and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        killed_requests = len(srv.requests) - reference_requests
        assert killed_requests >= kills  # every killed run had started asking
        proc = _stage_process(resumed)
        assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()
        resumed_requests = len(srv.requests) - reference_requests

    out = "data/prompts/gpt.jsonl"
    assert (resumed / out).read_bytes() == (reference / out).read_bytes()
    ids = [r["video_id"] for r in read_jsonl(resumed / out)]
    assert len(ids) == videos == len(set(ids))
    [rows_file] = (resumed / "data/.cache/prompts/gpt/rows").glob("*/rows-*.jsonl")
    keys = [r["key"] for r in read_jsonl(rows_file)]
    assert len(keys) == len(set(keys)) == videos  # no row written twice
    assert killed_requests < videos  # the last run still had work left
    # only requests in flight at a kill can be sent again
    assert videos <= resumed_requests <= videos + kills * concurrency
