"""The `openai` prompt backend against a local OpenAI-compatible server (tests/fake_openai_server.py)."""
from __future__ import annotations

import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from fake_openai_server import FakeOpenAIServer
from cater.prompts.base import PromptError, PromptRequest, VideoPrompts
from cater.prompts.openai_backend import OpenAIBackend, image_tokens, parse_output
from cater.prompts.registry import make_backend, result_config

KEY = "sk-test-DO-NOT-LEAK-4242"  # the real OpenAI key: it must never reach another host
SERVER_KEY = "local-server-key-1234"  # the fake server's own key, in FAKE_SERVER_KEY
SERVER_KEY_ENV = "FAKE_SERVER_KEY"


def requests_for(n: int, num_frames: int = 4, size=(48, 64)) -> list[PromptRequest]:
    rng = np.random.default_rng(1)
    out = []
    for v in range(n):
        frames = np.empty((num_frames, *size, 3), dtype=np.uint8)
        for f in range(num_frames):
            frames[f] = rng.integers(0, 256, size=3)  # one flat colour per frame
        out.append(PromptRequest(video_id=f"v{v}", frames=frames, frame_times=[0.5 * f for f in range(num_frames)],
                                 questions=[f"What moved in clip {v}?"]))
    return out


@pytest.fixture
def server():
    with FakeOpenAIServer(timeout_sleep=1.5) as srv:
        yield srv


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv(SERVER_KEY_ENV, SERVER_KEY)


def backend(server, tmp_path, **options) -> OpenAIBackend:
    options = {"model": "gpt-4o-mini", "base_url": server.base_url, "api_key_env": SERVER_KEY_ENV, "max_retries": 2,
               "timeout": 1.0, **options}
    return OpenAIBackend(cache_dir=tmp_path / "responses", **options)


@pytest.mark.parametrize("api,path", [("responses", "/v1/responses"), ("chat", "/v1/chat/completions")])
@pytest.mark.parametrize("image_format", ["png", "jpeg"])
def test_images_and_questions_reach_the_server(server, tmp_path, api, path, image_format):
    reqs = requests_for(2)
    results = backend(server, tmp_path, api=api, image_format=image_format, image_size=32).generate(reqs)
    assert all(isinstance(r, VideoPrompts) for r in results), results
    assert [r["path"] for r in server.requests] == [path, path]
    assert all(r["authorization"] == f"Bearer {SERVER_KEY}" for r in server.requests)
    by_question = {str(r["body"]).split("What moved in clip ")[1][0]: r for r in server.requests}
    for v, request in enumerate(reqs):
        got = by_question[str(v)]
        assert len(got["images"]) == 4
        for frame, image in zip(request.frames, got["images"]):
            assert image["mime"] == f"image/{image_format}"
            assert image["size"] == [32, 24]  # longer side resized to image_size, aspect kept
            assert np.abs(np.array(image["mean"]) - frame.reshape(-1, 3).mean(0)).max() <= 3
    # the answer is built from the images, so the prompts carry the colours the server saw
    first = results[0]
    assert len(first.frames) == 4 and "mean colour" in first.frames[0]
    assert first.events[0]["start_frame"] == 0 and first.events[-1]["end_frame"] == 3


def test_structured_output_is_requested(server, tmp_path):
    backend(server, tmp_path, api="responses", detail="high").generate(requests_for(1))
    backend(server, tmp_path / "chat", api="chat").generate(requests_for(1))
    responses_body, chat_body = server.requests[0]["body"], server.requests[1]["body"]
    fmt = responses_body["text"]["format"]
    assert fmt["type"] == "json_schema" and fmt["strict"] is True
    assert fmt["schema"]["required"] == ["events", "frames"] and fmt["schema"]["additionalProperties"] is False
    assert all(p["detail"] == "high" for p in responses_body["input"][0]["content"] if p["type"] == "input_image")
    assert chat_body["response_format"]["type"] == "json_schema"
    assert chat_body["response_format"]["json_schema"]["strict"] is True
    assert chat_body["messages"][0]["role"] == "system"


def test_client_retries_recover_from_429_500_and_timeout(server, tmp_path):
    server.queue_faults(["429", "500", "timeout"])
    results = backend(server, tmp_path, max_retries=3, timeout=0.5, concurrency=1).generate(requests_for(2))
    assert all(isinstance(r, VideoPrompts) for r in results), results
    assert [r["fault"] for r in server.requests] == ["429", "500", "timeout", None, None]


