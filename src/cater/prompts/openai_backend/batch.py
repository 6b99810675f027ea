"""The Batch API mode (`batch: true` / `api: batch`): every request not answered yet goes into JSONL files
uploaded to OpenAI, one batch each; the batches' ids are kept in batches.json the moment they exist, so a killed
stage re-attaches instead of paying twice; finished batches' valid answers go into the response cache, where
`generate` finds them, and every other line's reason is kept for the failures report."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Iterable

from cater.prompts.base import PromptError, PromptRequest
from cater.prompts.openai_backend.messages import _short, chat_text, parse_output, responses_text

BATCH_TERMINAL = ("completed", "failed", "expired", "cancelled")


class BatchMode:
    """The Batch API half of OpenAIBackend (a mixin): it uses the backend's `api`, `model`, `cache`, `payload`,
    `cache_key`, `client`, `_request_options`, `batch_*` settings, `batch_failures` and request counter."""

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
                        answer = responses_text(openai.types.responses.Response.construct(**body))  # as the client builds it
                    else:
                        answer = chat_text(openai.types.chat.ChatCompletion.construct(**body))
                    parse_output(answer, frames_of[key])
                except (PromptError, ValueError) as exc:
                    self.batch_failures[key] = f"batch {batch.id}: {_short(str(exc))}"
                    continue
                self.cache.put(key, {"api": self.api, "model": self.model, "output_text": answer,
                                     "usage": body.get("usage"), "batch": batch.id})
                stored += 1
        return stored
