"""The adapters on real excerpts of the official annotation files (see SOURCES.md beside them).

The excerpts live outside the repository and are never copied into it; the tests skip when they
are absent. Videos are not part of the excerpts, so the adapters run with check_videos: false.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cater.data.activitynet_qa import TYPE_NAMES  # noqa: E402
from cater.data.adapters import AdapterError
from cater.data.registry import ADAPTERS, adapter_stats  # noqa: E402
from cater.data.msrvtt_qa import read_split  # noqa: E402
from cater.data.schema import read_samples, write_samples  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_annotations"


@pytest.fixture(scope="module")
def real() -> Path:
    if not (REAL / "SOURCES.md").is_file():
        pytest.skip(f"real annotation excerpts not found at {REAL}")
    return REAL


def _roundtrip(samples, tmp_path: Path):
    """The samples pass the shared schema's validation when written and read back."""
    path = tmp_path / "samples.jsonl"
    write_samples(path, samples)
    return read_samples(path)


# --- ActivityNet-QA ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def anet(real):
    cfg = {"name": "activitynet_qa", "annotations": str(real / "activitynet_qa"), "videos": "/nonexistent/anet",
           "check_videos": False, "num_choices": 5, "seed": 0}
    return ADAPTERS["activitynet_qa"](cfg), adapter_stats("activitynet_qa")


def test_activitynet_counts_and_splits(anet, real, tmp_path):
    samples, stats = anet
    assert Counter(s.split for s in samples) == {"train": 300, "val": 300, "test": 300}
    assert stats["per_split"] == {s: {"questions": 300, "videos": 30} for s in ("train", "val", "test")}
    assert len({s.id for s in samples}) == 900
    assert len(_roundtrip(samples, tmp_path)) == 900


def test_activitynet_fields_match_the_files(anet, real):
    samples, _ = anet
    by_id = {s.id: s for s in samples}
    for split in ("train", "val", "test"):
        questions = json.loads((real / "activitynet_qa" / f"{split}_q.json").read_text())
        answers = json.loads((real / "activitynet_qa" / f"{split}_a.json").read_text())
        for q, a in zip(questions, answers):
            sample = by_id[f"activitynet_qa-{q['question_id']}"]
            assert sample.split == split
            assert sample.question == q["question"].strip()
            assert sample.video_id == q["video_name"]
            assert sample.video == f"/nonexistent/anet/v_{q['video_name']}.mp4"
            assert sample.question_type == TYPE_NAMES[a["type"]]
            assert sample.choices[sample.answer_idx] == a["answer"]


def test_activitynet_types_follow_the_official_layout(anet):
    samples, _ = anet
    assert {s.question_type for s in samples} == set(TYPE_NAMES.values())
    for sample in samples:
        k = int(sample.id.rsplit("_", 1)[1])
        expected = {1: "motion", 2: "yes_no", 3: "yes_no", 4: "spatial", 5: "temporal"}.get(k)
        if expected:
            assert sample.question_type == expected, sample.id


def test_activitynet_choices_yes_no_and_train_pool(anet, real):
    samples, stats = anet
    train_answers = {a["answer"] for a in json.loads((real / "activitynet_qa" / "train_a.json").read_text())}
    yes_no = [s for s in samples if s.choices[s.answer_idx] in ("yes", "no")]
    assert stats["yes_no_questions"] == len(yes_no) > 0
    for sample in samples:
        correct = sample.choices[sample.answer_idx]
        if sample in yes_no:
            assert sorted(sample.choices) == ["no", "yes"]
            continue
        assert len(sample.choices) == 5
        assert len({c.lower() for c in sample.choices}) == 5
        distractors = [c for i, c in enumerate(sample.choices) if i != sample.answer_idx]
        assert set(distractors) <= train_answers - {"yes", "no"}, sample.id
        assert correct not in distractors


def test_activitynet_colour_distractors_are_colours(anet, real):
    samples, _ = anet
    answers = json.loads((real / "activitynet_qa" / "train_a.json").read_text())
    train_colours = {a["answer"] for a in answers if a["type"] == 4}
    assert len(train_colours) >= 5  # enough for 4 distractors without topping up
    colour = [s for s in samples if s.question_type == "color" and s.choices[s.answer_idx] not in ("yes", "no")]
    assert colour
    for sample in colour:
        distractors = {c for i, c in enumerate(sample.choices) if i != sample.answer_idx}
        assert distractors <= train_colours, sample.id


# --- TVQA test_public ------------------------------------------------------------------------------


@pytest.fixture()
def tvqa_dir(real, tmp_path) -> Path:
    """The excerpt under its official file name (a symlink in a temp dir, not a copy)."""
    folder = tmp_path / "tvqa"
    folder.mkdir()
    (folder / "tvqa_test_public.jsonl").symlink_to(real / "tvqa" / "tvqa_test_public.sample.jsonl")
    return folder


