"""The official-format adapters on small synthetic layouts: parsing, options, windows, subtitles,
determinism, and a clear error (file + record) for each kind of bad input."""
from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cater.data.adapters import AdapterError
from cater.data.registry import ADAPTERS, adapter_stats  # noqa: E402
from cater.data.multiple_choice import AnswerPools, make_choices  # noqa: E402
from cater.data.schema import read_samples, write_samples  # noqa: E402
from cater.data.tvqa import read_srt  # noqa: E402

from helpers.official_layouts import (  # noqa: E402
    ANET_PLAIN_NAMED,
    TVQA_QUESTIONS,
    msvd_clip_name,
    write_activitynet_qa,
    write_msrvtt_qa,
    write_msvd_qa,
    write_tvqa,
)

WRITERS = {"msrvtt_qa": write_msrvtt_qa, "msvd_qa": write_msvd_qa,
           "activitynet_qa": write_activitynet_qa, "tvqa": write_tvqa}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, dict]:
    """One untouched layout per dataset, shared by the read-only tests."""
    root = tmp_path_factory.mktemp("layouts")
    return {name: write(root / name) for name, write in WRITERS.items()}


def load(cfg: dict, **overrides):
    cfg = {**cfg, **overrides}
    return ADAPTERS[cfg["name"]](cfg)


def raw_answers(cfg: dict) -> dict[str, str]:
    """sample id -> the answer text in the official open-ended files."""
    ann = Path(cfg["annotations"])
    if cfg["name"] == "activitynet_qa":
        return {f"activitynet_qa-{a['question_id']}": a["answer"]
                for split in ("train", "val", "test") for a in json.loads((ann / f"{split}_a.json").read_text())}
    return {f"{cfg['name']}-{r['id']}": r["answer"]
            for split in ("train", "val", "test") for r in json.loads((ann / f"{split}_qa.json").read_text())}


def train_answers_by_type(samples, answers) -> dict[str, set[str]]:
    pools: dict[str, set[str]] = {}
    for s in samples:
        if s.split == "train":
            pools.setdefault(s.question_type, set()).add(answers[s.id])
    return pools


# --- loading each layout ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["msrvtt_qa", "msvd_qa", "activitynet_qa"])
def test_open_ended_layouts_load_as_multiple_choice(layouts, name, tmp_path):
    cfg = layouts[name]
    samples = load(cfg)
    answers = raw_answers(cfg)
    assert len(samples) == len(answers) and {s.id for s in samples} == set(answers)
    for sample in samples:
        assert sample.dataset == name
        assert sample.choices[sample.answer_idx] == answers[sample.id]
        assert len({c.lower() for c in sample.choices}) == len(sample.choices)
        assert len(sample.choices) == (2 if answers[sample.id] in ("yes", "no") else 5)
        assert Path(sample.video).is_file()
    assert read_samples(_write(tmp_path, samples)) == samples


def _write(tmp_path: Path, samples) -> Path:
    write_samples(tmp_path / "samples.jsonl", samples)
    return tmp_path / "samples.jsonl"


def test_msrvtt_split_types_and_video_names(layouts):
    samples = load(layouts["msrvtt_qa"])
    assert Counter(s.split for s in samples) == {"train": 18, "val": 2, "test": 5}
    by_id = {s.id: s for s in samples}
    assert by_id["msrvtt_qa-0"].video_id == "video0" and by_id["msrvtt_qa-0"].video.endswith("/video0.mp4")
    types = Counter(s.question_type for s in samples)
    assert types == {"what": 11, "who": 8, "how": 2, "where": 2, "when": 1, "other": 1}
    assert by_id["msrvtt_qa-22"].question_type == "other"  # "is it a sunny day?"


def test_msvd_videos_found_through_youtube_mapping(layouts):
    samples = load(layouts["msvd_qa"])
    first = next(s for s in samples if s.id == "msvd_qa-0")
    assert first.video_id == "vid1"
    assert first.video == str(Path(layouts["msvd_qa"]["videos"]) / f"{msvd_clip_name(1)}.avi")


