"""The sample schema: every error names file:line and the field; write/read round trip."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cater.data.schema import Sample, SchemaError, group_by_video, read_samples, write_samples


def record(**overrides) -> dict:
    base = {
        "id": "v1-q1",
        "dataset": "shapes",
        "split": "train",
        "video": "videos/v1.mp4",
        "question": "Which shape appeared first?",
        "choices": ["red circle", "blue square", "green triangle"],
        "answer_idx": 1,
        "question_type": "first",
    }
    base.update(overrides)
    return base


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def bad_file_error(tmp_path: Path, bad_line: str) -> str:
    """Write a good line 1, then `bad_line` on line 2; return the SchemaError message."""
    path = write_lines(tmp_path / "samples.jsonl", [json.dumps(record(id="ok")), bad_line])
    with pytest.raises(SchemaError) as info:
        read_samples(path)
    message = str(info.value)
    assert message.startswith(f"{path}:2:"), message
    return message


def test_malformed_json_line(tmp_path):
    message = bad_file_error(tmp_path, '{"id": "x", "dataset": ')
    assert "malformed JSON" in message


def test_non_object_line(tmp_path):
    assert "expected a JSON object" in bad_file_error(tmp_path, "[1, 2]")


@pytest.mark.parametrize("field", ["id", "dataset", "split", "video", "question", "choices", "answer_idx", "question_type"])
def test_missing_required_field(tmp_path, field):
    rec = record()
    del rec[field]
    message = bad_file_error(tmp_path, json.dumps(rec))
    assert f"missing field '{field}'" in message


@pytest.mark.parametrize(
    "field, value",
    [("question", 3), ("choices", "a,b"), ("answer_idx", "1"), ("answer_idx", True), ("answer_idx", 1.0),
     ("start", "0.5"), ("events", {"label": "x"}), ("subtitles", 7)],
)
def test_wrong_type(tmp_path, field, value):
    message = bad_file_error(tmp_path, json.dumps(record(**{field: value})))
    assert f"field '{field}' has type" in message


@pytest.mark.parametrize("answer", [-1, 3, 10])
def test_answer_idx_out_of_range(tmp_path, answer):
    message = bad_file_error(tmp_path, json.dumps(record(answer_idx=answer)))
    assert "field 'answer_idx'" in message and "out of range for 3 choices" in message


def test_answer_idx_null_is_allowed(tmp_path):
    path = write_lines(tmp_path / "s.jsonl", [json.dumps(record(answer_idx=None))])
    assert read_samples(path)[0].answer_idx is None


@pytest.mark.parametrize("choices", [[], ["only one"]])
def test_fewer_than_two_choices(tmp_path, choices):
    message = bad_file_error(tmp_path, json.dumps(record(choices=choices, answer_idx=None)))
    assert "field 'choices'" in message and "need at least 2" in message


def test_empty_choice_string(tmp_path):
    assert "field 'choices[1]'" in bad_file_error(tmp_path, json.dumps(record(choices=["a", "  "], answer_idx=0)))


def test_duplicate_id_names_both_lines(tmp_path):
    message = bad_file_error(tmp_path, json.dumps(record(id="ok")))
    assert "duplicate id 'ok'" in message and "line 1" in message


def test_unknown_field(tmp_path):
    message = bad_file_error(tmp_path, json.dumps(record(answer="blue square")))
    assert "unknown field" in message and "'answer'" in message


def test_bad_split_and_empty_window(tmp_path):
    assert "field 'split'" in bad_file_error(tmp_path, json.dumps(record(split="dev")))
    assert "'start'/'end'" in bad_file_error(tmp_path, json.dumps(record(start=5.0, end=2.0)))


def test_blank_lines_are_skipped_and_line_numbers_stay_true(tmp_path):
    path = write_lines(tmp_path / "s.jsonl", [json.dumps(record(id="a")), "", json.dumps(record(id="b", question=""))])
    with pytest.raises(SchemaError, match=r"s\.jsonl:3: field 'question' is empty"):
        read_samples(path)


def test_round_trip(tmp_path):
    samples = [
        Sample(id="a", dataset="shapes", split="train", video="v/a.mp4", question="Q?", choices=["x", "y"], answer_idx=0,
               question_type="count", events=[{"label": "red circle", "start": 0.0, "end": 1.0}]),
        Sample(id="b", dataset="tvqa", split="test", video="frames/b", question="Who — ünïcode?", choices=["x", "y", "z"],
               answer_idx=None, question_type="what", video_id="clip-b", start=1.5, end=4.0, subtitles="hello"),
    ]
    path = tmp_path / "out" / "samples.jsonl"
    write_samples(path, samples)
    assert read_samples(path) == samples
    # the file holds no temp leftovers and null optionals are not written (answer_idx always is)
    assert [p.name for p in path.parent.iterdir()] == ["samples.jsonl"]
    first = json.loads(path.read_text().splitlines()[0])
    assert "start" not in first and first["answer_idx"] == 0
    assert json.loads(path.read_text().splitlines()[1])["answer_idx"] is None


def test_video_id_defaults_to_video_and_groups():
    a = Sample(id="a", dataset="d", split="train", video="v.mp4", question="q", choices=["x", "y"], answer_idx=0, question_type="t")
    b = Sample(id="b", dataset="d", split="train", video="v.mp4", question="q", choices=["x", "y"], answer_idx=1, question_type="t")
    assert a.video_id == "v.mp4"
    assert group_by_video([a, b]) == {"v.mp4": [a, b]}


# ---------------------------------------------------------------- size limits (a 102k-character question OOM-killed a run)

@pytest.mark.parametrize("field,value,detail", [
    ("question", "Why? " * 20_400, "field 'question' has 102000 characters (limit 2000)"),
    ("question", "q" * 2001, "field 'question' has 2001 characters (limit 2000)"),
    ("choices", ["short", "x" * 501], "field 'choices[1]' has 501 characters (limit 500)"),
    ("subtitles", "line\n" * 4001, "field 'subtitles' has 20005 characters (limit 20000)"),
    ("choices", [f"option {i}" for i in range(27)], "field 'choices' has 27 choices (limit 26)"),
    ("video_id", "v" * 257, "field 'video_id' has 257 characters (limit 256)"),
    ("video", "v/" * 2049, "field 'video' has 4098 characters (limit 4096)"),
    ("question_type", "t" * 101, "field 'question_type' has 101 characters (limit 100)"),
    ("events", [{"label": "x"}] * 257, "field 'events' has 257 events (limit 256)"),
])
def test_text_fields_over_their_limit_are_refused(tmp_path, field, value, detail):
    message = bad_file_error(tmp_path, json.dumps(record(id="v1-q9", **{field: value})))
    assert f"sample 'v1-q9': {detail}" in message, message
    assert len(message) < 500  # the error does not quote the oversized text


def test_an_oversized_id_is_refused_without_quoting_it(tmp_path):
    message = bad_file_error(tmp_path, json.dumps(record(id="i" * 10_000)))
    assert "field 'id' has 10000 characters (limit 256)" in message and len(message) < 500, message


def test_text_fields_at_their_limit_pass(tmp_path):
    path = write_lines(tmp_path / "samples.jsonl", [json.dumps(record(
        question="q" * 2000, choices=["c" * 500] + [f"o{i}" for i in range(25)], subtitles="s" * 20000,
        question_type="t" * 100, video_id="v" * 256))])
    [sample] = read_samples(path)
    assert len(sample.question) == 2000 and len(sample.choices) == 26


def test_a_huge_line_is_refused_before_it_is_parsed(tmp_path):
    message = bad_file_error(tmp_path, json.dumps(record(events=[{"label": "x" * 1000}] * 250)))
    assert "line has" in message and "characters (limit 200000)" in message and len(message) < 500, message
