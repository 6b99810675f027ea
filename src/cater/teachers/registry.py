"""Teacher families by name, imported lazily so one family's heavy imports never slow the others."""
from __future__ import annotations

import importlib
from pathlib import Path

from cater.teachers.base import Teacher, TeacherConfig, TeacherError

FAMILIES: dict[str, str] = {
    "videollava": "cater.teachers.videollava:VideoLlavaTeacher",
    "flamingo": "cater.teachers.flamingo:FlamingoTeacher",
    "chatunivi": "cater.teachers.chatunivi:ChatUniViTeacher",
    "seed_jsonl": "cater.teachers.seed_jsonl:SeedJsonlTeacher",  # outputs shipped in the seed repository's JSONL
}

# (family, backend, folder name) of every tiny model `scripts/make_tiny_models.py` writes
TINY_MODELS: tuple[tuple[str, str | None, str], ...] = (
    ("videollava", None, "videollava"),
    ("flamingo", "idefics", "idefics"),
    ("flamingo", "openflamingo", "openflamingo"),
    ("chatunivi", None, "chatunivi"),
)


def _import(target: str):
    module_name, attr = target.split(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr)


def teacher_class(family: str) -> type[Teacher]:
    if family not in FAMILIES:
        raise TeacherError(f"unknown teacher family {family!r} (known: {', '.join(sorted(FAMILIES))})")
    return _import(FAMILIES[family])


def build_teacher(config: TeacherConfig) -> Teacher:
    """Load the teacher that `config.family` names from `config.model`."""
    return teacher_class(config.family)(config)


def write_tiny(family: str, path: str | Path, seed: int = 0, backend: str | None = None) -> Path:
    """Write a tiny random checkpoint of `family` (and `backend`, for flamingo) to `path`."""
    if family == "videollava":
        return _import("cater.teachers.videollava:write_tiny_videollava")(path, seed)
    if family == "flamingo":
        writer = _import("cater.teachers.flamingo:write_tiny_flamingo")
        return writer(path, seed) if backend is None else writer(path, seed, backend=backend)
    if family == "chatunivi":
        return _import("cater.teachers.chatunivi:write_tiny_chatunivi")(path, seed)
    raise TeacherError(f"unknown teacher family {family!r} (known: {', '.join(sorted(FAMILIES))})")