@pytest.mark.parametrize("fault,reason", [
    ("500", "HTTP 500 InternalServerError (max_retries 2)"),
    ("429", "HTTP 429 RateLimitError (max_retries 2)"),
    ("timeout", "timed out"),
    ("malformed", "malformed response body (JSONDecodeError"),
    ("schema", "violates the schema"),
    ("count", "3 frame sentences for 4 frames"),
    ("notjson", "output is not JSON"),
])
def test_failures_become_prompt_errors_with_reasons(server, tmp_path, fault, reason):
    reqs = requests_for(2)
    server.rules.append(("clip 1?", fault))  # video v1 fails on every try
    b = backend(server, tmp_path, max_retries=2, timeout=0.4)
    ok, failed = b.generate(reqs)
    assert isinstance(ok, VideoPrompts)
    assert isinstance(failed, PromptError)
    assert str(failed).startswith("video v1: ") and reason in str(failed), str(failed)
    retried = fault in ("500", "429", "timeout")
    assert sum(1 for r in server.requests if r["fault"]) == (3 if retried else 1)
    # a failure is not cached: the next run asks again (and succeeds once the fault is gone)
    server.rules.clear()
    before = len(server.requests)
    again = b.generate(reqs)
    assert all(isinstance(r, VideoPrompts) for r in again)
    assert len(server.requests) == before + 1


def test_cache_answers_a_rerun_without_requests(server, tmp_path):
    reqs = requests_for(3)
    first = backend(server, tmp_path).generate(reqs)
    assert len(server.requests) == 3
    fresh = backend(server, tmp_path)  # a new process would build a new backend on the same cache dir
    again = fresh.generate(reqs)
    assert len(server.requests) == 3 and fresh.requests_sent == 0
    assert [r.to_record() for r in again] == [r.to_record() for r in first]
    # a different model or image size is a different request
    backend(server, tmp_path, image_size=16).generate(reqs[:1])
    assert len(server.requests) == 4


def test_concurrency_runs_requests_in_parallel(server, tmp_path):
    server.latency = 0.3
    results = backend(server, tmp_path, concurrency=4).generate(requests_for(8))
    assert all(isinstance(r, VideoPrompts) for r in results)
    assert server.max_in_flight >= 2
    server.max_in_flight = 0
    backend(server, tmp_path / "seq", concurrency=1).generate(requests_for(2))
    assert server.max_in_flight == 1


def test_missing_key_fails_before_any_request(server, tmp_path, monkeypatch):
    monkeypatch.delenv(SERVER_KEY_ENV)
    with pytest.raises(ValueError, match=f"{SERVER_KEY_ENV} is not set"):
        backend(server, tmp_path).generate(requests_for(1))
    assert server.requests == []
    monkeypatch.setenv("MY_SERVER_KEY", "local-key")
    backend(server, tmp_path, api_key_env="MY_SERVER_KEY").generate(requests_for(1))
    assert [r["authorization"] for r in server.requests] == ["Bearer local-key"]


# ---- the OpenAI key goes only to OpenAI ---------------------------------------------------------


def test_another_host_without_api_key_env_is_refused_before_sending(server, tmp_path):
    """With OPENAI_API_KEY set, a loopback base_url without api_key_env once got the OpenAI key."""
    with pytest.raises(ValueError, match=r"api_key_env") as info:
        OpenAIBackend(model="m", cache_dir=tmp_path, base_url=server.base_url).generate(requests_for(1))
    assert server.base_url in str(info.value) and "OPENAI_API_KEY" in str(info.value)
    with pytest.raises(ValueError, match=r"prompts\.generators\.local: .*api_key_env"):
        make_backend("local", {"backend": "openai", "model": "m", "base_url": server.base_url}, tmp_path)
    assert server.requests == []


@pytest.mark.parametrize("base_url", ["http://api.openai.com/v1", "https://api.openai.com.example.net/v1",
                                      "https://api.openai.com@example.net/v1", "https://example.net/api.openai.com/v1"])
def test_look_alike_hosts_are_not_openai(tmp_path, base_url):
    with pytest.raises(ValueError, match="api_key_env"):
        OpenAIBackend(model="m", cache_dir=tmp_path, base_url=base_url)


