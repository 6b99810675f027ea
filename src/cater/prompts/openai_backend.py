"""`openai`: event and frame prompts from a vision-language model behind the OpenAI API.

Each video becomes one request: the sampled frames as images (data URLs, resized so the longer
side is at most `image_size`) plus the questions asked about the video as context (questions only:
never choices, never answers). The model must answer with strict JSON-schema structured output
`{"events": [str, ...], "frames": [str, ...]}`, with exactly one frame sentence per image; event
sentences are spread over the frames in order (`spread_events`).

Requests go through the official `openai` client, which does the retrying (`max_retries`, with
`retry-after` honoured); this module adds what the client does not: a malformed response body,
output that is not the JSON asked for, refusals and truncated answers all become that video's
PromptError with the reason. `concurrency` requests run at once, in a thread pool. Every answered
request is stored in a response cache keyed by the sha256 of its payload (see response_cache.py),
so a rerun, or a run resumed after a kill, never sends a finished request again.

The API key is read from the environment only (`OPENAI_API_KEY`, or the variable named by
`api_key_env`), and only when a request has to be sent; it is never written anywhere.

OpenAI-compatible servers (vLLM, Ollama, ...) work through `base_url`. Use `api: chat` (Chat
Completions is what they all implement). The OpenAI key goes only to OpenAI: a `base_url` other than
`https://api.openai.com/...` needs `api_key_env`, the variable holding *that* server's key (never
OPENAI_API_KEY), or `api_key_env: null` (or `none`) to send no key at all; without it the backend
refuses to start. Requests to such a server carry exactly that key in `Authorization` (or none), and
no OpenAI organization or project header, whatever OPENAI_* variables the environment holds:

    # vLLM:   vllm serve Qwen/Qwen2.5-VL-7B-Instruct --port 8000 --api-key local-secret
    #         export VLLM_API_KEY=local-secret
    generators:
      qwen-vl:
        backend: openai
        api: chat
        model: Qwen/Qwen2.5-VL-7B-Instruct
        base_url: http://localhost:8000/v1
        api_key_env: VLLM_API_KEY

    # Ollama: ollama pull llava:7b ; export OLLAMA_API_KEY=ollama  (Ollama ignores the value)
    generators:
      llava-ollama:
        backend: openai
        api: chat
        model: llava:7b
        base_url: http://localhost:11434/v1
        api_key_env: OLLAMA_API_KEY
        concurrency: 1

Structured output through `response_format: json_schema` needs vLLM with guided decoding (the
default) or Ollama >= 0.5; older servers may answer free text, which then fails validation and
is reported per video.
"""
from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from cater.prompts.base import PromptBackend, PromptError, PromptRequest, VideoPrompts, spread_events, subtitle_lines
from cater.prompts.response_cache import ResponseCache, request_key

APIS = ("responses", "chat")
OPENAI_BASE_URL = "https://api.openai.com/v1"
OPENAI_KEY_ENV = "OPENAI_API_KEY"
_UNSET = object()  # api_key_env not given: OPENAI_API_KEY for OpenAI itself, an error for any other host
DETAILS = ("low", "high", "auto")
IMAGE_FORMATS = ("jpeg", "png")

OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "events": {"type": "array", "items": {"type": "string"}},
        "frames": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["events", "frames"],
    "additionalProperties": False,
}
SCHEMA_NAME = "video_prompts"

INSTRUCTIONS = (
    "You describe short videos for a video question-answering model. You see frames sampled "
    "uniformly from one video, in time order. Answer with JSON only:\n"
    '- "events": the distinct events of the video in the order they happen, one short factual '
    "sentence each (who or what, its colour and shape or appearance, what it does, where it moves);\n"
    '- "frames": exactly one short sentence per frame, in frame order, saying what is visible in '
    "that frame and where.\n"
    "Describe only what you see. Do not answer the questions; they only tell you what matters."
)


