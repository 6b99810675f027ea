"""Tiny random teacher checkpoints in the real formats, for the demo and tests (`scripts/make_tiny_models.py`).

Each writer is deterministic in its seed, so the files are byte-identical from run to run.
"""
from __future__ import annotations

from pathlib import Path

from cater.teachers.base import TeacherError
from cater.testing.tiny.chatunivi import write_tiny_chatunivi
from cater.testing.tiny.flamingo import write_tiny_flamingo
from cater.testing.tiny.videollava import write_tiny_videollava

# (family, backend, folder name) of every tiny model `scripts/make_tiny_models.py` writes
TINY_MODELS: tuple[tuple[str, str | None, str], ...] = (
    ("videollava", None, "videollava"),
    ("flamingo", "idefics", "idefics"),
    ("flamingo", "openflamingo", "openflamingo"),
    ("chatunivi", None, "chatunivi"),
)
FAMILIES = ("chatunivi", "flamingo", "videollava")


def write_tiny(family: str, path: str | Path, seed: int = 0, backend: str | None = None) -> Path:
    """Write a tiny random checkpoint of `family` (and `backend`, for flamingo) to `path`."""
    if family == "videollava":
        return write_tiny_videollava(path, seed)
    if family == "flamingo":
        return write_tiny_flamingo(path, seed) if backend is None else write_tiny_flamingo(path, seed, backend=backend)
    if family == "chatunivi":
        return write_tiny_chatunivi(path, seed)
    raise TeacherError(f"unknown teacher family {family!r} (tiny checkpoints exist for: {', '.join(FAMILIES)})")


__all__ = ["TINY_MODELS", "write_tiny", "write_tiny_chatunivi", "write_tiny_flamingo", "write_tiny_videollava"]
