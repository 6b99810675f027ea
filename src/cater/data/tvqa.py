"""TVQA (Lei et al., EMNLP 2018) -> samples (already multiple choice, 5 options).

Official files, in the `annotations` folder: `tvqa_train.jsonl`, `tvqa_val.jsonl`,
`tvqa_test_public.jsonl`; one JSON object per line with `a0`..`a4` (str), `answer_idx` (int 0-4;
absent in test_public), `q`, `qid` (int), `show_name`, `ts` ("start-end" in seconds, sometimes
"NaN-NaN") and `vid_name`. Official sizes 122,039 / 15,253 / 7,623 QA pairs over 21,793 clips.
test_public maps to split "test" with `answer_idx` None (its labels are not public).

Frames: `frames_dir` (the official 3 fps jpg folders, `<frames_dir>/<vid_name>/` or, as unpacked
from the release, `<frames_dir>/<show>_frames/<vid_name>/`) or `videos` (`<videos>/<vid_name>.<ext>`,
ext mp4, mkv, webm, avi or mov). frames_dir wins when both are set.

Subtitles: `subtitles` is the folder of the official SubRip files, one `<vid_name>.srt` per clip
(times relative to the clip, lines like "(Sheldon:) Hello."). Read as UTF-8, else ISO-8859-1 like
the official loader. `Sample.subtitles` holds the lines that overlap the question's window (or
the whole clip), one subtitle per line. A missing .srt is an error naming the record.

Windows: with `use_ts: true`, `start`/`end` are the `ts` window, and `video_id` becomes
`<vid_name>@<ts>` so that questions on different windows of a clip do not share frames. A
"NaN-NaN" window falls back to the whole clip (logged). NaN-NaN questions are counted in
`last_stats["nan_windows"]` whatever `use_ts` is (first ids in `last_stats["nan_window_ids"]`).
With `use_ts: false` every question covers its whole clip.

Question type: the question's first word (what/who/where/why/how/which/when), else "other".

Config keys (the `dataset` section; see also `cater.data.adapters`):
    name: tvqa
    annotations: folder with tvqa_{train,val,test_public}.jsonl   (required)
    videos: folder (or list) of clip videos      | one of the two, unless check_videos is false
    frames_dir: folder (or list) of frame folders |
    subtitles: folder of <vid_name>.srt           (optional; no subtitles when unset)
    use_ts: false
    splits: [train, val, test_public]             (default: all; or a mapping, e.g. {train: train, val: test})
    check_videos: true
    num_choices: 5                                (accepted only as 5; TVQA has 5 options)
    seed: ignored (nothing is random here)

Sample ids are `tvqa-<qid>`.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

from cater.data.adapters import (
    COMMON_KEYS,
    AdapterError,
    MediaIndex,
    as_dirs,
    split_mapping,
    check_unique_id,
    check_video_dirs,
    locate_video,
    question_word,
    read_jsonl_records,
    resolve_cfg,
)
from cater.data.schema import Sample

log = logging.getLogger(__name__)

DATASET = "tvqa"
SPLITS = ("train", "val", "test_public")
SPLIT_NAMES = {"train": "train", "val": "val", "test_public": "test"}
QUESTION_WORDS = ("what", "who", "where", "why", "how", "which", "when")
NUM_CHOICES = 5
DEFAULTS = {
    "splits": list(SPLITS),
    "check_videos": True,
    "use_ts": False,
    "videos": None,
    "frames_dir": None,
    "subtitles": None,
    "num_choices": NUM_CHOICES,
}
KEYS = COMMON_KEYS | {"use_ts", "subtitles", "frames_dir", "num_choices", "seed"}
FIELDS = {**{f"a{i}": str for i in range(NUM_CHOICES)}, "q": str, "qid": int, "ts": str, "vid_name": str}
MAX_LISTED_IDS = 20

last_stats: dict = {}  # counts from the latest load: samples, per_split, nan_windows, nan_window_ids


@dataclass(frozen=True)
class SubtitleLine:
    start: float
    end: float
    text: str


def load(cfg: dict) -> list[Sample]:
    """TVQA samples for the configured splits."""
    global last_stats
    opts = resolve_cfg(cfg, DATASET, KEYS, DEFAULTS)
    if opts["num_choices"] != NUM_CHOICES:
        raise AdapterError(f"dataset config for tvqa: num_choices is {opts['num_choices']!r}, TVQA has exactly 5")
    if not isinstance(opts["use_ts"], bool):
        raise AdapterError(f"dataset config for tvqa: use_ts must be true or false, got {opts['use_ts']!r}")
    roles = split_mapping(opts["splits"], SPLITS, DATASET, SPLIT_NAMES)
    splits = list(roles)
    media, key = _media_index(opts)
    check_video_dirs(media, key, DATASET, opts["check_videos"])
    subtitle_dir = Path(opts["subtitles"]) if opts["subtitles"] else None
    if subtitle_dir is not None and not subtitle_dir.is_dir():
        raise AdapterError(f"dataset config for tvqa: subtitles folder {subtitle_dir} does not exist")

    folder = Path(opts["annotations"])
    samples: list[Sample] = []
    seen: dict[str, str] = {}
    nan_ids: list[str] = []
    per_split: dict[str, int] = {}
    subtitle_cache: dict[str, list[SubtitleLine]] = {}
    for split in splits:
        path = folder / f"tvqa_{split}.jsonl"
        rows = read_jsonl_records(path, FIELDS)
        per_split[split] = len(rows)
        for lineno, record in rows:
            where = f"{path}:{lineno} (qid {record['qid']})"
            sample, nan_window = _sample(record, split, where, opts, media)
            sample.split = roles[split]
            check_unique_id(seen, sample.id, where)
            if nan_window:
                nan_ids.append(sample.id)
            if subtitle_dir is not None:
                lines = _clip_subtitles(subtitle_cache, subtitle_dir, record["vid_name"], where)
                sample.subtitles = window_text(lines, sample.start, sample.end)
            samples.append(sample)
    if nan_ids and opts["use_ts"]:
        log.warning("tvqa: %d question(s) have a NaN-NaN window and use the whole clip", len(nan_ids))
    last_stats = {
        "dataset": DATASET,
        "samples": len(samples),
        "per_split": per_split,
        "nan_windows": len(nan_ids),
        "nan_window_ids": nan_ids[:MAX_LISTED_IDS],
    }
    return samples


def _media_index(opts: dict) -> tuple[MediaIndex, str]:
    if opts["frames_dir"]:
        return MediaIndex(as_dirs(opts["frames_dir"]), folders=True, nested_suffix="_frames"), "frames_dir"
    return MediaIndex(as_dirs(opts["videos"])), "videos"


def _sample(record: dict, split: str, where: str, opts: dict, media: MediaIndex) -> tuple[Sample, bool]:
    """The sample of one line, and whether its window is NaN-NaN."""
    choices = [record[f"a{i}"].strip() for i in range(NUM_CHOICES)]
    for i, choice in enumerate(choices):
        if not choice:
            raise AdapterError(f"{where}: field 'a{i}' is empty")
    if not record["q"].strip():
        raise AdapterError(f"{where}: field 'q' is empty")
    vid_name = record["vid_name"].strip()
    if not vid_name:
        raise AdapterError(f"{where}: field 'vid_name' is empty")
    window = parse_ts(record["ts"], where)
    start, end = window if opts["use_ts"] and window is not None else (None, None)
    sample = Sample(
        id=f"{DATASET}-{record['qid']}",
        dataset=DATASET,
        split=SPLIT_NAMES[split],
        video=locate_video(media, [vid_name], opts["check_videos"], where),
        video_id=f"{vid_name}@{record['ts'].strip()}" if start is not None else vid_name,
        question=record["q"].strip(),
        choices=choices,
        answer_idx=_answer_idx(record, split, where),
        question_type=question_word(record["q"], QUESTION_WORDS),
        start=start,
        end=end,
    )
    return sample, window is None


def _answer_idx(record: dict, split: str, where: str) -> int | None:
    if "answer_idx" not in record:
        if split == "test_public":
            return None
        raise AdapterError(f"{where}: missing field 'answer_idx'")
    value = record["answer_idx"]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < NUM_CHOICES:
        raise AdapterError(f"{where}: answer_idx is {value!r}, expected an integer 0-4")
    return value


def parse_ts(ts: str, where: str) -> tuple[float, float] | None:
    """"12.5-20.01" -> (12.5, 20.01); "NaN-NaN" -> None; anything else is an error."""
    match = re.fullmatch(r"\s*([0-9.]+|nan)\s*-\s*([0-9.]+|nan)\s*", ts, flags=re.IGNORECASE)
    if not match:
        raise AdapterError(f"{where}: ts {ts!r} is not 'start-end' in seconds")
    try:
        start, end = float(match.group(1)), float(match.group(2))
    except ValueError:
        raise AdapterError(f"{where}: ts {ts!r} is not 'start-end' in seconds") from None
    if math.isnan(start) and math.isnan(end):
        return None
    if math.isnan(start) or math.isnan(end) or end < start:
        raise AdapterError(f"{where}: ts {ts!r} is not a valid window")
    return start, end


# --- subtitles -----------------------------------------------------------------------------

_TIME = r"(\d+):(\d{2}):(\d{2})[,.](\d{1,3})"
_TIMING = re.compile(rf"\s*{_TIME}\s*-->\s*{_TIME}")
_TAG = re.compile(r"<[^>]+>")


def read_srt(path: Path) -> list[SubtitleLine]:
    """Parse one SubRip file; a malformed block is an error naming the file and line."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("iso-8859-1")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    entries: list[SubtitleLine] = []
    i = 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        block_start = i
        if lines[i].strip().isdigit():  # the cue number is optional in practice
            i += 1
        match = _TIMING.match(lines[i]) if i < len(lines) else None
        if not match:
            raise AdapterError(f"{path}:{i + 1}: expected 'HH:MM:SS,mmm --> HH:MM:SS,mmm' (block at line {block_start + 1})")
        g = match.groups()
        start, end = _seconds(g[0:4]), _seconds(g[4:8])
        i += 1
        body = []
        while i < len(lines) and lines[i].strip():
            body.append(_TAG.sub("", lines[i]).strip())
            i += 1
        entries.append(SubtitleLine(start, end, " ".join(b for b in body if b)))
    return entries


def _seconds(parts) -> float:
    h, m, s, ms = parts
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms.ljust(3, "0")) / 1000


def window_text(lines: list[SubtitleLine], start: float | None, end: float | None) -> str:
    """Subtitle lines overlapping [start, end] (all lines when there is no window), one per line."""
    if start is not None and end is not None:
        lines = [ln for ln in lines if ln.end >= start and ln.start <= end]
    return "\n".join(ln.text for ln in lines if ln.text)


def _clip_subtitles(cache: dict, folder: Path, vid_name: str, where: str) -> list[SubtitleLine]:
    if vid_name not in cache:
        path = folder / f"{vid_name}.srt"
        if not path.is_file():
            raise AdapterError(f"{where}: subtitle file {path} not found")
        cache[vid_name] = read_srt(path)
    return cache[vid_name]


__all__ = [
    "DATASET",
    "QUESTION_WORDS",
    "SPLITS",
    "SubtitleLine",
    "last_stats",
    "load",
    "parse_ts",
    "read_srt",
    "window_text",
]