def test_msvd_without_mapping_falls_back_to_vid_names(tmp_path):
    cfg = write_msvd_qa(tmp_path, with_videos=False)
    (Path(cfg["annotations"]) / "youtube_mapping.txt").unlink()
    samples = load(cfg, check_videos=False)
    assert {s.video for s in samples if s.video_id == "vid1"} == {str(Path(cfg["videos"]) / "vid1.mp4")}


def test_msvd_clips_by_youtube_name_without_mapping_say_how_to_fix_it(tmp_path):
    cfg = write_msvd_qa(tmp_path)  # the official layout: clips named by YouTube id
    moved = tmp_path / "elsewhere.txt"
    (Path(cfg["annotations"]) / "youtube_mapping.txt").rename(moved)
    with pytest.raises(AdapterError) as info:
        load(cfg)
    message = str(info.value)
    assert "video not found" in message and "vid1" in message
    assert "set dataset.video_mapping to the release's youtube_mapping.txt" in message
    assert {s.video_id for s in load(cfg, video_mapping=str(moved))} >= {"vid1"}  # the suggested fix works


def test_activitynet_finds_prefixed_and_plain_video_names(layouts):
    samples = load(layouts["activitynet_qa"])
    videos = {s.video_id: Path(s.video).name for s in samples}
    assert videos["abc_DEF-12"] == "v_abc_DEF-12.mp4"
    assert videos["v_Wx-yz0AbC"] == "v_v_Wx-yz0AbC.mp4"  # the name that itself begins with v_
    for name in ANET_PLAIN_NAMED:
        assert videos[name] == f"{name}.mkv"
    assert Counter(s.split for s in samples) == {"train": 50, "val": 10, "test": 10}
    assert adapter_stats("activitynet_qa")["per_split"]["train"] == {"questions": 50, "videos": 5}


def test_activitynet_plain_layout_with_a_v_prefixed_name(tmp_path):
    """In a folder of plain `<video_name>.mp4` files, the video named `v_X` is `v_X.mp4`."""
    cfg = write_activitynet_qa(tmp_path, with_videos=False)
    videos = Path(cfg["videos"])
    for name in ["abc_DEF-12", "Gh-Ij_kLm9", "nOpQrStUv1", "v_Wx-yz0AbC", "Qq1-Qq2_Qq3", "VaL_vid-001", "tEsT-vid_02"]:
        (videos / f"{name}.mp4").write_bytes(b"x")
    (videos / "v_Gh-Ij_kLm9.mp4").write_bytes(b"x")  # a stray prefixed copy: the folder's convention wins
    samples = load(cfg)
    videos_by_id = {s.video_id: Path(s.video).name for s in samples}
    assert videos_by_id["v_Wx-yz0AbC"] == "v_Wx-yz0AbC.mp4"
    assert videos_by_id["Gh-Ij_kLm9"] == "Gh-Ij_kLm9.mp4"


def test_tvqa_windows_subtitles_and_test_public(layouts):
    samples = load(layouts["tvqa"])
    by_id = {s.id: s for s in samples}
    assert [s.id for s in samples] == [f"tvqa-{q[1]}" for q in TVQA_QUESTIONS]
    assert Counter(s.split for s in samples) == {"train": 4, "val": 2, "test": 2}
    assert all((s.answer_idx is None) == (s.split == "test") for s in samples)
    assert by_id["tvqa-2"].answer_idx == 4 and by_id["tvqa-2"].choices[0] == "Answer 0 to question 2."
    window = by_id["tvqa-0"]
    assert (window.start, window.end) == (0.5, 1.25)
    assert window.video_id == "s01e01_seg01_clip_00@0.5-1.25"
    assert window.subtitles == "(Sheldon:) Where is my spot?\n(Leonard:) You are sitting in it. Really."
    assert by_id["tvqa-1"].subtitles == "(Sheldon:) Where is my spot?"
    assert by_id["tvqa-2"].subtitles == "(Penny:) Café time!"  # from the ISO-8859-1 file
    nan = by_id["tvqa-3"]
    assert (nan.start, nan.end, nan.video_id) == (None, None, "met_s02e03_seg01_clip_01")
    assert nan.subtitles.count("\n") == 2  # the whole clip
    stats = adapter_stats("tvqa")
    assert stats["nan_windows"] == 2 and stats["nan_window_ids"] == ["tvqa-3", "tvqa-7"]
    assert [s.question_type for s in samples] == ["what", "who", "why", "where", "how", "which", "when", "other"]
    assert all(Path(s.video).is_file() and s.video.endswith(".mp4") for s in samples)


