"""The one normalized sample schema shared by every dataset.

A sample is one multiple-choice question about one video. `samples.jsonl` holds one JSON
object per line; `read_samples` validates every line and names `file:line` and the field on error.

Text fields have size limits (`LIMITS`, `MAX_CHOICES`, `MAX_EVENTS`, `MAX_LINE_CHARS`), far above any
official dataset's, so one malformed record cannot blow up tokenization downstream (a 102k-character
question once took a run to 22 GB); an oversized field is an error naming file:line, sample and field.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from cater.io import atomic_write_text

SPLITS = ("train", "val", "test")


class SchemaError(ValueError):
    """A sample file violates the schema; the message names the file, line and field."""


@dataclass
class Sample:
    id: str
    dataset: str
    split: str
    video: str  # the video file or frame folder, relative to the repository root (under data/; see data/raw/README.md)
    question: str
    choices: list[str]
    answer_idx: int | None  # None only where the official release hides the answer (TVQA test_public)
    question_type: str
    video_id: str = ""  # samples of the same video share frames and prompts; defaults to `video`
    start: float | None = None  # optional time window in seconds
    end: float | None = None
    subtitles: str | None = None
    events: list[dict[str, Any]] | None = None  # ground-truth events, demo only: {label, start, end, ...}
    given_prompts: dict[str, list[str]] | None = None  # prompts shipped with the data (seed JSONL): {event: [...], frame: [...]}

    def __post_init__(self) -> None:
        if not self.video_id:
            self.video_id = self.video

    def to_json(self) -> str:
        record = {k: v for k, v in asdict(self).items() if v is not None or k == "answer_idx"}
        return json.dumps(record, ensure_ascii=False, sort_keys=True)


_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "id": str,
    "dataset": str,
    "split": str,
    "video": str,
    "question": str,
    "choices": list,
    "answer_idx": (int, type(None)),
    "question_type": str,
}
_OPTIONAL: dict[str, type | tuple[type, ...]] = {
    "video_id": str,
    "start": (int, float, type(None)),
    "end": (int, float, type(None)),
    "subtitles": (str, type(None)),
    "events": (list, type(None)),
    "given_prompts": (dict, type(None)),
}


# Characters per field (per choice for `choices`). TVQA's longest question is ~250 characters and its
# subtitles per clip window a few thousand; the limits leave a wide margin.
LIMITS: dict[str, int] = {
    "id": 256,
    "dataset": 100,
    "video": 4096,
    "video_id": 256,
    "question": 2000,
    "choices": 500,
    "question_type": 100,
    "subtitles": 20000,
}
MAX_CHOICES = 26  # the teachers accept at most len(teachers.base.LETTERS); the runner checks that
MAX_EVENTS = 256
MAX_LINE_CHARS = 200_000  # a whole JSON line, checked before it is parsed


def _fail(where: str, msg: str) -> SchemaError:
    return SchemaError(f"{where}: {msg}")


def validate_record(record: Any, where: str) -> Sample:
    """Check one decoded JSON record and build a Sample. `where` is `file:line`."""
    if not isinstance(record, dict):
        raise _fail(where, f"expected a JSON object, got {type(record).__name__}")
    for key, typ in _REQUIRED.items():
        if key not in record:
            raise _fail(where, f"missing field '{key}'")
        value = record[key]
        if isinstance(value, bool) or not isinstance(value, typ):
            raise _fail(where, f"field '{key}' has type {type(value).__name__}, expected {_type_name(typ)}")
    for key, typ in _OPTIONAL.items():
        if key in record and (isinstance(record[key], bool) or not isinstance(record[key], typ)):
            raise _fail(where, f"field '{key}' has type {type(record[key]).__name__}, expected {_type_name(typ)}")
    unknown = set(record) - set(_REQUIRED) - set(_OPTIONAL)
    if unknown:
        raise _fail(where, f"unknown field(s) {sorted(unknown)}")
    _check_sizes(record, where)
    if not record["id"]:
        raise _fail(where, "field 'id' is empty")
    if record["split"] not in SPLITS:
        raise _fail(where, f"field 'split' is {record['split']!r}, expected one of {SPLITS}")
    if not record["question"].strip():
        raise _fail(where, "field 'question' is empty")
    choices = record["choices"]
    if len(choices) < 2:
        raise _fail(where, f"field 'choices' has {len(choices)} choice(s), need at least 2")
    for i, choice in enumerate(choices):
        if not isinstance(choice, str) or not choice.strip():
            raise _fail(where, f"field 'choices[{i}]' must be a non-empty string")
    answer = record["answer_idx"]
    if answer is not None and not 0 <= answer < len(choices):
        raise _fail(where, f"field 'answer_idx' is {answer}, out of range for {len(choices)} choices")
    _check_given_prompts(record.get("given_prompts"), where)
    start, end = record.get("start"), record.get("end")
    if start is not None and end is not None and end < start:
        raise _fail(where, f"fields 'start'/'end' form an empty window ({start} > {end})")
    return Sample(**record)


def _check_given_prompts(given: Any, where: str) -> None:
    if given is None:
        return
    unknown = set(given) - {"event", "frame"}
    if unknown or "event" not in given:
        raise _fail(where, f"field 'given_prompts' must have an 'event' list (and optionally 'frame'), got keys {sorted(given)}")
    for kind, texts in given.items():
        if not isinstance(texts, list) or not texts or len(texts) > MAX_EVENTS:
            raise _fail(where, f"field 'given_prompts.{kind}' must be a list of 1 to {MAX_EVENTS} strings")
        for i, text in enumerate(texts):
            if not isinstance(text, str) or len(text) > LIMITS["question"]:
                raise _fail(where, f"field 'given_prompts.{kind}[{i}]' must be a string of at most {LIMITS['question']} characters")


def _check_sizes(record: dict, where: str) -> None:
    """The size limits, on a record whose fields have the right types; never quotes the oversized text."""
    if len(record["id"]) > LIMITS["id"]:
        raise _fail(where, f"field 'id' has {len(record['id'])} characters (limit {LIMITS['id']})")
    sample = f"sample {record['id']!r}"
    for key, limit in LIMITS.items():
        value = record.get(key)
        if key != "choices" and isinstance(value, str) and len(value) > limit:
            raise _fail(where, f"{sample}: field '{key}' has {len(value)} characters (limit {limit})")
    choices = record["choices"]
    if len(choices) > MAX_CHOICES:
        raise _fail(where, f"{sample}: field 'choices' has {len(choices)} choices (limit {MAX_CHOICES})")
    for i, choice in enumerate(choices):
        if isinstance(choice, str) and len(choice) > LIMITS["choices"]:
            raise _fail(where, f"{sample}: field 'choices[{i}]' has {len(choice)} characters (limit {LIMITS['choices']})")
    events = record.get("events")
    if events is not None and len(events) > MAX_EVENTS:
        raise _fail(where, f"{sample}: field 'events' has {len(events)} events (limit {MAX_EVENTS})")


def _type_name(typ: type | tuple[type, ...]) -> str:
    if isinstance(typ, tuple):
        return " or ".join("null" if t is type(None) else t.__name__ for t in typ)
    return typ.__name__


def parse_samples(lines: Iterable[str], source: str) -> list[Sample]:
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{lineno}"
        if len(line) > MAX_LINE_CHARS:
            raise _fail(where, f"line has {len(line)} characters (limit {MAX_LINE_CHARS}); a field is far too long")
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _fail(where, f"malformed JSON ({exc.msg} at column {exc.colno})") from None
        sample = validate_record(record, where)
        if sample.id in seen:
            raise _fail(where, f"duplicate id {sample.id!r} (first seen on line {seen[sample.id]})")
        seen[sample.id] = lineno
        samples.append(sample)
    return samples


def _bounded_lines(handle) -> Iterable[str]:
    """The file's lines, none read past MAX_LINE_CHARS + 1 characters (parse_samples refuses such a line)."""
    while True:
        line = handle.readline(MAX_LINE_CHARS + 1)
        if not line:
            return
        yield line


def read_samples(path: str | Path) -> list[Sample]:
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        return parse_samples(_bounded_lines(handle), str(path))


def write_samples(path: str | Path, samples: Iterable[Sample]) -> None:
    text = "".join(s.to_json() + "\n" for s in samples)
    atomic_write_text(path, text)


def group_by_video(samples: Iterable[Sample]) -> dict[str, list[Sample]]:
    groups: dict[str, list[Sample]] = {}
    for sample in samples:
        groups.setdefault(sample.video_id, []).append(sample)
    return groups


__all__ = [
    "SPLITS",
    "Sample",
    "SchemaError",
    "group_by_video",
    "parse_samples",
    "read_samples",
    "validate_record",
    "write_samples",
]
