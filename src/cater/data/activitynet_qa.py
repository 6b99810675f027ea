"""ActivityNet-QA (Yu et al., AAAI 2019) -> multiple-choice samples.

Official files, in the `annotations` folder, per split (train, val, test):
    <split>_q.json  JSON list of {"video_name": str, "question": str, "question_id": str}
    <split>_a.json  JSON list of {"answer": str, "type": int, "question_id": str}
The two files of a split line up record by record; every pair must carry the same `question_id`
(checked, the error names both files and the record). `question_id` is `v_<video_name>_<k>`;
video names (YouTube ids) may contain `_` and `-`, and one begins with `v_`, so the video is
taken from `video_name`, never parsed out of the id. Official sizes: 32,000 / 18,000 / 8,000
questions on 3,200 / 1,800 / 800 videos.

`type`: 0 motion, 1 spatial, 2 temporal (question types); 3-8 are "free" questions labelled by
answer type: 3 yes_no, 4 color, 5 object, 6 location, 7 number, 8 other. Any other code is an
error. The type name is the `question_type` and the distractor pool (`cater.data.multiple_choice`):
a colour question gets train colour answers; a yes/no answer gets the two options yes/no.

Videos: `<videos>/v_<video_name>.<ext>` (the official ActivityNet naming) or
`<videos>/<video_name>.<ext>`, ext mp4, mkv, webm, avi or mov. When both names exist (possible
only around the video whose name begins with `v_`), the folder's own convention decides: prefixed
if most of its files start with `v_`. `videos` may be a list of folders (ActivityNet v1-2 / v1-3).
video_id is the video_name.

Config keys (the `dataset` section; see also `cater.data.adapters`):
    name: activitynet_qa
    annotations: folder with {train,val,test}_{q,a}.json   (required; train is always read)
    videos: folder or list of folders
    splits: [train, val, test]                              (default: all)
    num_choices: 5
    seed: 0
    check_videos: true

Sample ids are `activitynet_qa-<question_id>`.
"""
from __future__ import annotations

from pathlib import Path

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
    read_json_records,
    resolve_cfg,
)
from cater.data.multiple_choice import AnswerPools, OpenQA, to_samples
from cater.data.schema import Sample

DATASET = "activitynet_qa"
SPLITS = ("train", "val", "test")
TYPE_NAMES = {
    0: "motion",
    1: "spatial",
    2: "temporal",
    3: "yes_no",
    4: "color",
    5: "object",
    6: "location",
    7: "number",
    8: "other",
}
DEFAULTS = {"splits": list(SPLITS), "num_choices": 5, "seed": 0, "check_videos": True, "videos": None, "min_answer_freq": 1}
KEYS = COMMON_KEYS | {"num_choices", "seed", "min_answer_freq"}
Q_FIELDS = {"video_name": str, "question": str, "question_id": str}
A_FIELDS = {"answer": str, "type": int, "question_id": str}

last_stats: dict = {}  # counts from the latest load, with "dataset" and "per_split"


def read_split(folder: Path, split: str) -> list[dict]:
    """Joined records {video_name, question, question_id, answer, type, type_name, where}."""
    q_path, a_path = folder / f"{split}_q.json", folder / f"{split}_a.json"
    questions = read_json_records(q_path, Q_FIELDS)
    answers = read_json_records(a_path, A_FIELDS)
    joined = []
    for index in range(max(len(questions), len(answers))):
        if index >= len(questions) or index >= len(answers):
            longer, shorter = (a_path, q_path) if len(answers) > len(questions) else (q_path, a_path)
            extra = (answers if len(answers) > len(questions) else questions)[index]["question_id"]
            raise AdapterError(
                f"{longer} record {index} (question_id {extra!r}) has no partner in {shorter} "
                f"({len(questions)} questions vs {len(answers)} answers)"
            )
        q, a = questions[index], answers[index]
        where = f"{q_path} / {a_path} record {index} (question_id {q['question_id']!r})"
        if q["question_id"] != a["question_id"]:
            raise AdapterError(
                f"{a_path} record {index} has question_id {a['question_id']!r} but {q_path} record {index} "
                f"has {q['question_id']!r}: the answer file is out of line with its question file"
            )
        _check_record(q, a, where)
        joined.append({**q, "answer": a["answer"], "type": a["type"], "type_name": TYPE_NAMES[a["type"]], "where": where})
    return joined


def _check_record(q: dict, a: dict, where: str) -> None:
    if a["type"] not in TYPE_NAMES:
        raise AdapterError(f"{where}: unknown type code {a['type']} (known: 0-8)")
    if not q["question_id"].startswith(f"v_{q['video_name']}_"):
        raise AdapterError(f"{where}: question_id does not belong to video_name {q['video_name']!r}")
    for key, value in (("question", q["question"]), ("answer", a["answer"]), ("video_name", q["video_name"])):
        if not value.strip():
            raise AdapterError(f"{where}: field '{key}' is empty")


def load(cfg: dict) -> list[Sample]:
    """ActivityNet-QA samples for the configured splits."""
    global last_stats
    opts = resolve_cfg(cfg, DATASET, KEYS, DEFAULTS)
    roles = split_mapping(opts["splits"], SPLITS, DATASET)
    splits = list(roles)
    num_choices = check_positive_int(opts["num_choices"], "num_choices", DATASET, 2)
    seed = check_positive_int(opts["seed"], "seed", DATASET, 0)
    folder = Path(opts["annotations"])
    videos = MediaIndex(as_dirs(opts["videos"]))
    check_video_dirs(videos, "videos", DATASET, opts["check_videos"])

    loaded = {split: read_split(folder, split) for split in dict.fromkeys(["train", *splits])}
    min_freq = check_positive_int(opts["min_answer_freq"], "min_answer_freq", DATASET, 1)
    pools = AnswerPools(((r["answer"], r["type_name"]) for r in loaded["train"]), min_freq)
    prefer_prefixed = _mostly_prefixed(videos)

    questions: list[OpenQA] = []
    seen: dict[str, str] = {}
    for split in splits:
        for record in loaded[split]:
            sample_id = f"{DATASET}-{record['question_id']}"
            check_unique_id(seen, sample_id, record["where"])
            name = record["video_name"]
            stems = [f"v_{name}", name] if prefer_prefixed else [name, f"v_{name}"]
            questions.append(
                OpenQA(
                    id=sample_id,
                    dataset=DATASET,
                    split=roles[split],
                    video=locate_video(videos, stems, opts["check_videos"], record["where"]),
                    video_id=name,
                    question=record["question"].strip(),
                    answer=record["answer"],
                    question_type=record["type_name"],
                    pool_key=record["type_name"],
                )
            )
    samples, stats = to_samples(questions, pools, num_choices, seed)
    per_split = {s: {"questions": len(loaded[s]), "videos": len({r["video_name"] for r in loaded[s]})} for s in splits}
    last_stats = {"dataset": DATASET, "samples": len(samples), "per_split": per_split, "rare_answers_not_distractors": pools.dropped_rare, **stats}
    return samples


def _mostly_prefixed(videos: MediaIndex) -> bool:
    """True when most video files carry ActivityNet's `v_` prefix (also when there are none)."""
    stems = list(videos.stems)
    return not stems or 2 * sum(s.startswith("v_") for s in stems) >= len(stems)


__all__ = ["DATASET", "SPLITS", "TYPE_NAMES", "last_stats", "load", "read_split"]