def test_splits_mapping_assigns_official_splits_to_roles(layouts):
    samples = load(layouts["tvqa"], splits={"train": "train", "val": "test"})  # the labelled val as the test split
    assert {s.split for s in samples} == {"train", "test"} and all(s.answer_idx is not None for s in samples)
    assert {s.id for s in samples if s.split == "test"} == {s.id for s in load(layouts["tvqa"]) if s.split == "val"}
    msrvtt = load(layouts["msrvtt_qa"], splits={"train": "train", "test": "val"})
    assert {s.split for s in msrvtt} == {"train", "val"}
    for bad, message in (({"validation": "val"}, "unknown split"), ({"val": "dev"}, "each official split becomes one of"),
                         ({}, "mapping is empty")):
        with pytest.raises(AdapterError, match=message):
            load(layouts["tvqa"], splits=bad)


def test_tvqa_without_ts_uses_whole_clips(layouts):
    samples = load(layouts["tvqa"], use_ts=False)
    assert all(s.start is None and s.end is None for s in samples)
    assert all(s.subtitles.count("\n") == 2 for s in samples)
    assert {s.video_id for s in samples} == {"s01e01_seg01_clip_00", "castle_s01e01_seg02_clip_03",
                                             "met_s02e03_seg01_clip_01", "friends_s01e02_seg02_clip_05"}


def test_tvqa_frame_folders(tmp_path):
    cfg = write_tvqa(tmp_path, frames=True)
    samples = load(cfg, splits=["val"], subtitles=None)
    assert [Path(s.video).parent.name for s in samples] == ["met_frames", "castle_frames"]
    assert all(Path(s.video).is_dir() and len(list(Path(s.video).glob("*.jpg"))) == 6 for s in samples)
    assert all(s.subtitles is None for s in samples)


def test_srt_reader(tmp_path):
    path = tmp_path / "clip.srt"
    path.write_bytes(b"1\r\n00:00:01,500 --> 00:00:02,000\r\n<i>(Ross:)</i> Hi.\r\n\r\n2\r\n01:00:00,000 --> 01:00:01,250\r\nBye\r\n")
    lines = read_srt(path)
    assert [(ln.start, ln.end, ln.text) for ln in lines] == [(1.5, 2.0, "(Ross:) Hi."), (3600.0, 3601.25, "Bye")]


# --- distractors ---------------------------------------------------------------------------------


def test_distractors_come_from_train_answers_of_the_same_type(layouts):
    cfg = layouts["activitynet_qa"]
    samples = load(cfg)
    answers = raw_answers(cfg)
    pools = train_answers_by_type(samples, answers)
    for sample in samples:
        correct = answers[sample.id]
        distractors = set(sample.choices) - {correct}
        if correct in ("yes", "no"):
            assert set(sample.choices) == {"yes", "no"}
        else:
            assert distractors <= pools[sample.question_type] - {"yes", "no"}, (sample.id, sample.choices)
    assert adapter_stats("activitynet_qa")["topped_up"] == 0


def test_msrvtt_distractors_use_question_word_pools_and_never_eval_answers(layouts):
    cfg = layouts["msrvtt_qa"]
    samples = load(cfg)
    answers = raw_answers(cfg)
    who_pool = train_answers_by_type(samples, answers)["who"]
    assert len(who_pool) == 5
    for sample in (s for s in samples if s.question_type == "who"):
        assert set(sample.choices) - {answers[sample.id]} <= who_pool
    eval_only = {answers[s.id] for s in samples if s.split != "train"} - {answers[s.id] for s in samples if s.split == "train"}
    assert eval_only == {"book", "child", "umbrella", "regard", "garden", "yes"}
    for sample in samples:
        distractors = set(sample.choices) - {answers[sample.id]}
        assert not distractors & (eval_only - {"yes"}), sample.id


def test_short_pool_is_topped_up_from_all_train_answers(layouts):
    samples = load(layouts["msrvtt_qa"])
    where = next(s for s in samples if s.id == "msrvtt_qa-24")  # "where is the cat?" -> garden
    assert len(where.choices) == 5 and "kitchen" in where.choices  # the only train "where" answer
    assert adapter_stats("msrvtt_qa")["topped_up"] > 0


