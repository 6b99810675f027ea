"""OpenAIBackend: one request per video (or the Batch API, `batch`), answers cached by the sha256 of the payload."""
from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cater.prompts.base import PromptBackend, PromptError, PromptRequest, VideoPrompts, spread_events
from cater.prompts.openai_backend.batch import BatchMode
from cater.prompts.openai_backend.keys import (_UNSET, OPENAI_BASE_URL, _redact, api_key_from_env, is_openai_url,
                                               request_headers, resolve_api_key_env)
from cater.prompts.openai_backend.messages import (INSTRUCTIONS, OUTPUT_SCHEMA, SCHEMA_NAME, _short, _usage, chat_text,
                                                   encode_image, parse_output, responses_text, user_text)
from cater.prompts.openai_backend.pricing import estimate_line
from cater.prompts.response_cache import ResponseCache, request_key

APIS = ("responses", "chat")
DETAILS = ("low", "high", "auto")
IMAGE_FORMATS = ("jpeg", "png")


class OpenAIBackend(BatchMode, PromptBackend):
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
            raise ValueError("model must be a non-empty string")
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
                return responses_text(response), _usage(response)
            completion = client.chat.completions.create(**body, **self._request_options())
            return chat_text(completion), _usage(completion)
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

    def client(self):
        """The OpenAI client, created on first use; the key comes from the environment only.

        The base URL is always passed (so OPENAI_BASE_URL cannot redirect the key). For another server the
        client's key is that server's (or a placeholder that `_request_options` keeps off the wire)."""
        if self._client is None:
            import openai

            key = api_key_from_env(self.api_key_env)
            self._key = key
            self._client = openai.OpenAI(api_key=key or "no-key-sent", base_url=self.base_url or OPENAI_BASE_URL,
                                         timeout=self.timeout, max_retries=self.max_retries)
        return self._client

    def _request_options(self) -> dict[str, Any]:
        """Headers that override whatever the client took from OPENAI_* variables (see keys.request_headers)."""
        return request_headers(self.openai_host, self._key)

    # ---- cost -------------------------------------------------------------------------------

    def estimate(self, requests: list[PromptRequest]) -> str:
        """A worst-case cost line for `requests` (cached responses not subtracted); frames may be memory-mapped."""
        return estimate_line(requests, self.model, self.image_size, self.detail, self.max_output_tokens, self.prices,
                             self.batch, self.use_subtitles)
