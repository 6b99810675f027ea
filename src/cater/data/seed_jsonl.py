"""The seed repository's JSONL files (zhuxuanziwang/distill_videoLLM) -> samples: a seed user brings their data.

Files, in the `annotations` folder: `train.jsonl`, `val.jsonl`, `test.jsonl`, or any names given by
`splits` as a mapping (`{train: train.jsonl, val: val.jsonl, test: test.jsonl}`; a list keeps the
default names). One JSON object per line, as the seed's scripts write them:

    id            int or str; sample ids here are `<split>-<id>` (the seed's toy ids restart in every file)
    question      str
    choices       list of str
    answer_idx    int
    frame_paths   list of image paths, all in one folder; relative to `frames_root` (default: the
                  annotations folder; for a linked seed checkout, its root: the paths start with `data/`)
    event_prompts, frame_prompts   optional lists of str: the `given` prompt backend's input
    question_type optional; else the question's first word (what / who / how / when / where / other)
    teacher_hard_idx, teacher_embedding   optional; read (lazily, by line) by the `seed_jsonl` teacher family
Other keys (dataset, source_id, video_id, category_id, action_id, frame_seed) are ignored.

The folder of a row's frame_paths is its video, read as a frame folder: the frames stage samples
`frames.num_frames` images of it uniformly. So the rows must list every image of their folder (what the seed's
extract script writes; anything else is an error naming file:line), and with `frames.num_frames` equal to that
count (printed as `frames_per_row`) every listed frame is read and the i-th prompt meets the i-th frame, as in
the seed. A smaller `frames.num_frames` samples the listed frames uniformly where the seed takes the first N.
The seed's toy rows (`make_toy_data.py`: no frame_paths; the seed draws their frames from `action_id` and
`frame_seed` on the fly) get frames from this project's own toy renderer (`render_toy_video`: an action-coloured
background with a block that moves with time, noise seeded by `frame_seed`), written by the dataset stage as
`TOY_FRAMES` PNG images per (action_id, frame_seed) under `toy_dir` (default data/videos/seed_toy). The pixels are
not the seed's, so toy numbers are comparable with each other, not with the seed's toy runs.

Prompts are per video here and per question in the seed. Rows of one folder whose prompts are identical share one
video; when they differ (the seed's MSRVTT script asks the LLM once per question, choices included), each row becomes
its own video `<folder>#<split>-<id>`, whose frames are stored once per row (counted in the stats).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cater.data.adapters import AdapterError, COMMON_KEYS, check_unique_id, question_word, require_file, resolve_cfg
from cater.data.schema import SPLITS, Sample
from cater.io import jsonl_lines

KEYS = COMMON_KEYS | {"frames_root"}
DEFAULTS = {"splits": list(SPLITS), "check_videos": True, "frames_root": None}
TOY_DIR = Path("data/videos/seed_toy")  # where the dataset stage renders the toy rows' frames
TOY_FRAMES, TOY_SIZE = 8, 64
QUESTION_WORDS = ("what", "who", "how", "when", "where", "which", "why")
IMAGE_EXTS = {".jpg", ".jpeg", ".png"}

last_stats: dict = {}


def split_files(folder: Path, splits: Any) -> dict[str, Path]:
    """{split: file} from `dataset.splits`: a list of split names (default file names) or a mapping to file names."""
    if isinstance(splits, dict):
        mapping = splits
    elif isinstance(splits, (list, tuple)) and splits:
        mapping = {split: f"{split}.jsonl" for split in splits}
    else:
        raise AdapterError(f"dataset config for seed_jsonl: 'splits' must be a list of splits or a mapping split -> file, got {splits!r}")
    bad = [s for s in mapping if s not in SPLITS]
    if bad:
        raise AdapterError(f"dataset config for seed_jsonl: unknown split(s) {bad}; splits are {list(SPLITS)}")
    for split, name in mapping.items():
        if not isinstance(name, str) or not name or os.path.isabs(name) or ".." in Path(name).parts:
            raise AdapterError(f"dataset config for seed_jsonl: splits.{split} must be a file name inside the annotations "
                               f"folder, got {name!r}")
    return {split: folder / name for split, name in mapping.items()}


def sample_id(split: str, row_id: Any) -> str:
    return f"{split}-{row_id}"


def iter_rows(path: Path):
    """(line number, byte offset, record) of each non-blank line; the record is parsed, nothing is kept."""
    for lineno, start, line in jsonl_lines(require_file(path)):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AdapterError(f"{path}:{lineno}: malformed JSON line ({exc})") from None
        if not isinstance(record, dict):
            raise AdapterError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
        yield lineno, start, record


def _string_list(record: dict, key: str, where: str, required: bool) -> list[str] | None:
    value = record.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise AdapterError(f"{where}: field '{key}' must be a non-empty list of strings")
    return value


def _check_row(record: dict, where: str) -> None:
    if "id" not in record or isinstance(record["id"], bool) or not isinstance(record["id"], (int, str)):
        raise AdapterError(f"{where}: field 'id' (int or str) is missing")
    if not isinstance(record.get("question"), str) or not record["question"].strip():
        raise AdapterError(f"{where}: field 'question' must be a non-empty string")
    _string_list(record, "choices", where, required=True)
    answer = record.get("answer_idx")
    if isinstance(answer, bool) or not isinstance(answer, int):
        raise AdapterError(f"{where}: field 'answer_idx' must be an integer")
    if "frame_paths" not in record or not record["frame_paths"]:
        if is_toy(record):
            return
        raise AdapterError(f"{where}: field 'frame_paths' is missing or empty (and no toy action_id / frame_seed); "
                           "extract the frames to image files and list them (the seed's extract_msrvtt_frames.py layout)")
    _string_list(record, "frame_paths", where, required=True)


def is_toy(record: dict) -> bool:
    """A make_toy_data.py row: integer action_id and frame_seed, no frame files."""
    return not record.get("frame_paths") and all(
        isinstance(record.get(k), int) and not isinstance(record.get(k), bool) for k in ("action_id", "frame_seed"))


def toy_folder(record: dict) -> Path:
    return TOY_DIR / f"action{record['action_id']}-seed{record['frame_seed']}"


def render_toy_video(folder: Path, action_id: int, frame_seed: int, frames: int = TOY_FRAMES, size: int = TOY_SIZE) -> None:
    """This project's toy frames: the background colour names the action, a block moves across with time."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(frame_seed)
    colour = np.array([(action_id * 53) % 200 + 30, (action_id * 97 + 60) % 200 + 30, (action_id * 151 + 120) % 200 + 30])
    block = size // 4
    folder.mkdir(parents=True, exist_ok=True)
    for t in range(frames):
        image = np.clip(colour + rng.normal(0, 8, (size, size, 3)), 0, 255)
        x = (action_id * 11 + t * (size - block) // max(1, frames - 1)) % (size - block + 1)
        y = (action_id * 17) % (size - block + 1)
        image[y : y + block, x : x + block] = 255 - colour
        Image.fromarray(image.astype(np.uint8)).save(folder / f"frame_{t:02d}.png")


def _frame_folder(paths: list[str], root: Path, where: str, check: bool) -> Path:
    folders = set()
    for p in paths:
        if os.path.isabs(p) or ".." in Path(p).parts:
            raise AdapterError(f"{where}: frame path {p!r} must be relative to frames_root ({root}) without '..'; "
                               "rewrite the paths or link the frames under the release folder")
        if Path(p).suffix.lower() not in IMAGE_EXTS:
            raise AdapterError(f"{where}: frame path {p!r} is not a .jpg/.jpeg/.png image")
        folders.add((root / p).parent)
    if len(folders) != 1:
        raise AdapterError(f"{where}: frame_paths span {len(folders)} folders; one row's frames must share one folder")
    folder = folders.pop()
    if check:
        missing = [p for p in paths if not (root / p).is_file()]
        if missing:
            raise AdapterError(f"{where}: frame {root / missing[0]} not found ({len(missing)} of {len(paths)} missing)")
    return folder


def load(cfg: dict) -> list[Sample]:
    global last_stats
    opts = resolve_cfg(cfg, "seed_jsonl", KEYS, DEFAULTS)
    folder = Path(opts["annotations"])
    root = Path(opts["frames_root"]) if opts["frames_root"] else folder
    files = split_files(folder, opts["splits"])
    rows: list[tuple[str, dict, Path, dict | None]] = []
    seen: dict[str, str] = {}
    listed: dict[Path, tuple[list[str], str]] = {}  # per folder: the image names its first row lists, and where
    toy_videos: dict[str, tuple[int, int]] = {}  # toy folder -> (action_id, frame_seed), rendered by the dataset stage
    for split, path in files.items():
        for lineno, _, record in iter_rows(path):
            where = f"{path}:{lineno}"
            _check_row(record, where)
            sid = sample_id(split, record["id"])
            check_unique_id(seen, sid, where)
            if not 0 <= record["answer_idx"] < len(record["choices"]):
                raise AdapterError(f"{where}: field 'answer_idx' is {record['answer_idx']}, out of range for "
                                   f"{len(record['choices'])} choices")
            if is_toy(record):
                frames = toy_folder(record)
                toy_videos[str(frames)] = (record["action_id"], record["frame_seed"])
            else:
                frames = _frame_folder(record["frame_paths"], root, where, opts["check_videos"])
                names = sorted(Path(p).name for p in record["frame_paths"])
                first = listed.setdefault(frames, (names, where))
                if first[0] != names:
                    raise AdapterError(f"{where}: frame_paths list other images of {frames} than {first[1]} does; the "
                                       "rows of one folder must list the same frames")
            events = _string_list(record, "event_prompts", where, required=False)
            frame_prompts = _string_list(record, "frame_prompts", where, required=False)
            given = None if events is None else {"event": events, **({"frame": frame_prompts} if frame_prompts else {})}
            qtype = record.get("question_type")
            if not isinstance(qtype, str) or not qtype:
                qtype = question_word(record["question"], QUESTION_WORDS)
            sample = {"id": sid, "dataset": "seed_jsonl", "split": split, "question": record["question"].strip(),
                      "choices": record["choices"], "answer_idx": record["answer_idx"], "question_type": qtype}
            rows.append((sid, sample, frames, given))
    prompts_by_folder: dict[Path, set[str]] = {}
    for _, _, frames, given in rows:
        prompts_by_folder.setdefault(frames, set()).add(json.dumps(given, sort_keys=True))
    samples = []
    per_row_videos = 0
    for sid, sample, frames, given in rows:
        video_id = str(frames)
        if len(prompts_by_folder[frames]) > 1:
            video_id, per_row_videos = f"{frames}#{sid}", per_row_videos + 1
        samples.append(Sample(**sample, video=str(frames), video_id=video_id, given_prompts=given))
    if opts["check_videos"]:  # every image of a folder listed: the frames stage samples among all of them
        for frames, (names, where) in listed.items():
            images = sorted(p.name for p in frames.iterdir() if p.suffix.lower() in IMAGE_EXTS)
            if images != names:
                unlisted = sorted(set(images) - set(names))
                raise AdapterError(f"{where}: frame_paths list {len(names)} of the {len(images)} images in {frames} "
                                   f"(not listed: {', '.join(unlisted[:3])}{' ...' if len(unlisted) > 3 else ''}); this "
                                   "project reads a folder's images, so list them all or move the others out")
    counts = sorted({len(names) for names, _ in listed.values()} | ({TOY_FRAMES} if toy_videos else set()))
    last_stats = {"dataset": "seed_jsonl", "samples": len(samples), "videos": len({s.video_id for s in samples}),
                  "per_row_videos": per_row_videos,
                  "frames_per_row": "/".join(str(c) for c in counts) + " (set frames.num_frames to it)",
                  "with_prompts": sum(s.given_prompts is not None for s in samples),
                  "toy_videos": len(toy_videos), "toy_render": toy_videos}
    return samples