def test_deterministic_and_order_independent(layouts, tmp_path):
    cfg = layouts["msrvtt_qa"]
    first, second = load(cfg), load(cfg)
    assert first == second
    assert len({s.answer_idx for s in first if len(s.choices) == 5}) > 2  # the position is drawn too
    other_seed = load(cfg, seed=1)
    assert [s.choices for s in other_seed] != [s.choices for s in first]
    # reversed file order and an extra train record elsewhere do not change existing questions' options
    copy = tmp_path / "copy"
    shutil.copytree(cfg["annotations"], copy)
    test = json.loads((copy / "test_qa.json").read_text())
    (copy / "test_qa.json").write_text(json.dumps(test[::-1]))
    reordered = {s.id: s for s in load(cfg, annotations=str(copy))}
    assert all(reordered[s.id] == s for s in first)


def test_num_choices_param(layouts):
    samples = load(layouts["activitynet_qa"], num_choices=3)
    assert Counter(len(s.choices) for s in samples) == {3: 56, 2: 14}
    with pytest.raises(AdapterError, match="num_choices"):
        load(layouts["activitynet_qa"], num_choices=1)


def test_make_choices_never_duplicates_the_answer():
    pools = AnswerPools([("Red", "color"), ("red ", "color"), ("blue", "color"), ("green", "color"), ("no", "color")])
    for seed in range(20):
        result = make_choices("RED", "color", pools, 4, seed, "q1")
        assert sorted(c.lower() for c in result.choices) == ["blue", "green", "red"]
        assert result.choices[result.answer_idx] == "RED" and result.short
    assert make_choices("No", "color", pools, 4, 0, "q2").choices in (["yes", "No"], ["No", "yes"])


def test_choices_are_pinned_and_positions_uniform():
    """Pinned values: a change of algorithm would silently invalidate cached teacher outputs."""
    pools = AnswerPools([(a, "what") for a in ["dog", "dog", "dog", "cat", "cat", "car", "ball", "cup", "pen", "hat"]]
                        + [("man", "who")])
    assert make_choices("dog", "what", pools, 5, 7, "q3").choices == ["cat", "ball", "dog", "hat", "car"]
    assert make_choices("dog", "what", pools, 5, 7, "q4").choices == ["cup", "pen", "ball", "cat", "dog"]
    positions = Counter(make_choices("dog", "what", pools, 5, 0, f"q{i}").answer_idx for i in range(2000))
    assert set(positions) == {0, 1, 2, 3, 4} and min(positions.values()) > 300
    assert "man" not in {c for i in range(200) for c in make_choices("dog", "what", pools, 5, 0, f"q{i}").choices}


# --- bad inputs: each names the file and the record ------------------------------------------------


def _edit_json(path: Path, edit) -> None:
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


@pytest.mark.parametrize(
    "name, remove, message",
    [
        ("msrvtt_qa", "video7.mp4", r"test_qa\.json record 0 \(id 20\): video not found \(looked for video7\.\{mp4"),
        ("msvd_qa", f"{msvd_clip_name(7)}.avi", r"val_qa\.json record 0 \(id 18\): video not found"),
        ("activitynet_qa", "v_VaL_vid-001.mp4", r"val_q\.json / .*val_a\.json record 0 \(question_id 'v_VaL_vid-001_1'\): video not found"),
        ("tvqa", "friends_s01e02_seg02_clip_05.mp4", r"tvqa_test_public\.jsonl:1 \(qid 6\): video not found"),
    ],
)
def test_missing_video(tmp_path, name, remove, message):
    cfg = WRITERS[name](tmp_path)
    (Path(cfg["videos"]) / remove).unlink()
    with pytest.raises(AdapterError, match=message):
        load(cfg)
    assert len(load(cfg, check_videos=False)) > 0  # parsing alone still works


def test_activitynet_answer_file_out_of_line(tmp_path):
    cfg = write_activitynet_qa(tmp_path, with_videos=False)
    _edit_json(Path(cfg["annotations"]) / "val_a.json", lambda a: [a[0], a[2], a[1], *a[3:]])
    with pytest.raises(AdapterError, match=r"val_a\.json record 1 has question_id 'v_VaL_vid-001_3' but .*val_q\.json record 1 has 'v_VaL_vid-001_2'"):
        load(cfg, check_videos=False)