def test_tvqa_test_public_with_windows(tvqa_dir, real, tmp_path):
    cfg = {"name": "tvqa", "annotations": str(tvqa_dir), "videos": "/nonexistent/tvqa", "check_videos": False,
           "use_ts": True, "splits": ["test_public"]}
    samples = ADAPTERS["tvqa"](cfg)
    stats = adapter_stats("tvqa")
    lines = [json.loads(line) for line in (real / "tvqa" / "tvqa_test_public.sample.jsonl").read_text().splitlines()]
    assert len(samples) == len(lines) == 202
    assert stats["nan_windows"] == 3 and len(stats["nan_window_ids"]) == 3
    assert all(s.split == "test" and s.answer_idx is None for s in samples)
    for sample, line in zip(samples, lines):
        assert sample.id == f"tvqa-{line['qid']}"
        assert sample.choices == [line[f"a{i}"].strip() for i in range(5)]
        assert sample.video == f"/nonexistent/tvqa/{line['vid_name']}.mp4"
        if line["ts"] == "NaN-NaN":
            assert sample.start is None and sample.end is None and sample.video_id == line["vid_name"]
            assert sample.id in stats["nan_window_ids"]
        else:
            start, end = (float(x) for x in line["ts"].split("-"))
            assert (sample.start, sample.end) == (start, end)
            assert sample.video_id == f"{line['vid_name']}@{line['ts']}"
    first = samples[0]
    assert (first.id, first.question_type, first.start, first.end) == ("tvqa-137292", "who", 48.62, 60.02)
    assert Counter(s.question_type for s in samples) == {
        "what": 110, "where": 27, "who": 21, "how": 21, "why": 20, "which": 1, "when": 1, "other": 1}
    assert len(_roundtrip(samples, tmp_path)) == 202


def test_tvqa_without_ts_counts_nan_but_keeps_whole_clips(tvqa_dir):
    cfg = {"name": "tvqa", "annotations": str(tvqa_dir), "check_videos": False, "splits": ["test_public"]}
    samples = ADAPTERS["tvqa"](cfg)
    assert all(s.start is None and s.end is None for s in samples)
    assert len({s.video_id for s in samples}) == len({s.video for s in samples})
    assert adapter_stats("tvqa")["nan_windows"] == 3


# --- MSVD-QA and MSRVTT-QA --------------------------------------------------------------------------


def test_msvd_qa_splits_types_and_video_ids(real, tmp_path):
    cfg = {"name": "msvd_qa", "annotations": str(real / "msvd_qa_sibling"), "videos": "/nonexistent/msvd",
           "check_videos": False, "num_choices": 5, "seed": 3}
    samples = ADAPTERS["msvd_qa"](cfg)
    assert Counter(s.split for s in samples) == {"train": 300, "val": 300, "test": 300}
    ranges = {"train": (1, 1200), "val": (1201, 1450), "test": (1451, 1970)}  # official video ranges
    for split in ("train", "val", "test"):
        records = json.loads((real / "msvd_qa_sibling" / f"{split}_qa.json").read_text())
        mine = [s for s in samples if s.split == split]
        for sample, record in zip(mine, records):
            assert sample.id == f"msvd_qa-{record['id']}"
            assert sample.video_id == f"vid{record['video_id']}"
            assert sample.video == f"/nonexistent/msvd/vid{record['video_id']}.mp4"
            assert ranges[split][0] <= record["video_id"] <= ranges[split][1]
            assert sample.question_type == record["question"].split()[0]
            assert sample.choices[sample.answer_idx] == record["answer"]
    assert {s.question_type for s in samples} == {"what", "who", "how"}
    train_answers = {r["answer"] for r in json.loads((real / "msvd_qa_sibling" / "train_qa.json").read_text())}
    for sample in samples:
        assert set(sample.choices) - {sample.choices[sample.answer_idx]} <= train_answers | {"yes", "no"}
    assert len(_roundtrip(samples, tmp_path)) == 900


def test_msvd_files_are_not_msrvtt_files(real):
    """MSVD-QA has no category_id, so the MSRVTT-QA reader rejects it, naming file and record."""
    with pytest.raises(AdapterError, match=r"train_qa\.json record 0: missing field 'category_id'"):
        read_split(real / "msvd_qa_sibling" / "train_qa.json", "msrvtt_qa")


def test_msrvtt_qa_real_record(real, tmp_path):
    excerpt = real / "msrvtt_qa" / "test_qa.excerpt.json"
    (record,) = read_split(excerpt, "msrvtt_qa")
    assert record == {"answer": "regard", "category_id": 10, "id": 170859,
                      "question": "what is the video doing?", "video_id": 7010}
    folder = tmp_path / "msrvtt"
    folder.mkdir()
    (folder / "test_qa.json").symlink_to(excerpt)
    train = [{"answer": a, "category_id": 0, "id": i, "question": f"{word} is thing {i}?", "video_id": i}
             for i, (word, a) in enumerate([("what", "dog"), ("what", "cat"), ("what", "car"), ("what", "ball"),
                                            ("what", "cup"), ("what", "pen"), ("who", "man")])]
    (folder / "train_qa.json").write_text(json.dumps(train))
    cfg = {"name": "msrvtt_qa", "annotations": str(folder), "videos": "/nonexistent/msrvtt",
           "check_videos": False, "splits": ["test"]}
    (sample,) = ADAPTERS["msrvtt_qa"](cfg)
    assert (sample.id, sample.split, sample.video_id, sample.question_type) == ("msrvtt_qa-170859", "test", "video7010", "what")
    assert sample.video == "/nonexistent/msrvtt/video7010.mp4"
    assert sample.choices[sample.answer_idx] == "regard"
    assert len(sample.choices) == 5 and set(sample.choices) - {"regard"} <= {"dog", "cat", "car", "ball", "cup", "pen"}
