"""A small OpenAI-compatible HTTP server for tests, standard library (+ Pillow to read images).

Implements POST /v1/responses and POST /v1/chat/completions. The answer is deterministic: one
frame sentence per image received, naming the image's size and mean colour, and one event per
pair of images, so a test can see that the images arrived intact. Every request is recorded.

Faults, to exercise the client's retries and the backend's error handling:
- `server.queue_faults(["429", "500", ...])`: the next requests, in arrival order, get these;
- `server.rules.append((substring, fault))`: every request whose body contains `substring` gets
  `fault` (a persistent failure, e.g. for one video's question).
Fault kinds: "401" (echoes the key it got, as some servers do), "429" (with retry-after), "500", "timeout" (sleeps `timeout_sleep` s before answering),
"malformed" (200 with a truncated JSON body), "schema" (valid JSON, output without "frames"),
"count" (one frame sentence too few), "notjson" (output text that is not JSON).
`latency` adds a delay to every request; `max_in_flight` is the most requests served at once.

The Batch API too: POST /v1/files (multipart upload), POST /v1/batches, GET /v1/batches/<id>,
GET /v1/files/<id>/content. `batch_mode` decides what a batch does once it has been retrieved
`batch_polls` times: "complete" (every line answered as a direct request would be), "expire" (the
first half answered, status expired), "fail" (status failed, no output), "hold" (stays in_progress
until the mode changes). A line whose body contains a `rules` substring gets a 400 in the error file.
`batches` holds every batch created; `uploads` every uploaded file.
"""
from __future__ import annotations

import base64
import io
import json
import threading
import time
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

FAULTS = ("401", "429", "500", "timeout", "malformed", "schema", "count", "notjson")


def _images(body: dict) -> list[str]:
    """Data URLs of the images in a Responses or Chat Completions body, in order."""
    urls = []
    messages = body.get("input") or body.get("messages") or []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if part.get("type") == "input_image":
                urls.append(part["image_url"])
            elif part.get("type") == "image_url":
                urls.append(part["image_url"]["url"])
    return urls


def _describe(url: str) -> dict:
    from PIL import Image

    header, data = url.split(",", 1)
    image = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
    pixels = np.asarray(image, dtype=np.float64)
    return {"mime": header[5:].split(";")[0], "size": list(image.size), "mean": [round(v) for v in pixels.mean(axis=(0, 1))]}


def answer_for(images: list[dict]) -> dict:
    frames = [f"Frame {i + 1}: a {w}x{h} picture, mean colour {m[0]} {m[1]} {m[2]}."
              for i, (w, h, m) in enumerate((d["size"][0], d["size"][1], d["mean"]) for d in images)]
    events = [f"Something happens around frame {i + 1}." for i in range(0, len(images), 2)] or ["Nothing happens."]
    return {"events": events, "frames": frames}


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # a killed client resets its connection
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


