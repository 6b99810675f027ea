"""The shapes demo generator: deterministic bytes, question types, answers consistent with the events."""
from __future__ import annotations

import random
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from cater.data.frames import decode_video
from cater.data.schema import Sample, parse_samples
from cater.data.shapes import (
    COUNT_WORDS,
    DIRECTION_CHOICES,
    QUESTION_TYPES,
    ShapesConfig,
    generate,
    make_events,
    make_questions,
    render_frame,
)

SMALL = {"train": 2, "val": 1, "test": 1}


def relative(samples: list[Sample], root: Path) -> list[dict]:
    out = []
    for s in samples:
        record = asdict(s)
        record["video"] = str(Path(s.video).relative_to(root))
        out.append(record)
    return out


def test_same_seed_gives_identical_bytes_and_samples(tmp_path):
    cfg = ShapesConfig(seed=11, videos=dict(SMALL))
    a = generate(tmp_path / "a", cfg)
    b = generate(tmp_path / "b", ShapesConfig(seed=11, videos=dict(SMALL)))
    assert relative(a, tmp_path / "a") == relative(b, tmp_path / "b")
    files_a = sorted((tmp_path / "a" / "videos").iterdir())
    files_b = sorted((tmp_path / "b" / "videos").iterdir())
    assert [p.name for p in files_a] == [p.name for p in files_b] and len(files_a) == 4
    for fa, fb in zip(files_a, files_b):
        assert fa.read_bytes() == fb.read_bytes()
    # a different seed gives a different dataset
    c = generate(tmp_path / "c", ShapesConfig(seed=12, videos=dict(SMALL)))
    assert relative(c, tmp_path / "c") != relative(a, tmp_path / "a")


def test_layout_and_schema(shapes_set):
    samples = shapes_set.samples
    n_videos = sum(shapes_set.config.videos.values())
    assert len(samples) == 4 * n_videos
    assert len({s.id for s in samples}) == len(samples)
    for split, count in shapes_set.config.videos.items():
        assert len({s.video_id for s in samples if s.split == split}) == count
    # every sample survives the strict schema check
    assert parse_samples([s.to_json() for s in samples], "generated") == samples
    for path in shapes_set.videos().values():
        assert path.exists() and path.stat().st_size > 0
    assert not list(shapes_set.root.rglob("*.tmp.mp4"))


def test_four_types_five_distinct_choices(shapes_set):
    by_video: dict[str, list[Sample]] = {}
    for s in shapes_set.samples:
        by_video.setdefault(s.video_id, []).append(s)
    for samples in by_video.values():
        assert sorted(s.question_type for s in samples) == sorted(QUESTION_TYPES)
        for s in samples:
            assert len(s.choices) == 5 and len(set(s.choices)) == 5
            assert 0 <= s.answer_idx < 5


def answer(s: Sample) -> str:
    return s.choices[s.answer_idx]


def test_answers_follow_the_events(shapes_set):
    for s in shapes_set.samples:
        events = sorted(s.events, key=lambda e: e["start"])
        labels = [e["label"] for e in events]
        assert 2 <= len(events) <= 6
        if s.question_type == "count":
            assert answer(s) == COUNT_WORDS[len(events) - 2]
            assert sorted(s.choices) == sorted(COUNT_WORDS)
        elif s.question_type == "first":
            assert answer(s) == labels[0]
        elif s.question_type == "after":
            prior = re.fullmatch(r"What appeared right after the (.+)\?", s.question).group(1)
            assert answer(s) == labels[labels.index(prior) + 1]
            assert prior not in s.choices  # the object asked about is not an option
        elif s.question_type == "direction":
            target = re.fullmatch(r"Which direction did the (.+) move\?", s.question).group(1)
            event = events[labels.index(target)]
            expected = "it stayed still" if event["direction"] == "nowhere" else event["direction"]
            assert answer(s) == expected
            assert sorted(s.choices) == sorted(DIRECTION_CHOICES)


def test_generated_splits_are_exactly_balanced(tmp_path):
    """No constant rule beats chance: per split and type, every position and every count/direction answer
    is correct equally often (the video counts are multiples of 5), and the count options are shuffled."""
    from collections import Counter

    samples = generate(tmp_path, ShapesConfig(seed=2, videos={"train": 10, "test": 5}, seconds=1.0, fps=4, size=32))
    for split, count in (("train", 10), ("test", 5)):
        rows = [s for s in samples if s.split == split]
        for qtype in QUESTION_TYPES:
            idx = Counter(s.answer_idx for s in rows if s.question_type == qtype)
            assert idx == Counter({i: count // 5 for i in range(5)}), (split, qtype, idx)
        for qtype, options in (("count", COUNT_WORDS), ("direction", DIRECTION_CHOICES)):
            answers = Counter(answer(s) for s in rows if s.question_type == qtype)
            assert answers == Counter({o: count // 5 for o in options}), (split, qtype, answers)
    assert len({tuple(s.choices) for s in samples if s.question_type == "count"}) > 1


def test_events_are_ordered_distinct_and_inside_the_clip():
    rng = random.Random(5)
    cfg = ShapesConfig()
    for _ in range(50):
        events = make_events(rng, cfg)
        starts = [e["start"] for e in events]
        assert starts == sorted(starts) and len(set(starts)) == len(starts)
        assert len({e["label"] for e in events}) == len(events)
        assert all(0 <= e["start"] < e["end"] <= cfg.seconds for e in events)


def test_video_shows_the_rendered_frames(shapes_set):
    """The mp4 decodes to (nearly) the frames the generator rendered at the same times."""
    cfg = shapes_set.config
    sample = shapes_set.samples[0]
    frames, times = decode_video(sample.video, 8, cfg.size)
    rendered = np.stack([render_frame(sample.events, t + 0.5 / cfg.fps, cfg) for t in times])
    diff = np.abs(frames.astype(int) - rendered.astype(int))
    assert diff.mean() < 1.5  # compression noise only
    # an empty clip differs several times more: the check has teeth
    blank = np.stack([render_frame([], t, cfg) for t in times])
    assert np.abs(frames.astype(int) - blank.astype(int)).mean() > 2 * diff.mean()


@pytest.mark.parametrize("shape", ["circle", "square", "triangle"])
def test_render_frame_draws_one_object_in_its_colour(shape):
    cfg = ShapesConfig()
    event = {"label": f"red {shape}", "color": "red", "shape": shape, "direction": "nowhere",
             "start": 0.0, "end": 1.0, "x0": 0.5, "y0": 0.5}
    frame = render_frame([event], 0.5, cfg)
    red = np.all(frame == (220, 40, 40), axis=-1)
    assert 20 < red.sum() < 0.2 * cfg.size**2
    ys, xs = np.nonzero(red)
    assert abs(xs.mean() - cfg.size / 2) < 3 and abs(ys.mean() - cfg.size / 2) < 4
    assert not np.any(np.all(render_frame([event], 1.5, cfg) == (220, 40, 40), axis=-1))  # gone after its end