def encode_image(frame: np.ndarray, image_size: int, image_format: str = "jpeg", jpeg_quality: int = 90) -> str:
    """A data URL of one uint8 [H, W, 3] frame, downscaled so its longer side is <= image_size."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8), mode="RGB")
    w, h = image.size
    scale = image_size / max(w, h)
    if scale < 1:
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    if image_format == "png":
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format="JPEG", quality=jpeg_quality)
    mime = "image/png" if image_format == "png" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def user_text(request: PromptRequest, use_subtitles: bool = False) -> str:
    n = len(request.frame_times)
    times = ", ".join(f"{t:.2f}" for t in request.frame_times)
    lines = [f"The video has {n} frames below, at {times} seconds.", f'Give exactly {n} sentences in "frames".']
    if request.questions:
        lines.append("Questions that will be asked about this video (context only, do not answer them):")
        lines += [f"- {q}" for q in request.questions]
    if use_subtitles:
        lines += subtitle_lines(request.subtitles)
    return "\n".join(lines)


def parse_output(text: str, num_frames: int) -> tuple[list[str], list[str]]:
    """(events, frames) from the model's JSON text; PromptError naming what is wrong."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PromptError(f"output is not JSON ({exc.msg} at char {exc.pos}): {text[:120]!r}") from None
    if not isinstance(obj, dict) or set(obj) != {"events", "frames"}:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise PromptError(f"output violates the schema: expected keys ['events', 'frames'], got {keys}")
    for field in ("events", "frames"):
        items = obj[field]
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            raise PromptError(f"output violates the schema: '{field}' must be a list of strings")
        if any(not s.strip() for s in items):
            raise PromptError(f"output violates the schema: '{field}' holds an empty sentence")
    if not obj["events"]:
        raise PromptError("output violates the schema: 'events' is empty")
    if len(obj["frames"]) != num_frames:
        raise PromptError(f"output has {len(obj['frames'])} frame sentences for {num_frames} frames")
    return [s.strip() for s in obj["events"]], [s.strip() for s in obj["frames"]]


def is_openai_url(base_url: str | None) -> bool:
    """True for OpenAI's own API (`None` means it): https, host api.openai.com, default port, no user info."""
    if base_url is None:
        return True
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(str(base_url))
        port = parts.port
    except ValueError:
        return False
    return (parts.scheme == "https" and parts.hostname == "api.openai.com" and port in (None, 443)
            and parts.username is None and parts.password is None)


def resolve_api_key_env(base_url: str | None, api_key_env: Any) -> str | None:
    """The environment variable whose value is sent as the key, or None for "send no key"."""
    openai_host = is_openai_url(base_url)
    if api_key_env is _UNSET:
        if openai_host:
            return OPENAI_KEY_ENV
        raise ValueError(
            f"base_url {base_url!r} is not OpenAI's API ({OPENAI_BASE_URL}): set api_key_env to the environment "
            f"variable holding that server's key, or api_key_env: null to send no key ({OPENAI_KEY_ENV} is only "
            f"ever sent to OpenAI)")
    if api_key_env is None or (isinstance(api_key_env, str) and api_key_env.lower() == "none"):
        return None
    if not isinstance(api_key_env, str) or not api_key_env:
        raise ValueError("api_key_env must name an environment variable (or be null: send no key)")
    if api_key_env == OPENAI_KEY_ENV and not openai_host:
        raise ValueError(
            f"api_key_env: {OPENAI_KEY_ENV} is only sent to https://api.openai.com; base_url {base_url!r} is another "
            f"server: give its key a variable of its own (or api_key_env: null to send no key)")
    return api_key_env


# Image input tokens per model family, from OpenAI's API documentation ("Images and vision", "Calculating costs",
# as of 2025). Tile models: base + per-512-px-tile tokens after fitting into 2048 px and scaling the short side
# to 768 px (detail low: the base only). Patch models: 32-px patches (at most 1536, the image scaled down to fit),
# times a multiplier; detail does not change them. Longest prefix wins; anything else (a local server's model)
# falls back to gpt-4o's rule, and the estimate says so.
TILE_RULES = {"gpt-4o-mini": (2833, 5667), "gpt-4o": (85, 170), "gpt-4.1": (85, 170), "gpt-4.5": (85, 170),
              "o1": (75, 150), "o3": (75, 150)}
PATCH_RULES = {"gpt-4.1-mini": 1.62, "gpt-4.1-nano": 2.46, "o4-mini": 1.72}
FALLBACK_RULE = "gpt-4o"


