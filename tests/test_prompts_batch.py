"""The openai backend's Batch API mode (`batch: true`) against the loopback server: submit, poll, collect into
the response cache; a SIGKILL between submit and collect re-attaches to the batch; failed, expired and partly
failed batches; no request is ever sent one by one."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fake_openai_server import write_workspace
from cater.io import read_jsonl
from cater.stages.prompts import main

from test_prompts_stage import KEY, KEY_ENV, server  # noqa: F401  (the loopback server fixture)
from test_prompts_stage import gpt as direct_gpt


def gpt(server, **options) -> dict:
    """The stage tests' openai generator, in batch mode."""
    return direct_gpt(server, max_retries=0, batch=True, batch_poll_seconds=0.01, **options)


def run_stage(root: Path, monkeypatch) -> int:
    monkeypatch.chdir(root)
    monkeypatch.setenv(KEY_ENV, KEY)
    return main(["--generator", "gpt"])


def input_lines(server, batch_id: str) -> list[dict]:
    return [json.loads(line) for line in server.uploads[server.batches[batch_id]["input_file_id"]].decode().splitlines()]


@pytest.mark.parametrize("api", ["responses", "chat"])
def test_a_batch_answers_every_video_and_nothing_is_sent_one_by_one(server, tmp_path, monkeypatch, capfd, api):
    work = write_workspace(tmp_path, gpt(server, api=api), num_videos=6)
    assert run_stage(tmp_path, monkeypatch) == 0
    out = capfd.readouterr().out
    assert server.requests == [] and list(server.batches) == ["batch_1"]  # one batch, no direct request
    lines = input_lines(server, "batch_1")
    assert len(lines) == 6 and {line["url"] for line in lines} == {f"/v1/{'responses' if api == 'responses' else 'chat/completions'}"}
    assert all("SECRET-CHOICE" not in json.dumps(line) for line in lines)  # no choice reaches the batch either
    rows = read_jsonl(tmp_path / "data/prompts/gpt.jsonl")
    assert sorted(r["video_id"] for r in rows) == work["videos"] and all(len(r["frames"]) == 4 for r in rows)
    assert "submitted batch batch_1 with 6 request(s)" in out and "batch batch_1: completed, 6 of 6 answer(s) stored" in out
    assert "6 request(s) sent" in out
    # a rerun finds every answer cached: no batch, no request
    (tmp_path / "data/prompts/gpt.jsonl").unlink()
    assert run_stage(tmp_path, monkeypatch) == 0
    assert list(server.batches) == ["batch_1"] and server.requests == []
    assert sorted(r["video_id"] for r in read_jsonl(tmp_path / "data/prompts/gpt.jsonl")) == work["videos"]


def test_a_failed_batch_is_a_failure_per_video_and_the_next_run_submits_again(server, tmp_path, monkeypatch, capfd):
    write_workspace(tmp_path, gpt(server), num_videos=3)
    server.batch_mode = "fail"
    assert run_stage(tmp_path, monkeypatch) == 1
    err = capfd.readouterr().err
    assert "3 video(s) without prompts" in err and "batch batch_1 failed: the input file is not valid JSONL" in err
    failures = json.loads((tmp_path / "data/prompts/gpt.failures.json").read_text())
    assert len(failures) == 3 and all("batch batch_1 failed" in f["error"] for f in failures)
    server.batch_mode = "complete"
    assert run_stage(tmp_path, monkeypatch) == 0
    assert list(server.batches) == ["batch_1", "batch_2"] and len(input_lines(server, "batch_2")) == 3
    assert json.loads((tmp_path / "data/prompts/gpt.failures.json").read_text()) == []


def test_an_expired_batch_keeps_its_answers_and_resubmits_only_the_rest(server, tmp_path, monkeypatch, capfd):
    write_workspace(tmp_path, gpt(server), num_videos=6, max_failures=3)
    server.batch_mode = "expire"
    assert run_stage(tmp_path, monkeypatch) == 0  # 3 answered, 3 failures: within max_failures
    assert "batch batch_1: expired, 3 of 6 answer(s) stored" in capfd.readouterr().out
    assert len(read_jsonl(tmp_path / "data/prompts/gpt.jsonl")) == 3
    assert all("batch batch_1 expired" in f["error"] for f in json.loads((tmp_path / "data/prompts/gpt.failures.json").read_text()))
    server.batch_mode = "complete"
    assert run_stage(tmp_path, monkeypatch) == 0
    first = {line["custom_id"] for line in input_lines(server, "batch_1")}
    second = {line["custom_id"] for line in input_lines(server, "batch_2")}
    assert len(second) == 3 and second < first  # only the unanswered half again
    assert len(read_jsonl(tmp_path / "data/prompts/gpt.jsonl")) == 6 and server.requests == []


def test_a_line_that_fails_in_the_batch_names_its_error(server, tmp_path, monkeypatch):
    work = write_workspace(tmp_path, gpt(server), num_videos=3, max_failures=1)
    server.rules.append(("Question 0 about video001", "400"))  # that video's line gets a 400 in the error file
    assert run_stage(tmp_path, monkeypatch) == 0
    [failure] = json.loads((tmp_path / "data/prompts/gpt.failures.json").read_text())
    assert failure["video_id"] == work["videos"][1] and "batch batch_1: HTTP 400: Invalid image" in failure["error"]


def test_batches_are_split_by_request_count(server, tmp_path, monkeypatch):
    write_workspace(tmp_path, gpt(server, batch_max_requests=2), num_videos=5)
    assert run_stage(tmp_path, monkeypatch) == 0
    assert [len(input_lines(server, b)) for b in server.batches] == [2, 2, 1]


def _stage_process(root: Path) -> subprocess.Popen:
    env = {**os.environ, KEY_ENV: KEY, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "cater.stages.prompts", "--generator", "gpt"], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigkill_between_submit_and_collect_re_attaches_instead_of_resubmitting(server, tmp_path):
    work = write_workspace(tmp_path, gpt(server), num_videos=4)
    server.batch_mode = "hold"  # the batch stays in progress: the stage is polling it when it is killed
    proc = _stage_process(tmp_path)
    state = tmp_path / "data/.cache/prompts/gpt/batches.json"
    deadline = time.monotonic() + 60
    while not (state.exists() and json.loads(state.read_text())) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)  # polling now
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert list(server.batches) == ["batch_1"] and list(json.loads(state.read_text())) == ["batch_1"]
    assert not (tmp_path / "data/prompts/gpt.jsonl").exists()
    server.batch_mode = "complete"
    proc = _stage_process(tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "re-attaching to 1 submitted batch(es) (4 requests): batch_1" in out
    assert list(server.batches) == ["batch_1"] and server.requests == []  # never submitted twice, never sent directly
    assert sorted(r["video_id"] for r in read_jsonl(tmp_path / "data/prompts/gpt.jsonl")) == work["videos"]
    assert json.loads(state.read_text()) == {}


def test_api_batch_is_the_responses_api_through_batches(server, tmp_path):
    from cater.prompts.openai_backend import OpenAIBackend

    backend = OpenAIBackend(model="gpt-4o-mini", cache_dir=tmp_path, base_url=server.base_url, api_key_env=KEY_ENV, api="batch")
    assert backend.batch and backend.api == "responses" and backend.endpoint == "/v1/responses"
    with pytest.raises(ValueError, match="batch must be true or false"):
        OpenAIBackend(model="m", cache_dir=tmp_path, base_url=server.base_url, api_key_env=KEY_ENV, batch="yes")
