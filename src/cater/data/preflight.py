"""Cheap checks on a list of samples before any expensive stage (frames, teachers, features).

    report = preflight(samples, source="data/samples.jsonl")             # raises PreflightError
    report = preflight(samples, raise_on_error=False, join={"prompts": ids})  # returns the report

Checks, each problem recorded as {"check", "id", "detail"}:
    missing_video      the video file or frame folder does not exist
    unreadable_video   zero-length file, empty frame folder, or no read permission
    duplicate_id       two samples share an id
    video_id_conflict  one video_id points at two different videos, so samples would share wrong frames
    id_not_joined      a sample id missing from a table named in `join`, or an id there that
                       is not a sample (e.g. prompts or teacher rows that no longer join)
    empty_question     question blank
    bad_choices        fewer than 2 choices, or a blank choice
    answer_missing     answer_idx missing outside the unlabelled test split, out of range, or the
                       correct answer's text appears twice among the choices (ambiguous)

The report: {"ok", "num_samples", "num_videos", "counts": {check: n}, "problems": [first
`max_listed` problems]}. Each video path is checked once, however many samples share it.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping

from cater.data.adapters import FRAME_EXTS
from cater.data.multiple_choice import normalize_answer
from cater.data.schema import Sample

CHECKS = (
    "missing_video",
    "unreadable_video",
    "duplicate_id",
    "video_id_conflict",
    "id_not_joined",
    "empty_question",
    "bad_choices",
    "answer_missing",
)


class PreflightError(ValueError):
    """Samples failed the preflight checks; the message lists the first problems."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


def preflight(
    samples: Iterable[Sample],
    *,
    source: str = "samples",
    check_videos: bool = True,
    join: Mapping[str, Iterable[str]] | None = None,
    raise_on_error: bool = True,
    max_listed: int = 20,
) -> dict:
    """Check `samples`; raise PreflightError on any problem, or return the report when asked not to."""
    samples = list(samples)
    problems: list[dict] = []

    def add(check: str, sample_id: str, detail: str) -> None:
        problems.append({"check": check, "id": sample_id, "detail": detail})

    _check_ids(samples, join or {}, add)
    for sample in samples:
        _check_text(sample, add)
    if check_videos:
        _check_videos(samples, add)

    counts = Counter(p["check"] for p in problems)
    report = {
        "ok": not problems,
        "num_samples": len(samples),
        "num_videos": len({s.video_id for s in samples}),
        "counts": {check: counts.get(check, 0) for check in CHECKS},
        "problems": problems[:max_listed],
    }
    if problems and raise_on_error:
        raise PreflightError(_message(source, report, len(problems)), report)
    return report


def _message(source: str, report: dict, total: int) -> str:
    summary = ", ".join(f"{n} {check}" for check, n in report["counts"].items() if n)
    lines = [f"{source}: preflight found {total} problem(s) in {report['num_samples']} samples ({summary}):"]
    lines += [f"  {p['check']}: {p['id']}: {p['detail']}" for p in report["problems"]]
    if total > len(report["problems"]):
        lines.append(f"  ... and {total - len(report['problems'])} more")
    return "\n".join(lines)


def _check_ids(samples: list[Sample], join: Mapping[str, Iterable[str]], add) -> None:
    seen: set[str] = set()
    for sample in samples:
        if sample.id in seen:
            add("duplicate_id", sample.id, "id appears more than once")
        seen.add(sample.id)
    videos: dict[str, str] = {}
    for sample in samples:
        first = videos.setdefault(sample.video_id, sample.video)
        if first != sample.video:
            add("video_id_conflict", sample.id, f"video_id {sample.video_id!r} is {sample.video}, elsewhere {first}")
    for table, ids in join.items():
        other = set(ids)
        for sample_id in sorted(seen - other):
            add("id_not_joined", sample_id, f"no row in {table}")
        for row_id in sorted(other - seen):
            add("id_not_joined", row_id, f"row in {table} matches no sample")


def _check_text(sample: Sample, add) -> None:
    if not sample.question or not sample.question.strip():
        add("empty_question", sample.id, "question is empty")
    choices = sample.choices or []
    if len(choices) < 2 or any(not isinstance(c, str) or not c.strip() for c in choices):
        add("bad_choices", sample.id, f"choices {choices!r}: need at least 2 non-empty strings")
        return
    idx = sample.answer_idx
    if idx is None:
        if sample.split != "test":
            add("answer_missing", sample.id, f"answer_idx is missing in split {sample.split!r}")
        return
    if not 0 <= idx < len(choices):
        add("answer_missing", sample.id, f"answer_idx {idx} is not among {len(choices)} choices")
        return
    correct = normalize_answer(choices[idx])
    if sum(normalize_answer(c) == correct for c in choices) > 1:
        add("answer_missing", sample.id, f"the answer {choices[idx]!r} appears more than once among the choices")


def _check_videos(samples: list[Sample], add) -> None:
    verdicts: dict[str, tuple[str, str] | None] = {}
    for sample in samples:
        if sample.video not in verdicts:
            verdicts[sample.video] = _video_problem(Path(sample.video))
        verdict = verdicts[sample.video]
        if verdict is not None:
            add(verdict[0], sample.id, verdict[1])


def _video_problem(path: Path) -> tuple[str, str] | None:
    if not path.exists():
        return "missing_video", f"{path}: not found"
    if not os.access(path, os.R_OK):
        return "unreadable_video", f"{path}: no read permission"
    if path.is_dir():
        if not any(p.suffix.lower() in FRAME_EXTS for p in path.iterdir()):
            return "unreadable_video", f"{path}: frame folder holds no images"
        return None
    if path.stat().st_size == 0:
        return "unreadable_video", f"{path}: zero-length file"
    return None


__all__ = ["CHECKS", "PreflightError", "preflight"]