class FakeOpenAIServer:
    def __init__(self, latency: float = 0.0, timeout_sleep: float = 2.0):
        self.latency, self.timeout_sleep = latency, timeout_sleep
        self.requests: list[dict] = []  # {"path", "authorization", "headers", "body", "images", "fault"}
        self.rules: list[tuple[str, str]] = []
        self._queue: list[str] = []
        self.in_flight = self.max_in_flight = 0
        self.batch_mode, self.batch_polls = "complete", 1
        self.uploads: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._httpd = _QuietServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def queue_faults(self, faults: list[str]) -> None:
        assert all(f in FAULTS for f in faults), faults
        with self._lock:
            self._queue.extend(faults)

    def __enter__(self) -> "FakeOpenAIServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _next_fault(self, raw: str) -> str | None:
        with self._lock:
            for substring, fault in self.rules:
                if substring in raw:
                    return fault
            return self._queue.pop(0) if self._queue else None

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

            def do_GET(self) -> None:
                parts = self.path.strip("/").split("/")
                with server._lock:
                    if parts[:2] == ["v1", "batches"] and len(parts) == 3 and parts[2] in server.batches:
                        batch = server.batches[parts[2]]
                        batch["polls"] += 1
                        if batch["status"] == "in_progress" and batch["polls"] >= server.batch_polls:
                            server._finish(batch)
                        self._send(200, json.dumps({k: v for k, v in batch.items() if k != "polls"}).encode())
                        return
                    if parts[:2] == ["v1", "files"] and len(parts) == 4 and parts[3] == "content" and parts[2] in server.uploads:
                        self._send(200, server.uploads[parts[2]], {"content-type": "application/octet-stream"})
                        return
                self._send(404, json.dumps({"error": {"message": f"no route {self.path}"}}).encode())

            def _upload(self, raw: bytes) -> None:
                boundary = self.headers.get("content-type", "").split("boundary=")[-1].strip('"').encode()
                data = next(part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]
                            for part in raw.split(b"--" + boundary) if b'name="file"' in part)
                with server._lock:
                    file_id = f"file-{len(server.uploads) + 1}"
                    server.uploads[file_id] = data
                self._send(200, json.dumps({"id": file_id, "object": "file", "bytes": len(data), "created_at": 0,
                                            "filename": "batch.jsonl", "purpose": "batch", "status": "processed"}).encode())

            def _create_batch(self, raw: bytes) -> None:
                request = json.loads(raw)
                with server._lock:
                    batch_id = f"batch_{len(server.batches) + 1}"
                    server.batches[batch_id] = {
                        "id": batch_id, "object": "batch", "endpoint": request["endpoint"], "input_file_id": request["input_file_id"],
                        "completion_window": request["completion_window"], "status": "in_progress", "created_at": 0,
                        "output_file_id": None, "error_file_id": None, "errors": None, "polls": 0,
                        "request_counts": {"total": 0, "completed": 0, "failed": 0}}
                    body = {k: v for k, v in server.batches[batch_id].items() if k != "polls"}
                self._send(200, json.dumps(body).encode())

            def do_POST(self) -> None:
                raw_bytes = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.path == "/v1/files":
                    self._upload(raw_bytes)
                    return
                if self.path == "/v1/batches":
                    self._create_batch(raw_bytes)
                    return
                raw = raw_bytes.decode("utf-8")
                if self.path not in ("/v1/responses", "/v1/chat/completions"):
                    self._send(404, json.dumps({"error": {"message": f"no route {self.path}"}}).encode())
                    return
                with server._lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self._answer(raw)
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _answer(self, raw: str) -> None:
                body = json.loads(raw)
                fault = server._next_fault(raw)
                images = [_describe(url) for url in _images(body)]
                with server._lock:
                    server.requests.append({"path": self.path, "authorization": self.headers.get("authorization"),
                                            "headers": dict(self.headers.items()),
                                            "body": body, "images": images, "fault": fault})
                time.sleep(server.latency)
                if fault == "401":
                    token = (self.headers.get("authorization") or "").removeprefix("Bearer ")
                    error = {"error": {"message": f"Incorrect API key provided: {token}.", "code": "invalid_api_key"}}
                    self._send(401, json.dumps(error).encode())
                elif fault == "429":
                    error = {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}
                    self._send(429, json.dumps(error).encode(), {"retry-after": "0.05"})
                elif fault == "500":
                    error = {"error": {"message": "The server had an error", "type": "server_error"}}
                    self._send(500, json.dumps(error).encode(), {"retry-after-ms": "50"})
                elif fault == "malformed":
                    self._send(200, b'{"id": "resp_1", "output": [{"type": "mess')
                else:
                    if fault == "timeout":
                        time.sleep(server.timeout_sleep)
                    output = answer_for(images)
                    if fault == "schema":
                        output = {"events": output["events"]}
                    elif fault == "count":
                        output["frames"] = output["frames"][:-1]
                    text = "Sure! Here are the prompts." if fault == "notjson" else json.dumps(output)
                    self._send(200, json.dumps(self._wrap(body, text)).encode())

            def _wrap(self, body: dict, text: str) -> dict:
                return wrap(self.path, body, text)

        return Handler

    def _finish(self, batch: dict) -> None:
        """Run a batch's lines (called with the lock held): output and error files, final status."""
        if self.batch_mode == "hold":
            return
        if self.batch_mode == "fail":
            batch.update(status="failed", errors={"object": "list", "data": [
                {"code": "invalid_request", "message": "the input file is not valid JSONL", "line": 1}]})
            return
        lines = [json.loads(line) for line in self.uploads[batch["input_file_id"]].decode().splitlines() if line.strip()]
        answered = lines[: len(lines) // 2] if self.batch_mode == "expire" else lines
        outputs, errors = [], []
        for n, line in enumerate(answered):
            raw = json.dumps(line["body"])
            if any(substring in raw for substring, _ in self.rules):
                errors.append({"id": f"req_{n}", "custom_id": line["custom_id"], "error": None, "response": {
                    "status_code": 400, "body": {"error": {"message": "Invalid image", "type": "invalid_request_error"}}}})
                continue
            text = json.dumps(answer_for([_describe(url) for url in _images(line["body"])]))
            outputs.append({"id": f"req_{n}", "custom_id": line["custom_id"], "error": None,
                            "response": {"status_code": 200, "request_id": f"r{n}", "body": wrap(line["url"], line["body"], text)}})
        for kind, rows in (("output_file_id", outputs), ("error_file_id", errors)):
            if rows:
                file_id = f"file-{len(self.uploads) + 1}"
                self.uploads[file_id] = "".join(json.dumps(r) + "\n" for r in rows).encode()
                batch[kind] = file_id
        batch["status"] = "expired" if self.batch_mode == "expire" else "completed"
        batch["request_counts"] = {"total": len(lines), "completed": len(outputs), "failed": len(errors)}


def wrap(path: str, body: dict, text: str) -> dict:
    """A Responses or Chat Completions body holding `text`, as `path` answers."""
    usage_in, usage_out = 100, len(text) // 4
    if path == "/v1/responses":
        return {
            "id": "resp_fake", "object": "response", "created_at": 0, "status": "completed",
            "model": body.get("model"), "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            "output": [{"type": "message", "id": "msg_fake", "status": "completed", "role": "assistant",
                        "content": [{"type": "output_text", "text": text, "annotations": []}]}],
            "usage": {"input_tokens": usage_in, "output_tokens": usage_out, "total_tokens": usage_in + usage_out,
                      "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}},
        }
    return {
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": body.get("model"),
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": text, "refusal": None}}],
        "usage": {"prompt_tokens": usage_in, "completion_tokens": usage_out, "total_tokens": usage_in + usage_out},
    }