def test_the_openai_key_cannot_be_named_for_another_host(server, tmp_path):
    with pytest.raises(ValueError, match="OPENAI_API_KEY is only sent to https://api.openai.com"):
        backend(server, tmp_path, api_key_env="OPENAI_API_KEY")
    assert server.requests == []


def test_api_key_env_sends_that_key_and_never_the_openai_one(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_ADMIN_KEY", KEY + "-admin")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-" + KEY)
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-" + KEY)
    monkeypatch.setenv("OPENAI_CUSTOM_HEADERS", f"Authorization: Bearer {KEY}")
    for api in ("responses", "chat"):
        results = backend(server, tmp_path / api, api=api).generate(requests_for(2))
        assert all(isinstance(r, VideoPrompts) for r in results), results
    assert len(server.requests) == 4
    assert all(r["authorization"] == f"Bearer {SERVER_KEY}" for r in server.requests)
    for r in server.requests:
        assert KEY not in json.dumps(r["headers"]), r["headers"]


@pytest.mark.parametrize("no_key", [None, "none", "None"])
def test_api_key_env_null_sends_no_key(server, tmp_path, monkeypatch, no_key):
    monkeypatch.setenv("OPENAI_CUSTOM_HEADERS", f"Authorization: Bearer {KEY}")
    results = backend(server, tmp_path, api_key_env=no_key).generate(requests_for(1))
    assert isinstance(results[0], VideoPrompts), results
    [sent] = server.requests
    assert sent["authorization"] is None and KEY not in json.dumps(sent["headers"]) and SERVER_KEY not in json.dumps(sent["headers"])


def test_openai_itself_gets_the_openai_key_by_default(tmp_path, monkeypatch, server):
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)  # must not redirect the key either
    for base_url in (None, "https://api.openai.com/v1", "https://API.openai.com/v1/"):
        client = OpenAIBackend(model="m", cache_dir=tmp_path, base_url=base_url).client()
        assert client.api_key == KEY and str(client.base_url).startswith("https://api.openai.com/v1"), client.base_url
    assert server.requests == []


def test_bad_options_fail_early(tmp_path):
    with pytest.raises(ValueError, match="api must be one of"):
        make_backend("gpt", {"backend": "openai", "model": "m", "api": "completions"}, tmp_path)
    with pytest.raises(ValueError, match="prompts.generators.gpt.*unexpected keyword argument 'modle'"):
        make_backend("gpt", {"backend": "openai", "modle": "m"}, tmp_path)
    with pytest.raises(ValueError, match="concurrency must be a positive integer"):
        make_backend("gpt", {"backend": "openai", "model": "m", "concurrency": 0}, tmp_path)


def test_runtime_settings_do_not_change_the_result_config():
    a = {"backend": "openai", "model": "m", "concurrency": 1, "timeout": 5}
    b = {"backend": "openai", "model": "m", "concurrency": 8, "timeout": 60}
    assert result_config(a) == result_config(b) == {"backend": "openai", "model": "m"}
    assert result_config({**a, "model": "n"}) != result_config(a)


def test_parse_output():
    events, frames = parse_output('{"events": [" a ", "b"], "frames": ["x", "y"]}', 2)
    assert events == ["a", "b"] and frames == ["x", "y"]
    for text, reason in [('{"events": [], "frames": ["x"]}', "'events' is empty"),
                         ('{"events": ["a"], "frames": ["x"], "extra": 1}', "expected keys"),
                         ('{"events": ["a"], "frames": [1]}', "list of strings"),
                         ('{"events": ["a"], "frames": [" "]}', "empty sentence"),
                         ('[1]', "expected keys"),
                         ('{"events": ["a"], "frames": ["x"', "not JSON")]:
        with pytest.raises(PromptError, match=reason.replace("[", r"\[")):
            parse_output(text, 1)