def test_activitynet_answer_file_shorter(tmp_path):
    cfg = write_activitynet_qa(tmp_path, with_videos=False)
    _edit_json(Path(cfg["annotations"]) / "test_a.json", lambda a: a[:-1])
    with pytest.raises(AdapterError, match=r"test_q\.json record 9 \(question_id 'v_tEsT-vid_02_10'\) has no partner in .*test_a\.json"):
        load(cfg, check_videos=False)


def test_activitynet_unknown_type_code(tmp_path):
    cfg = write_activitynet_qa(tmp_path, with_videos=False)
    _edit_json(Path(cfg["annotations"]) / "train_a.json", lambda a: [*a[:4], {**a[4], "type": 9}, *a[5:]])
    with pytest.raises(AdapterError, match=r"train_a\.json record 4 \(question_id 'v_abc_DEF-12_5'\): unknown type code 9"):
        load(cfg, check_videos=False)


def test_activitynet_question_id_of_another_video(tmp_path):
    cfg = write_activitynet_qa(tmp_path, with_videos=False)
    for kind in ("q", "a"):
        _edit_json(Path(cfg["annotations"]) / f"val_{kind}.json",
                   lambda rows: [{**rows[0], "question_id": "v_other_1"}, *rows[1:]])
    with pytest.raises(AdapterError, match=r"val_a\.json record 0 .*does not belong to video_name 'VaL_vid-001'"):
        load(cfg, check_videos=False)


@pytest.mark.parametrize("name, file", [("msrvtt_qa", "train_qa.json"), ("activitynet_qa", "val_q.json")])
def test_malformed_json(tmp_path, name, file):
    cfg = WRITERS[name](tmp_path, with_videos=False)
    path = Path(cfg["annotations"]) / file
    path.write_text(path.read_text()[:-40])
    with pytest.raises(AdapterError, match=rf"{file}: malformed JSON \(.* at line 1 column \d+\)"):
        load(cfg, check_videos=False)


def test_wrong_field_type(tmp_path):
    cfg = write_msrvtt_qa(tmp_path, with_videos=False)
    _edit_json(Path(cfg["annotations"]) / "val_qa.json", lambda r: [r[0], {**r[1], "video_id": "6"}])
    with pytest.raises(AdapterError, match=r"val_qa\.json record 1: field 'video_id' is '6' \(str\), expected int"):
        load(cfg, check_videos=False)


def test_duplicate_ids(tmp_path):
    cfg = write_msrvtt_qa(tmp_path, with_videos=False)
    _edit_json(Path(cfg["annotations"]) / "test_qa.json", lambda r: [*r, {**r[0], "id": 0}])
    with pytest.raises(AdapterError, match=r"test_qa\.json record 5 \(id 0\): duplicate id 'msrvtt_qa-0' \(first at .*train_qa\.json record 0"):
        load(cfg, check_videos=False)


def _rewrite_line(path: Path, lineno: int, edit) -> None:
    lines = path.read_text().splitlines()
    lines[lineno - 1] = edit(lines[lineno - 1])
    path.write_text("\n".join(lines) + "\n")


def test_tvqa_malformed_line(tmp_path):
    cfg = write_tvqa(tmp_path, with_videos=False)
    _rewrite_line(Path(cfg["annotations"]) / "tvqa_val.jsonl", 2, lambda line: line[:-5])
    with pytest.raises(AdapterError, match=r"tvqa_val\.jsonl:2: malformed JSON line"):
        load(cfg, check_videos=False)


@pytest.mark.parametrize("value", [5, -1, "2", True])
def test_tvqa_answer_idx_out_of_range(tmp_path, value):
    cfg = write_tvqa(tmp_path, with_videos=False)
    _rewrite_line(Path(cfg["annotations"]) / "tvqa_train.jsonl", 3,
                  lambda line: json.dumps({**json.loads(line), "answer_idx": value}))
    with pytest.raises(AdapterError, match=r"tvqa_train\.jsonl:3 \(qid 2\): answer_idx is .*, expected an integer 0-4"):
        load(cfg, check_videos=False)