# ---- a tiny workspace for the prompts stage -----------------------------------------------------


def write_workspace(root, generators: dict, num_videos: int = 6, num_frames: int = 4, batch_size: int = 4,
                    max_failures: int = 0, seed: int = 0) -> dict:
    """params.yaml, data/splits/*.jsonl and a frame store (index.json + .npy) under `root`.

    Each video's frames are a flat colour with a moving white square; samples carry events made by
    the shapes demo generator (for the annotations backend) and choices with a marker string that
    must never reach a prompt backend. Returns {"videos": [...], "frames": {video_id: array}}.
    """
    import random
    from pathlib import Path

    import yaml

    from cater.data.schema import Sample, write_samples
    from cater.data.shapes import ShapesConfig, make_events

    root = Path(root)
    rng = np.random.default_rng(seed)
    frames_dir = root / "data" / "frames"
    frames_dir.mkdir(parents=True, exist_ok=True)
    index, arrays, by_split = {}, {}, {"train": [], "val": [], "test": []}
    splits = list(by_split)
    for v in range(num_videos):
        video_id = f"video{v:03d}"
        colour = rng.integers(0, 256, size=3)
        pixels = np.empty((num_frames, 32, 40, 3), dtype=np.uint8)
        pixels[:] = colour.astype(np.uint8)
        for f in range(num_frames):
            pixels[f, 10:18, 4 + 6 * f: 12 + 6 * f] = 255
        np.save(frames_dir / f"{video_id}.npy", pixels)
        times = [round(0.5 + f, 2) for f in range(num_frames)]
        index[video_id] = {"file": f"{video_id}.npy", "times": times, "num_frames": num_frames}
        arrays[video_id] = pixels
        events = make_events(random.Random(seed * 1000 + v), ShapesConfig())
        split = splits[v % 3]
        for q in range(2):
            by_split[split].append(Sample(
                id=f"{video_id}-q{q}", dataset="tiny", split=split, video=f"videos/{video_id}.mp4",
                video_id=video_id, question=f"Question {q} about {video_id}?",
                choices=[f"SECRET-CHOICE-{video_id}-{q}-{c}" for c in range(3)], answer_idx=q % 3,
                question_type="first", events=events))
    (frames_dir / "index.json").write_text(json.dumps(index, indent=1, sort_keys=True))
    for split, samples in by_split.items():
        write_samples(root / "data" / "splits" / f"{split}.jsonl", samples)
    params = {"frames": {"num_frames": num_frames},
              "prompts": {"generators": generators, "max_failures": max_failures, "batch_size": batch_size}}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=True))
    return {"videos": sorted(index), "frames": arrays}
