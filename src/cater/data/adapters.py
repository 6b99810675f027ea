"""The small helpers the official dataset adapters share (configuration, annotation files, finding videos).

Every adapter is `load(cfg: dict) -> list[Sample]`, where `cfg` is the `dataset` section of
params.yaml; `cater.data.registry.ADAPTERS[cfg["name"]](cfg)` picks it; each module's docstring lists its keys.
This module imports no adapter, so the adapters import it without a cycle.

Keys common to all adapters:
    name          msrvtt_qa | msvd_qa | activitynet_qa | tvqa | seed_jsonl (the seed repository's own files)
    annotations   folder holding the official annotation files (required)
    videos        folder, or list of folders, holding the videos
    splits        which official splits to load (default: all of them), or a mapping from official split
                  names to this project's train / val / test (e.g. TVQA `{train: train, val: test}`: the
                  labelled val as the test split; `splits.val_from_train` then holds out a validation split)
    check_videos  true (default): a video that cannot be found is an error naming the annotation
                  file and record. false: `video` is the expected path, found or not (for parsing
                  annotations without the videos; run `preflight` before decoding anything).

A key that belongs to another adapter (for example `use_ts` with msrvtt_qa) is ignored with a log
line, so one params.yaml section can switch datasets by `name`; a key no adapter knows is an error.
After `load`, `cater.data.registry.adapter_stats(name)` returns that adapter's counts (e.g. TVQA's NaN windows).
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable, Sequence


log = logging.getLogger(__name__)

VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".avi", ".mov")  # in order of preference
FRAME_EXTS = (".jpg", ".jpeg", ".png")

COMMON_KEYS = {"name", "annotations", "videos", "splits", "check_videos"}
# every key some adapter understands; the per-adapter sets are declared in the modules
ALL_KEYS = COMMON_KEYS | {"num_choices", "seed", "video_mapping", "use_ts", "subtitles", "frames_dir", "frames_root",
                          "min_answer_freq"}


class AdapterError(ValueError):
    """An official annotation file or its videos are not as expected; the message names the
    file and the record (index in a JSON list, or line in a JSONL file)."""


# --- configuration -------------------------------------------------------------------------


def resolve_cfg(cfg: dict, name: str, keys: set[str], defaults: dict[str, Any]) -> dict[str, Any]:
    """Check `cfg` for adapter `name`: required `annotations`, no unknown keys; fill defaults."""
    if not isinstance(cfg, dict):
        raise AdapterError(f"dataset config for {name}: expected a mapping, got {type(cfg).__name__}")
    unknown = sorted(set(cfg) - ALL_KEYS)
    if unknown:
        raise AdapterError(f"dataset config for {name}: unknown key(s) {unknown}; allowed: {sorted(keys)}")
    foreign = sorted(set(cfg) - keys)
    if foreign:
        log.info("dataset %s ignores key(s) %s, which belong to other adapters", name, foreign)
    if cfg.get("name", name) != name:
        raise AdapterError(f"dataset config: name is {cfg['name']!r}, but the {name} adapter was called")
    if not cfg.get("annotations"):
        raise AdapterError(f"dataset config for {name}: 'annotations' (folder of the official files) is required")
    out = dict(defaults)
    out.update({k: v for k, v in cfg.items() if k in keys and v is not None})
    if not isinstance(out.get("check_videos", True), bool):
        raise AdapterError(f"dataset config for {name}: check_videos must be true or false, got {out['check_videos']!r}")
    return out


def check_splits(splits: Any, allowed: Sequence[str], name: str) -> list[str]:
    if isinstance(splits, str) or not isinstance(splits, (list, tuple)) or not splits:
        raise AdapterError(f"dataset config for {name}: 'splits' must be a non-empty list, got {splits!r}")
    bad = [s for s in splits if s not in allowed]
    if bad:
        raise AdapterError(f"dataset config for {name}: unknown split(s) {bad}; official splits: {list(allowed)}")
    return list(dict.fromkeys(splits))


def split_mapping(splits: Any, allowed: Sequence[str], name: str, default: dict[str, str] | None = None) -> dict[str, str]:
    """{official split: train | val | test} from `dataset.splits`: a list keeps each split's own role (`default`
    maps names such as TVQA's test_public), a mapping assigns them."""
    from cater.data.schema import SPLITS as ROLES

    default = default or {}
    if isinstance(splits, dict):
        if not splits:
            raise AdapterError(f"dataset config for {name}: 'splits' mapping is empty")
        bad = [s for s in splits if s not in allowed]
        if bad:
            raise AdapterError(f"dataset config for {name}: unknown split(s) {bad}; official splits: {list(allowed)}")
        roles = [r for r in splits.values() if r not in ROLES]
        if roles:
            raise AdapterError(f"dataset config for {name}: splits maps to {roles}; each official split becomes one of "
                               f"{list(ROLES)}")
        return dict(splits)
    return {split: default.get(split, split) for split in check_splits(splits, allowed, name)}


