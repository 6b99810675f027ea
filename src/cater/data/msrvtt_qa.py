"""MSRVTT-QA and MSVD-QA (Xu et al., ACM MM 2017) -> multiple-choice samples.

Official files, in the `annotations` folder: `train_qa.json`, `val_qa.json`, `test_qa.json`, each a
JSON list of `{"answer": str, "category_id": int, "id": int, "question": str, "video_id": int}`.
MSVD-QA has the same files without `category_id`. Official sizes:
    MSRVTT-QA  158,581 / 12,278 / 72,821 QA pairs, videos 0-6512 / 6513-7009 / 7010-9999
    MSVD-QA     30,933 /  6,415 / 13,157 QA pairs, videos 1-1200 / 1201-1450 / 1451-1970

`category_id` is the MSR-VTT *video* category (0-19), not a question type; the question type is the
question's first word: what / who / how / when / where, else "other". It is also the distractor
pool: a "who" question gets distractors from the train answers of "who" questions (see
`cater.data.multiple_choice`). The train file is always read, for the answer pool.

Videos:
    msrvtt_qa  `<videos>/video<video_id>.<ext>`, video_id "video<N>"
    msvd_qa    video_id "vid<N>". The official MSVD clips are named by YouTube clip
               (`-4wsuPCjDBc_5_15.avi`); `youtube_mapping.txt` (lines `<clip name> vid<N>`) maps them.
               Looked up as `<videos>/<clip name>.<ext>`, else `<videos>/vid<N>.<ext>`.
(<ext>: mp4, mkv, webm, avi or mov.)

Config keys (the `dataset` section; see also `cater.data.adapters`):
    name: msrvtt_qa | msvd_qa
    annotations: folder with {train,val,test}_qa.json       (required)
    videos: folder (or list of folders) with the videos
    splits: [train, val, test]                              (default: all)
    num_choices: 5                                          (options per question; yes/no get 2)
    seed: 0                                                 (distractors and answer position)
    min_answer_freq: 1                                      (distractors only from train answers seen this often; seed: 5)
    check_videos: true                                      (missing video -> error)
    video_mapping: <annotations>/youtube_mapping.txt        (msvd_qa only; used when present)

Sample ids are `<dataset>-<id>` (the official global QA id).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from cater.data.adapters import (
    COMMON_KEYS,
    AdapterError,
    MediaIndex,
    as_dirs,
    check_positive_int,
    split_mapping,
    check_unique_id,
    check_video_dirs,
    locate_video,
    question_word,
    read_json_records,
    resolve_cfg,
)
from cater.data.multiple_choice import AnswerPools, OpenQA, to_samples
from cater.data.schema import Sample

SPLITS = ("train", "val", "test")
QUESTION_WORDS = ("what", "who", "how", "when", "where")
DEFAULTS = {"splits": list(SPLITS), "num_choices": 5, "seed": 0, "check_videos": True, "videos": None, "min_answer_freq": 1}
KEYS = COMMON_KEYS | {"num_choices", "seed", "min_answer_freq"}
MSVD_KEYS = KEYS | {"video_mapping"}

FIELDS: dict[str, dict[str, Any]] = {
    "msrvtt_qa": {"answer": str, "category_id": int, "id": int, "question": str, "video_id": int},
    "msvd_qa": {"answer": str, "id": int, "question": str, "video_id": int},
}

last_stats: dict = {}  # counts from the latest load (see `to_samples`), with "dataset" and "per_split"


def load(cfg: dict) -> list[Sample]:
    """MSRVTT-QA samples for the configured splits."""
    return _load(cfg, "msrvtt_qa")


def load_msvd(cfg: dict) -> list[Sample]:
    """MSVD-QA samples for the configured splits."""
    return _load(cfg, "msvd_qa")


def read_split(path: Path, dataset: str) -> list[dict]:
    """The records of one official `<split>_qa.json`, types checked, questions and answers non-empty."""
    records = read_json_records(path, FIELDS[dataset])
    for index, record in enumerate(records):
        for key in ("question", "answer"):
            if not record[key].strip():
                raise AdapterError(f"{path} record {index} (id {record['id']}): field '{key}' is empty")
    return records


def question_type(question: str) -> str:
    return question_word(question, QUESTION_WORDS)


def _load(cfg: dict, dataset: str) -> list[Sample]:
    global last_stats
    opts = resolve_cfg(cfg, dataset, MSVD_KEYS if dataset == "msvd_qa" else KEYS, DEFAULTS)
    roles = split_mapping(opts["splits"], SPLITS, dataset)
    splits = list(roles)
    num_choices = check_positive_int(opts["num_choices"], "num_choices", dataset, 2)
    seed = check_positive_int(opts["seed"], "seed", dataset, 0)
    folder = Path(opts["annotations"])
    videos = MediaIndex(as_dirs(opts["videos"]))
    check_video_dirs(videos, "videos", dataset, opts["check_videos"])
    mapping = _mapping(folder, opts.get("video_mapping")) if dataset == "msvd_qa" else {}
    stems = _video_stems(dataset, mapping)

    files = {split: folder / f"{split}_qa.json" for split in SPLITS}
    loaded = {split: read_split(files[split], dataset) for split in dict.fromkeys(["train", *splits])}
    min_freq = check_positive_int(opts["min_answer_freq"], "min_answer_freq", dataset, 1)
    pools = AnswerPools(((r["answer"], question_type(r["question"])) for r in loaded["train"]), min_freq)

    questions: list[OpenQA] = []
    seen: dict[str, str] = {}
    for split in splits:
        for index, record in enumerate(loaded[split]):
            where = f"{files[split]} record {index} (id {record['id']})"
            sample_id = f"{dataset}-{record['id']}"
            check_unique_id(seen, sample_id, where)
            names = stems(record["video_id"])
            qtype = question_type(record["question"])
            questions.append(
                OpenQA(
                    id=sample_id,
                    dataset=dataset,
                    split=roles[split],
                    video=_locate(videos, names, opts["check_videos"], where, dataset, mapping),
                    video_id=names[-1],
                    question=record["question"].strip(),
                    answer=record["answer"],
                    question_type=qtype,
                    pool_key=qtype,
                )
            )
    samples, stats = to_samples(questions, pools, num_choices, seed)
    last_stats = {"dataset": dataset, "samples": len(samples), "per_split": {s: len(loaded[s]) for s in splits}, "rare_answers_not_distractors": pools.dropped_rare, **stats}
    return samples


def _locate(videos: MediaIndex, names: list[str], check: bool, where: str, dataset: str, mapping: dict) -> str:
    try:
        return locate_video(videos, names, check, where)
    except AdapterError as exc:
        if dataset == "msvd_qa" and not mapping:  # the usual cause: clips named by YouTube id, no mapping given
            raise AdapterError(f"{exc}. The official MSVD clips are named by YouTube clip (e.g. -4wsuPCjDBc_5_15.avi): "
                               "set dataset.video_mapping to the release's youtube_mapping.txt (lines '<clip name> "
                               "vid<N>'), or put that file beside the annotations") from None
        raise


def _video_stems(dataset: str, mapping: dict[str, str]):
    """video_id (int) -> file stems to try; the last one is the canonical video_id."""
    if dataset == "msrvtt_qa":
        return lambda video_id: [f"video{video_id}"]

    def msvd(video_id: int) -> list[str]:
        vid = f"vid{video_id}"
        return [mapping[vid], vid] if vid in mapping else [vid]

    return msvd


def _mapping(folder: Path, path: str | None) -> dict[str, str]:
    """MSVD `youtube_mapping.txt`: `vid<N>` -> YouTube clip name. Absent (and not configured) -> {}."""
    mapping_path = Path(path) if path else folder / "youtube_mapping.txt"
    if not mapping_path.is_file():
        if path:
            raise AdapterError(f"{mapping_path}: video_mapping file not found")
        return {}
    mapping: dict[str, str] = {}
    for lineno, line in enumerate(mapping_path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].startswith("vid"):
            raise AdapterError(f"{mapping_path}:{lineno}: expected '<clip name> vid<N>', got {line!r}")
        if parts[1] in mapping:
            raise AdapterError(f"{mapping_path}:{lineno}: {parts[1]} is mapped twice")
        mapping[parts[1]] = parts[0]
    return mapping


__all__ = ["QUESTION_WORDS", "SPLITS", "last_stats", "load", "load_msvd", "question_type", "read_split"]