def test_image_token_rule():
    assert image_tokens(1024, 1024, "low") == 85
    assert image_tokens(1024, 1024, "high") == 765  # 768x768 -> 4 tiles
    assert image_tokens(2048, 4096, "high") == 1105  # 768x1536 -> 6 tiles
    # gpt-4o-mini: the same tiles, far more tokens per tile (OpenAI's table: 2833 base, 5667 per tile)
    assert image_tokens(1024, 1024, "low", "gpt-4o-mini") == 2833
    assert image_tokens(1024, 1024, "high", "gpt-4o-mini-2024-07-18") == 2833 + 4 * 5667
    assert image_tokens(1024, 1024, "high", "o3") == 75 + 4 * 150
    # patch models: 32 px patches (at most 1536) times the model's multiplier; detail does not matter
    assert image_tokens(1024, 1024, "low", "gpt-4.1-mini") == math.ceil(1024 * 1.62)
    assert image_tokens(2400, 1800, "high", "gpt-4.1-nano") == math.ceil(1452 * 2.46)  # the docs' 1800x2400: 1452 patches
    assert image_tokens(64, 64, "high", "o4-mini") == math.ceil(4 * 1.72)
    # gpt-4o-mini is not gpt-4o, gpt-4.1-mini is not gpt-4.1: the longest prefix wins
    from cater.prompts.openai_backend import image_rule

    assert image_rule("gpt-4o-mini") == ("gpt-4o-mini", True) and image_rule("gpt-4.1-mini-2025-04-14") == ("gpt-4.1-mini", True)
    assert image_rule("Qwen/Qwen2.5-VL-7B-Instruct") == ("gpt-4o", False)


def test_estimate_mentions_requests_images_and_price(server, tmp_path):
    line = backend(server, tmp_path, usd_per_1m_input_tokens=0.15, usd_per_1m_output_tokens=0.6).estimate(requests_for(3))
    assert "up to 3 request(s)" in line and "12 image(s)" in line and "$" in line
    assert "the gpt-4o-mini image rule" in line and f"({12 * 2833:,} for images at detail=low" in line
    local = backend(server, tmp_path, model="llava:7b").estimate(requests_for(1))
    assert "no image rule known for llava:7b: gpt-4o's, a rough guide" in local
    assert not server.requests


def test_keys_are_redacted_from_error_reasons(server, tmp_path):
    from cater.prompts.openai_backend import _redact

    assert _redact("Incorrect API key provided: sk-proj-****************abcd.", "unrelated") == \
        "Incorrect API key provided: sk-<redacted>."
    server.rules.append(("clip 0?", "401"))
    [failed] = backend(server, tmp_path).generate(requests_for(1))
    assert "HTTP 401 AuthenticationError" in str(failed) and SERVER_KEY not in str(failed) and KEY not in str(failed)
    assert len(server.requests) == 1  # 401 is not retried


def test_jpeg_quality_sets_the_encoded_quality_and_is_checked(server, tmp_path):
    import base64
    import io

    from PIL import Image

    from cater.prompts.openai_backend import encode_image

    request = requests_for(1, size=(48, 64))[0]
    frame = request.frames[0]
    urls = {q: encode_image(frame, 64, "jpeg", q) for q in (20, 95)}
    decoded = {q: np.asarray(Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1]))), dtype=float) for q, u in urls.items()}
    error = {q: np.abs(d - frame).mean() for q, d in decoded.items()}
    assert error[95] < error[20] and len(urls[20]) < len(urls[95])
    payload = json.dumps(backend(server, tmp_path, jpeg_quality=20, image_size=64).payload(request), default=str)
    assert urls[20] in payload and urls[95] not in payload  # the request carries the chosen quality
    for bad in (0, 101, 7.5, True):
        with pytest.raises(ValueError, match="jpeg_quality must be an integer in 1..100"):
            backend(server, tmp_path, jpeg_quality=bad)


def test_subtitles_reach_the_model_only_when_the_generator_asks(server, tmp_path):
    import dataclasses

    [request] = requests_for(1)
    request = dataclasses.replace(request, subtitles="(Sheldon:) That's my spot.")
    without = json.dumps(backend(server, tmp_path).payload(request))
    with_subtitles = json.dumps(backend(server, tmp_path, use_subtitles=True).payload(request))
    assert "That's my spot" not in without and "Subtitles of this video" not in without
    assert "(Sheldon:) That's my spot." in with_subtitles and "Subtitles of this video" in with_subtitles
    results = backend(server, tmp_path / "s", use_subtitles=True).generate([request])
    assert isinstance(results[0], VideoPrompts) and "That's my spot" in json.dumps(server.requests[-1]["body"])
    with pytest.raises(ValueError, match="use_subtitles"):
        backend(server, tmp_path, use_subtitles="yes")