def test_tvqa_missing_answer_idx_outside_test_public(tmp_path):
    cfg = write_tvqa(tmp_path, with_videos=False)
    _rewrite_line(Path(cfg["annotations"]) / "tvqa_val.jsonl", 1,
                  lambda line: json.dumps({k: v for k, v in json.loads(line).items() if k != "answer_idx"}))
    with pytest.raises(AdapterError, match=r"tvqa_val\.jsonl:1 \(qid 4\): missing field 'answer_idx'"):
        load(cfg, check_videos=False)


@pytest.mark.parametrize("ts", ["2.0-1.0", "abc", "NaN-3.0", "1.0"])
def test_tvqa_bad_ts(tmp_path, ts):
    cfg = write_tvqa(tmp_path, with_videos=False)
    _rewrite_line(Path(cfg["annotations"]) / "tvqa_train.jsonl", 1, lambda line: json.dumps({**json.loads(line), "ts": ts}))
    with pytest.raises(AdapterError, match=r"tvqa_train\.jsonl:1 \(qid 0\): ts "):
        load(cfg, check_videos=False)


def test_tvqa_missing_and_malformed_subtitles(tmp_path):
    cfg = write_tvqa(tmp_path, with_videos=False)
    srt = Path(cfg["subtitles"]) / "castle_s01e01_seg02_clip_03.srt"
    srt.write_text("1\n00:00:01 --> 00:00:02\nhello\n")
    with pytest.raises(AdapterError, match=r"castle_s01e01_seg02_clip_03\.srt:2: expected 'HH:MM:SS,mmm"):
        load(cfg, check_videos=False)
    srt.unlink()
    with pytest.raises(AdapterError, match=r"tvqa_train\.jsonl:3 \(qid 2\): subtitle file .*castle_s01e01_seg02_clip_03\.srt not found"):
        load(cfg, check_videos=False)


def test_bad_config(layouts):
    with pytest.raises(AdapterError, match=r"unknown key\(s\) \['vidoes'\]"):
        load(layouts["msrvtt_qa"], vidoes="x")
    with pytest.raises(AdapterError, match=r"unknown split\(s\) \['test_public'\]"):
        load(layouts["msrvtt_qa"], splits=["test_public"])
    with pytest.raises(AdapterError, match="num_choices is 4, TVQA has exactly 5"):
        load(layouts["tvqa"], num_choices=4)
    with pytest.raises(AdapterError, match=r"train_qa\.json: annotation file not found"):
        load(layouts["msrvtt_qa"], annotations="/nonexistent/msrvtt")
    with pytest.raises(AdapterError, match="videos folder /nonexistent/v does not exist"):
        load(layouts["msrvtt_qa"], videos="/nonexistent/v")
    # keys of another adapter are tolerated, so one params section can switch datasets
    assert load(layouts["msrvtt_qa"], use_ts=True, subtitles=None) == load(layouts["msrvtt_qa"])


def test_min_answer_freq_keeps_rare_answers_out_of_the_distractors(layouts):
    pools = AnswerPools([(a, "what") for a in ["dog"] * 5 + ["cat"] * 5 + ["car"] * 2 + ["ball"]], min_answer_freq=5)
    assert pools.overall.keys == ["cat", "dog"] and pools.pool("what").keys == ["cat", "dog"] and pools.dropped_rare == 2
    assert AnswerPools([("dog", "what"), ("cat", "what")], min_answer_freq=9).overall.keys == ["cat", "dog"]  # none reach it
    cfg = layouts["msrvtt_qa"]
    answers = raw_answers(cfg)
    counts = Counter(answers[s.id].strip().lower() for s in load(cfg) if s.split == "train")
    samples = load(cfg, min_answer_freq=2)
    rare = {a for a, n in counts.items() if n < 2} - {"yes", "no"}
    assert rare and adapter_stats("msrvtt_qa")["rare_answers_not_distractors"] == len(rare)
    for sample in samples:
        distractors = {c.lower() for c in sample.choices} - {answers[sample.id].lower()}
        assert not distractors & rare, (sample.id, sample.choices)
    assert any(answers[s.id].lower() in rare for s in samples)  # a rare answer is still a correct answer
    with pytest.raises(AdapterError, match="min_answer_freq"):
        load(cfg, min_answer_freq=0)
