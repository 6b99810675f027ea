"""A content-addressed cache of model responses, one JSON file per request.

The key is the sha256 of the canonical JSON of everything that determines the answer: the API
flavour, the model and the full request payload (messages, image data URLs, output schema,
generation settings). The API key, the server address, timeouts and retry settings are not part
of it. Each entry is written to a temporary file and renamed, so a killed run leaves either a
whole entry or none, and an entry, once written, is never rewritten.

Only responses that parsed and validated are stored: a failed video is asked again on the next
run, while a finished one is never asked twice.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cater.io import atomic_write_text


def request_key(payload: Any) -> str:
    """sha256 hex digest of the canonical JSON of `payload`."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


class ResponseCache:
    """Stored responses under `directory/<key[:2]>/<key>.json`."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def _path(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"response cache key must be a sha256 hex digest, got {key!r}")
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        path = self._path(key)
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:  # only a hand-edited file can be torn: writes are atomic
            raise ValueError(f"{path}: corrupt response cache entry ({exc.msg}); delete it to ask again") from None

    def put(self, key: str, record: dict) -> None:
        path = self._path(key)
        if path.exists():  # same key, same request: the first answer stays
            return
        atomic_write_text(path, json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")

    def __contains__(self, key: str) -> bool:
        return self._path(key).exists()

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("??/*.json")) if self.directory.exists() else 0