def image_rule(model: str) -> tuple[str, bool]:
    """(the rule's family name, whether the model is known) for `model`, e.g. gpt-4o-mini-2024-07-18 -> gpt-4o-mini."""
    names = sorted([*TILE_RULES, *PATCH_RULES], key=len, reverse=True)
    family = next((name for name in names if model == name or model.startswith(name + "-")), None)
    return (family, True) if family else (FALLBACK_RULE, False)


def image_tokens(height: int, width: int, detail: str, model: str = "gpt-4o") -> int:
    """Input tokens of one image for `model`'s family (TILE_RULES / PATCH_RULES)."""
    family, _ = image_rule(model)
    if family in PATCH_RULES:
        patches = math.ceil(width / 32) * math.ceil(height / 32)
        if patches > 1536:
            shrink = math.sqrt(32 * 32 * 1536 / (width * height))
            w, h = width * shrink / 32, height * shrink / 32
            shrink *= min(math.floor(w) / w, math.floor(h) / h)  # whole patches along the tighter side
            patches = math.ceil(width * shrink / 32) * math.ceil(height * shrink / 32)
        return math.ceil(min(patches, 1536) * PATCH_RULES[family])
    base, tile = TILE_RULES[family]
    if detail == "low":
        return base
    scale = min(1.0, 2048 / max(height, width))
    h, w = height * scale, width * scale
    scale = min(1.0, 768 / min(h, w))
    h, w = h * scale, w * scale
    return base + tile * math.ceil(h / 512) * math.ceil(w / 512)


BATCH_TERMINAL = ("completed", "failed", "expired", "cancelled")


