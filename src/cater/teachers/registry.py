"""Teacher families by name, imported lazily so one family's heavy imports never slow the others.

The tiny-checkpoint writers live in `cater.testing.tiny` (`TINY_MODELS`, `write_tiny`)."""
from __future__ import annotations

import importlib

from cater.teachers.base import Teacher, TeacherConfig, TeacherError

FAMILIES: dict[str, str] = {
    "videollava": "cater.teachers.videollava:VideoLlavaTeacher",
    "flamingo": "cater.teachers.flamingo:FlamingoTeacher",
    "chatunivi": "cater.teachers.chatunivi:ChatUniViTeacher",
    "seed_jsonl": "cater.teachers.seed_jsonl:SeedJsonlTeacher",  # outputs shipped in the seed repository's JSONL
}


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