def check_positive_int(value: Any, key: str, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise AdapterError(f"dataset config for {name}: '{key}' must be an integer >= {minimum}, got {value!r}")
    return value


def as_dirs(value: Any) -> list[Path]:
    """`videos` may be one folder or a list of folders (ActivityNet ships v1-2 and v1-3)."""
    if value is None or value == "":
        return []
    values = value if isinstance(value, (list, tuple)) else [value]
    return [Path(v) for v in values]


# --- reading annotation files --------------------------------------------------------------


def require_file(path: Path) -> Path:
    if not path.is_file():
        raise AdapterError(f"{path}: annotation file not found")
    return path


def read_json(path: Path) -> Any:
    text = require_file(path).read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None


def read_json_records(path: Path, fields: dict[str, type | tuple[type, ...]]) -> list[dict]:
    """A JSON list of objects, each with `fields` of the given types."""
    data = read_json(path)
    if not isinstance(data, list):
        raise AdapterError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    for index, record in enumerate(data):
        check_fields(record, fields, f"{path} record {index}")
    return data


def read_jsonl_records(path: Path, fields: dict[str, type | tuple[type, ...]]) -> list[tuple[int, dict]]:
    """(line number, record) for each non-blank line of a JSONL file."""
    rows = []
    with require_file(path).open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise AdapterError(f"{path}:{lineno}: malformed JSON line ({exc.msg} at column {exc.colno})") from None
            check_fields(record, fields, f"{path}:{lineno}")
            rows.append((lineno, record))
    return rows


def check_fields(record: Any, fields: dict[str, type | tuple[type, ...]], where: str) -> None:
    if not isinstance(record, dict):
        raise AdapterError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key, typ in fields.items():
        if key not in record:
            raise AdapterError(f"{where}: missing field '{key}'")
        value = record[key]
        if isinstance(value, bool) or not isinstance(value, typ):
            raise AdapterError(f"{where}: field '{key}' is {value!r} ({type(value).__name__}), expected {_names(typ)}")


def _names(typ: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in typ) if isinstance(typ, tuple) else typ.__name__


def check_unique_id(seen: dict[str, str], sample_id: str, where: str) -> None:
    if sample_id in seen:
        raise AdapterError(f"{where}: duplicate id {sample_id!r} (first at {seen[sample_id]})")
    seen[sample_id] = where


def question_word(question: str, words: Iterable[str]) -> str:
    """The question's first word (lower case, letters only: "What's" -> "what") if in `words`, else "other"."""
    match = re.match(r"\s*([A-Za-z]+)", question)
    word = match.group(1).lower() if match else ""
    return word if word in set(words) else "other"


# --- finding videos ------------------------------------------------------------------------


class MediaIndex:
    """Finds a video by file stem in one or more folders, scanning each folder once.

    With `folders=True` it finds frame folders (a directory named after the clip) instead of
    video files. `find(stems)` tries the stems in order and returns the first match.
    """

    def __init__(self, dirs: Sequence[Path], *, folders: bool = False, nested_suffix: str | None = None):
        self.dirs = list(dirs)
        self.folders = folders
        self.nested_suffix = nested_suffix  # also look one level down in sub-folders ending with this
        self._index: dict[str, Path] | None = None

    def missing_dirs(self) -> list[Path]:
        return [d for d in self.dirs if not d.is_dir()]

    def _build(self) -> dict[str, Path]:
        index: dict[str, Path] = {}
        for directory in self.dirs:
            if directory.is_dir():
                self._scan(directory, index, nested=self.nested_suffix is not None)
        return index

    def _scan(self, directory: Path, index: dict[str, Path], nested: bool) -> None:
        with os.scandir(directory) as entries:
            entries = sorted(entries, key=lambda e: e.name)
        for entry in entries:
            path = Path(entry.path)
            if self.folders and entry.is_dir():
                if nested and entry.name.endswith(self.nested_suffix):
                    self._scan(path, index, nested=False)
                else:
                    index.setdefault(entry.name, path)
            elif not self.folders and entry.is_file() and path.suffix.lower() in VIDEO_EXTS:
                previous = index.get(path.stem)
                if previous is None or _ext_rank(path) < _ext_rank(previous):
                    index[path.stem] = path

    @property
    def stems(self) -> dict[str, Path]:
        if self._index is None:
            self._index = self._build()
        return self._index

    def find(self, stems: Sequence[str]) -> Path | None:
        for stem in stems:
            if stem in self.stems:
                return self.stems[stem]
        return None

    def expected(self, stem: str) -> Path:
        """Where the video would be when it is not found (check_videos: false)."""
        base = str(self.dirs[0]) if self.dirs else "."
        return Path(os.path.join(base, stem if self.folders else f"{stem}.mp4"))

    def tried(self, stems: Sequence[str]) -> str:
        suffix = "/" if self.folders else ".{" + ",".join(e[1:] for e in VIDEO_EXTS) + "}"
        names = ", ".join(stem + suffix for stem in stems)
        return f"looked for {names} in {', '.join(str(d) for d in self.dirs) or '(no folder configured)'}"


def _ext_rank(path: Path) -> int:
    return VIDEO_EXTS.index(path.suffix.lower())


def locate_video(index: MediaIndex, stems: Sequence[str], check: bool, where: str) -> str:
    """The path of the first stem found; when absent, an error (check) or the expected path."""
    found = index.find(stems)
    if found is not None:
        return str(found)
    if check:
        raise AdapterError(f"{where}: video not found ({index.tried(stems)})")
    return str(index.expected(stems[0]))


def check_video_dirs(index: MediaIndex, key: str, name: str, check: bool) -> None:
    if not check:
        return
    if not index.dirs:
        raise AdapterError(f"dataset config for {name}: '{key}' is required when check_videos is true")
    missing = index.missing_dirs()
    if missing:
        raise AdapterError(f"dataset config for {name}: {key} folder {missing[0]} does not exist")


__all__ = [
    "AdapterError",
    "MediaIndex",
    "locate_video",
    "question_word",
    "read_json",
    "read_json_records",
    "read_jsonl_records",
    "resolve_cfg",
]
