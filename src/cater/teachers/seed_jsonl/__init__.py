"""`seed_jsonl`: the teacher outputs the seed repository shipped in its JSONL files (see `teacher.py`)."""
from __future__ import annotations

from cater.teachers.seed_jsonl.teacher import NOT_CHOSEN, SeedJsonlTeacher

__all__ = ["NOT_CHOSEN", "SeedJsonlTeacher"]