class OpenAIBackend(PromptBackend):
    name = "openai"

    def __init__(
        self,
        model: str,
        cache_dir,
        base_url: str | None = None,
        api: str = "responses",
        timeout: float = 60.0,
        max_retries: int = 5,
        concurrency: int = 4,
        image_size: int = 512,
        image_format: str = "jpeg",
        jpeg_quality: int = 90,
        detail: str = "low",
        api_key_env: Any = _UNSET,
        temperature: float | None = 0.0,
        max_output_tokens: int = 1024,
        usd_per_1m_input_tokens: float | None = None,
        usd_per_1m_output_tokens: float | None = None,
        batch: bool = False,
        batch_poll_seconds: float = 60.0,
        batch_max_requests: int = 50_000,
        batch_max_bytes: int = 190_000_000,
        use_subtitles: bool = False,
    ):
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a non-empty string")
        if api == "batch":  # shorthand: the Responses API through the Batch API (the same answers, the same cache)
            api, batch = "responses", True
        if api not in APIS:
            raise ValueError(f"api must be one of {APIS} (or batch), got {api!r}")
        if detail not in DETAILS:
            raise ValueError(f"detail must be one of {DETAILS}, got {detail!r}")
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
        if isinstance(jpeg_quality, bool) or not isinstance(jpeg_quality, int) or not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be an integer in 1..100 (the seed's --openai_jpeg_quality: 75), got {jpeg_quality!r}")
        for key, value in (("concurrency", concurrency), ("image_size", image_size), ("max_output_tokens", max_output_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be a non-negative integer, got {max_retries!r}")
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if base_url is not None and (not isinstance(base_url, str) or not base_url):
            raise ValueError(f"base_url must be a URL string or null, got {base_url!r}")
        api_key_env = resolve_api_key_env(base_url, api_key_env)
        self.openai_host = is_openai_url(base_url)
        self.model, self.base_url, self.api = model, base_url, api
        self.timeout, self.max_retries, self.concurrency = float(timeout), max_retries, concurrency
        self.image_size, self.image_format, self.detail = image_size, image_format, detail
        self.jpeg_quality = jpeg_quality
        self.api_key_env, self.temperature, self.max_output_tokens = api_key_env, temperature, max_output_tokens
        self.prices = (usd_per_1m_input_tokens, usd_per_1m_output_tokens)
        if not isinstance(batch, bool):
            raise ValueError(f"batch must be true or false, got {batch!r}")
        for key, value in (("batch_max_requests", batch_max_requests), ("batch_max_bytes", batch_max_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        if isinstance(batch_poll_seconds, bool) or not isinstance(batch_poll_seconds, (int, float)) or batch_poll_seconds < 0:
            raise ValueError(f"batch_poll_seconds must be a number >= 0, got {batch_poll_seconds!r}")
        if not isinstance(use_subtitles, bool):
            raise ValueError(f"use_subtitles must be true or false, got {use_subtitles!r}")
        self.use_subtitles = use_subtitles
        self.batch, self.batch_poll_seconds = batch, float(batch_poll_seconds)
        self.batch_max_requests, self.batch_max_bytes = batch_max_requests, batch_max_bytes
        self.batch_state_path = Path(cache_dir).parent / "batches.json"  # the submitted batches: a killed stage re-attaches
        self.batch_failures: dict[str, str] = {}  # request key -> why this run's batches did not answer it
        self.cache = ResponseCache(cache_dir)
        self._client = None
        self._key: str | None = None
        self.requests_sent = 0  # requests handed to the client (its own retries not counted)
        self._count_lock = threading.Lock()

    # ---- payloads ---------------------------------------------------------------------------

    def payload(self, request: PromptRequest) -> dict[str, Any]:
        """The request body, exactly as sent (and hashed for the cache)."""
        images = [encode_image(frame, self.image_size, self.image_format, self.jpeg_quality) for frame in request.frames]
        if self.api == "responses":
            content: list[dict] = [{"type": "input_text", "text": user_text(request, self.use_subtitles)}]
            for i, (url, t) in enumerate(zip(images, request.frame_times)):
                content.append({"type": "input_text", "text": f"Frame {i + 1} (t={t:.2f}s):"})
                content.append({"type": "input_image", "image_url": url, "detail": self.detail})
            body = {
                "model": self.model,
                "instructions": INSTRUCTIONS,
                "input": [{"role": "user", "content": content}],
                "text": {"format": {"type": "json_schema", "name": SCHEMA_NAME, "schema": OUTPUT_SCHEMA, "strict": True}},
                "max_output_tokens": self.max_output_tokens,
            }
        else:
            content = [{"type": "text", "text": user_text(request, self.use_subtitles)}]
            for i, (url, t) in enumerate(zip(images, request.frame_times)):
                content.append({"type": "text", "text": f"Frame {i + 1} (t={t:.2f}s):"})
                content.append({"type": "image_url", "image_url": {"url": url, "detail": self.detail}})
            body = {
                "model": self.model,
                "messages": [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": content}],
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": SCHEMA_NAME, "schema": OUTPUT_SCHEMA, "strict": True},
                },
                "max_completion_tokens": self.max_output_tokens,
            }
        if self.temperature is not None:
            body["temperature"] = self.temperature
        return body

    def cache_key(self, body: dict) -> str:
        return request_key({"api": self.api, "body": body})

    # ---- generation -------------------------------------------------------------------------

    def generate(self, requests: list[PromptRequest]) -> list[VideoPrompts | PromptError]:
        results: list[VideoPrompts | PromptError | None] = [None] * len(requests)
        pending = []
        for i, request in enumerate(requests):
            body = self.payload(request)
            key = self.cache_key(body)
            cached = self.cache.get(key)
            if cached is not None:
                results[i] = self._to_prompts(request, cached["output_text"])
            elif self.batch:  # answered by the batches (prefetch) or not at all: never sent one by one
                reason = self.batch_failures.get(key, "not answered: no batch was run for it (prefetch first)")
                results[i] = PromptError(f"video {request.video_id}: {reason}")
            else:
                pending.append((i, request, body, key))
        if pending:
            client = self.client()  # a missing key fails here, before any request
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(pending))) as pool:
                futures = [(i, pool.submit(self._ask_one, client, request, body, key)) for i, request, body, key in pending]
                for i, future in futures:
                    results[i] = future.result()
        return results  # type: ignore[return-value]

    def _ask_one(self, client, request: PromptRequest, body: dict, key: str) -> VideoPrompts | PromptError:
        try:
            text, usage = self._send(client, body)
            prompts = self._to_prompts(request, text, raise_errors=True)
        except PromptError as exc:
            return PromptError(f"video {request.video_id}: {exc}")
        self.cache.put(key, {"api": self.api, "model": self.model, "output_text": text, "usage": usage})
        return prompts

    # ---- the Batch API ------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return "/v1/responses" if self.api == "responses" else "/v1/chat/completions"

    def _load_batches(self) -> dict[str, dict]:
        if not self.batch_state_path.exists():
            return {}
        try:
            return json.loads(self.batch_state_path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{self.batch_state_path}: damaged ({exc.msg}); it lists the submitted batches: check them "
                             "on the OpenAI dashboard before deleting it, or their answers are paid for twice") from None

    def _save_batches(self, state: dict[str, dict]) -> None:
        from cater.io import atomic_write_json

        atomic_write_json(self.batch_state_path, state)

    def prefetch(self, chunks: Iterable[list[PromptRequest]], echo: Callable[[str], None] = print) -> None:
        """Batch mode: send every request not answered yet in OpenAI batches (a JSONL file uploaded, then one batch
        per `batch_max_requests` / `batch_max_bytes`), wait for them, and put each valid answer into the response
        cache, where `generate` finds it. A batch's id is saved in batches.json the moment it exists, so a killed
        stage re-attaches to it instead of submitting again; requests of failed or expired batches are submitted
        again by the next run. `chunks` yields requests a few videos at a time (frames in memory per chunk only)."""
        state = {bid: b for bid, b in self._load_batches().items() if b["status"] not in BATCH_TERMINAL}
        self._save_batches(state)  # finished batches were stored by the run that saw them finish
        waiting = {key for b in state.values() for key in b["frames"]}
        if state:
            echo(f"re-attaching to {len(state)} submitted batch(es) ({len(waiting)} requests): " + ", ".join(sorted(state)))
        self.batch_state_path.parent.mkdir(parents=True, exist_ok=True)
        input_path = self.batch_state_path.with_name("batch-input.jsonl.tmp")
        handle, frames_of, size = None, {}, 0
        for chunk in chunks:
            for request in chunk:
                body = self.payload(request)
                key = self.cache_key(body)
                if key in self.cache or key in waiting or key in frames_of:
                    continue
                line = json.dumps({"custom_id": key, "method": "POST", "url": self.endpoint, "body": body},
                                  sort_keys=True, separators=(",", ":")) + "\n"
                if frames_of and (size + len(line) > self.batch_max_bytes or len(frames_of) >= self.batch_max_requests):
                    handle.close()
                    self._submit(input_path, frames_of, state, echo)
                    handle, frames_of, size = None, {}, 0
                if handle is None:
                    handle = open(input_path, "w", encoding="utf-8")
                handle.write(line)
                frames_of[key], size = len(request.frame_times), size + len(line)
        if handle is not None:
            handle.close()
            self._submit(input_path, frames_of, state, echo)
        input_path.unlink(missing_ok=True)
        self._collect(state, echo)

    def _submit(self, input_path: Path, frames_of: dict[str, int], state: dict, echo) -> None:
        client = self.client()
        options = self._request_options()
        with open(input_path, "rb") as handle:
            uploaded = client.files.create(file=(input_path.name.removesuffix(".tmp"), handle), purpose="batch", **options)
        batch = client.batches.create(input_file_id=uploaded.id, endpoint=self.endpoint, completion_window="24h", **options)
        state[batch.id] = {"status": batch.status, "input_file_id": uploaded.id, "frames": dict(frames_of)}
        self._save_batches(state)  # before anything else can fail: a killed stage finds its batch here
        with self._count_lock:
            self.requests_sent += len(frames_of)
        echo(f"submitted batch {batch.id} with {len(frames_of)} request(s) (completion window 24h)")

    def _collect(self, state: dict, echo) -> None:
        """Poll the submitted batches until each has finished; store what they answered."""
        while state:
            client = self.client()
            for bid in sorted(state):
                batch = client.batches.retrieve(bid, **self._request_options())
                if batch.status not in BATCH_TERMINAL:
                    continue
                stored = self._store_results(client, batch, state[bid]["frames"])
                errors = getattr(batch, "errors", None)
                detail = "; ".join(str(getattr(e, "message", e)) for e in (getattr(errors, "data", None) or []))
                for key in state[bid]["frames"]:
                    if key not in self.cache and key not in self.batch_failures:
                        self.batch_failures[key] = f"batch {bid} {batch.status}" + (f": {detail}" if detail else "")
                echo(f"batch {bid}: {batch.status}, {stored} of {len(state[bid]['frames'])} answer(s) stored"
                     + (f" ({detail})" if detail else ""))
                del state[bid]
                self._save_batches(state)
            if state:
                echo(f"waiting for {len(state)} batch(es): " + ", ".join(f"{b} {state[b]['status']}" for b in sorted(state)))
                time.sleep(self.batch_poll_seconds)

    def _store_results(self, client, batch, frames_of: dict[str, int]) -> int:
        """Valid answers of a finished batch into the response cache; the reason for every other line."""
        import openai

        stored = 0
        for file_id in (getattr(batch, "output_file_id", None), getattr(batch, "error_file_id", None)):
            if not file_id:
                continue
            text = client.files.content(file_id, **self._request_options()).text
            for line in text.splitlines():
                if not line.strip():
                    continue
                row = json.loads(line)
                key = row.get("custom_id")
                if key not in frames_of:
                    continue
                response = row.get("response") or {}
                body = response.get("body") or {}
                if response.get("status_code") != 200:
                    message = (body.get("error") or {}).get("message") or row.get("error") or "no response"
                    self.batch_failures[key] = f"batch {batch.id}: HTTP {response.get('status_code')}: {_short(message)}"
                    continue
                try:
                    if self.api == "responses":
                        answer = self._responses_text(openai.types.responses.Response.construct(**body))  # as the client builds it
                    else:
                        answer = self._chat_text(openai.types.chat.ChatCompletion.construct(**body))
                    parse_output(answer, frames_of[key])
                except (PromptError, ValueError) as exc:
                    self.batch_failures[key] = f"batch {batch.id}: {_short(str(exc))}"
                    continue
                self.cache.put(key, {"api": self.api, "model": self.model, "output_text": answer,
                                     "usage": body.get("usage"), "batch": batch.id})
                stored += 1
        return stored

    def _to_prompts(self, request: PromptRequest, text: str, raise_errors: bool = False) -> VideoPrompts | PromptError:
        n = len(request.frame_times)
        try:
            events, frames = parse_output(text, n)
        except PromptError as exc:
            if raise_errors:
                raise
            return PromptError(f"video {request.video_id}: cached response: {exc}")
        return VideoPrompts(video_id=request.video_id, events=spread_events(events, n), frames=frames)

    def _send(self, client, body: dict) -> tuple[str, dict | None]:
        """One request (the client retries); the output text, or PromptError with the reason."""
        import openai

        with self._count_lock:
            self.requests_sent += 1
        tries = f"(max_retries {self.max_retries})"
        try:
            if self.api == "responses":
                response = client.responses.create(**body, **self._request_options())
                return self._responses_text(response), _usage(response)
            completion = client.chat.completions.create(**body, **self._request_options())
            return self._chat_text(completion), _usage(completion)
        except openai.APITimeoutError:
            raise PromptError(f"request timed out ({self.timeout:g} s) {tries}") from None
        except openai.APIConnectionError as exc:
            raise PromptError(f"cannot connect to {client.base_url} {tries} ({type(exc).__name__})") from None
        except openai.APIStatusError as exc:  # servers may quote the key back: never keep it
            message = _redact(exc.message, self._key or "")
            raise PromptError(f"HTTP {exc.status_code} {type(exc).__name__} {tries}: {_short(message)}") from None
        except openai.APIResponseValidationError as exc:
            raise PromptError(f"response body does not match the API ({_short(exc.message)})") from None
        except json.JSONDecodeError as exc:
            raise PromptError(f"malformed response body (JSONDecodeError: {exc.msg} at char {exc.pos})") from None

    @staticmethod
    def _responses_text(response) -> str:
        if isinstance(response, str):  # the client hands back non-JSON bodies as text
            raise PromptError(f"malformed response body (not JSON): {response[:120]!r}")
        status = getattr(response, "status", None)
        if status not in (None, "completed"):
            details = getattr(response, "incomplete_details", None)
            reason = getattr(details, "reason", None) or getattr(response, "error", None)
            raise PromptError(f"response {status}: {reason}")
        try:
            for item in response.output:
                for part in getattr(item, "content", None) or []:
                    if getattr(part, "type", None) == "refusal":
                        raise PromptError(f"model refused: {_short(str(part.refusal))}")
            return response.output_text
        except (AttributeError, TypeError) as exc:
            raise PromptError(f"response body does not match the Responses API ({exc})") from None

    @staticmethod
    def _chat_text(completion) -> str:
        if isinstance(completion, str):
            raise PromptError(f"malformed response body (not JSON): {completion[:120]!r}")
        try:
            choice = completion.choices[0]
            message = choice.message
            if getattr(message, "refusal", None):
                raise PromptError(f"model refused: {_short(message.refusal)}")
            if choice.finish_reason == "length":
                raise PromptError("answer cut off at max_output_tokens")
            if not isinstance(message.content, str):
                raise PromptError("answer has no text content")
            return message.content
        except (AttributeError, TypeError, IndexError) as exc:
            raise PromptError(f"response body does not match the Chat Completions API ({exc})") from None

    def client(self):
        """The OpenAI client, created on first use; the key comes from the environment only.

        The base URL is always passed (so OPENAI_BASE_URL cannot redirect the key). For another server the
        client's key is that server's (or a placeholder that `_request_options` keeps off the wire)."""
        if self._client is None:
            import openai

            key = None
            if self.api_key_env is not None:
                key = os.environ.get(self.api_key_env)
                if not key:
                    raise ValueError(
                        f"environment variable {self.api_key_env} is not set; the openai prompt backend needs an API key "
                        f"(set it, or name another variable with prompts.generators.<name>.api_key_env)"
                    )
            self._key = key
            self._client = openai.OpenAI(api_key=key or "no-key-sent", base_url=self.base_url or OPENAI_BASE_URL,
                                         timeout=self.timeout, max_retries=self.max_retries)
        return self._client

    def _request_options(self) -> dict[str, Any]:
        """Headers that override whatever the client took from OPENAI_* variables (OPENAI_CUSTOM_HEADERS,
        OPENAI_ORG_ID, OPENAI_PROJECT_ID): another server gets exactly its own key, or no Authorization at all."""
        if self.openai_host and self._key:
            return {}
        import openai

        return {"extra_headers": {"Authorization": f"Bearer {self._key}" if self._key else openai.Omit(),
                                  "OpenAI-Organization": openai.Omit(), "OpenAI-Project": openai.Omit()}}

    # ---- cost -------------------------------------------------------------------------------

    def estimate(self, requests: list[PromptRequest]) -> str:
        """A worst-case cost line for `requests` (cached responses not subtracted); frames may be memory-mapped."""
        images = text_tokens = img_tokens = 0
        for request in requests:
            _, h, w, _ = request.frames.shape
            scale = min(1.0, self.image_size / max(h, w))
            per_image = image_tokens(round(h * scale), round(w * scale), self.detail, self.model)
            images += len(request.frame_times)
            img_tokens += per_image * len(request.frame_times)
            text_tokens += (len(INSTRUCTIONS) + len(user_text(request, self.use_subtitles)) + 20 * len(request.frame_times)) // 4
        out_tokens = self.max_output_tokens * len(requests)
        family, known = image_rule(self.model)
        rule = f"the {family} image rule" if known else f"no image rule known for {self.model}: {family}'s, a rough guide"
        line = (
            f"up to {len(requests)} request(s) to {self.model} with {images} image(s): "
            f"~{text_tokens + img_tokens:,} input tokens ({img_tokens:,} for images at detail={self.detail}, "
            f"{rule}), <= {out_tokens:,} output tokens"
        )
        usd_in, usd_out = self.prices
        if usd_in is not None and usd_out is not None:
            cost = (text_tokens + img_tokens) * usd_in / 1e6 + out_tokens * usd_out / 1e6
            line += f", <= ${cost * 0.5:.2f} with the Batch API (half the listed prices)" if self.batch else f", <= ${cost:.2f}"
        return line


def _usage(response) -> dict | None:
    usage = getattr(response, "usage", None)
    if usage is None or not hasattr(usage, "model_dump"):
        return None
    return usage.model_dump(mode="json")


def _redact(text: Any, key: str) -> str:
    """`text` without the key and without anything shaped like an OpenAI key."""
    text = str(text).replace(key, "<redacted>") if key else str(text)
    return re.sub(r"sk-[A-Za-z0-9_*\-]{4,}", "sk-<redacted>", text)


def _short(text: Any, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
