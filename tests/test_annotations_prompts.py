"""The offline `annotations` prompt backend: event vs frame prompts, captioner noise, no answers."""
from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

from cater.data.frames import FrameStore, decode_video, frame_stem
from cater.data.schema import group_by_video
from cater.data.shapes import COLORS, SHAPES, visible
from cater.prompts.annotations import AnnotationsBackend
from cater.prompts.base import PromptError, PromptRequest, VideoPrompts
from cater.stages.prompts import build_requests

NUM_FRAMES = 8
MOTION = re.compile(r"\b(moves|stays still)\b")
POSITION = re.compile(r"\b(left|right|top|bottom|centre)\b")
OBJECT = re.compile(r"\b(" + "|".join(COLORS) + r") (" + "|".join(SHAPES) + r")\b")


@pytest.fixture(scope="module")
def frame_store(shapes_set, tmp_path_factory) -> FrameStore:
    """A frames directory in the frames stage's layout, for the shapes fixture."""
    root = tmp_path_factory.mktemp("frames")
    index = {}
    for vid, path in sorted(shapes_set.videos().items()):
        frames, times = decode_video(path, NUM_FRAMES, 32)
        np.save(root / f"{frame_stem(vid)}.npy", frames)
        index[vid] = {"file": f"{frame_stem(vid)}.npy", "times": times, "num_frames": NUM_FRAMES}
    (root / "index.json").write_text(json.dumps(index))
    return FrameStore(root)


@pytest.fixture(scope="module")
def requests(shapes_set, frame_store) -> list[PromptRequest]:
    return build_requests(shapes_set.samples, frame_store)


def faithful(requests):
    return AnnotationsBackend(omit_prob=0.0, confuse_prob=0.0).generate(requests)


def test_event_prompts_one_per_event_in_time_order(requests):
    for request, prompts in zip(requests, faithful(requests)):
        assert isinstance(prompts, VideoPrompts) and prompts.video_id == request.video_id
        prompts.validate(NUM_FRAMES)
        events = sorted(request.events, key=lambda e: e["start"])
        assert len(prompts.events) == len(events)
        starts = [p["start_frame"] for p in prompts.events]
        assert starts == sorted(starts)
        for prompt, event in zip(prompts.events, events):
            assert prompt["text"].count(".") == 1 and prompt["text"].endswith(".")  # one sentence
            assert OBJECT.findall(prompt["text"]) == [(event["color"], event["shape"])]
            assert ("stays still" if event["direction"] == "nowhere" else f"moves {event['direction']}") in prompt["text"]
            assert 0 <= prompt["start_frame"] <= prompt["end_frame"] < NUM_FRAMES
            shown = [f for f, t in enumerate(request.frame_times) if visible(event, t)]
            if shown:  # the span is exactly the sampled frames in which the object is visible
                assert (prompt["start_frame"], prompt["end_frame"]) == (shown[0], shown[-1])
        assert prompts.events[0]["text"].startswith("First,")


def test_frame_prompts_one_per_frame_describe_what_is_visible(requests):
    for request, prompts in zip(requests, faithful(requests)):
        assert len(prompts.frames) == len(request.frame_times) == NUM_FRAMES
        for text, t in zip(prompts.frames, request.frame_times):
            on_screen = sorted((e["color"], e["shape"]) for e in request.events if visible(e, t))
            assert sorted(OBJECT.findall(text)) == on_screen
            if not on_screen:
                assert text == "An empty dark background."


def test_event_and_frame_prompts_really_differ(requests):
    for prompts in faithful(requests):
        event_texts = {e["text"] for e in prompts.events}
        assert not event_texts & set(prompts.frames)
        assert all(MOTION.search(t) for t in event_texts)
        assert not any(MOTION.search(t) for t in prompts.frames)
        described = [t for t in prompts.frames if OBJECT.search(t)]
        assert described and all(POSITION.search(t) for t in described)


def test_prompts_mention_only_objects_of_the_video(requests):
    for request, prompts in zip(requests, faithful(requests)):
        labels = {(e["color"], e["shape"]) for e in request.events}
        texts = [e["text"] for e in prompts.events] + prompts.frames
        assert {m for t in texts for m in OBJECT.findall(t)} <= labels


def test_omit_probability_one_still_reports_one_event(requests):
    for request, prompts in zip(requests, AnnotationsBackend(omit_prob=1.0, confuse_prob=0.0).generate(requests)):
        assert len(prompts.events) == 1
        first = min(request.events, key=lambda e: e["start"])
        assert OBJECT.findall(prompts.events[0]["text"]) == [(first["color"], first["shape"])]
        prompts.validate(NUM_FRAMES)


def test_confuse_probability_one_changes_every_event(requests):
    for request, prompts in zip(requests, AnnotationsBackend(omit_prob=0.0, confuse_prob=1.0).generate(requests)):
        events = sorted(request.events, key=lambda e: e["start"])
        assert len(prompts.events) == len(events)
        for prompt, event in zip(prompts.events, events):
            truth = f"a {event['color']} {event['shape']} appears and " + (
                "stays still" if event["direction"] == "nowhere" else f"moves {event['direction']}")
            assert truth not in prompt["text"]
            assert OBJECT.findall(prompt["text"])[0][1] == event["shape"]  # only colour or direction is confused


def test_noise_is_seeded_per_video(requests):
    a = AnnotationsBackend(omit_prob=0.5, confuse_prob=0.5, seed=1).generate(requests)
    b = AnnotationsBackend(omit_prob=0.5, confuse_prob=0.5, seed=1).generate(requests)
    c = AnnotationsBackend(omit_prob=0.5, confuse_prob=0.5, seed=2).generate(requests)
    assert [p.to_record() for p in a] == [p.to_record() for p in b]
    assert [p.to_record() for p in a] != [p.to_record() for p in c]
    # one video's result does not depend on which other videos share the batch
    assert AnnotationsBackend(omit_prob=0.5, confuse_prob=0.5, seed=1).generate(requests[-1:])[0].to_record() == a[-1].to_record()


def test_request_carries_no_answers(shapes_set, frame_store, requests):
    fields = {f.name for f in dataclasses.fields(PromptRequest)}
    # given_prompts: prompts a dataset ships (the seed JSONL's), read from the sample, never built from its answer
    assert fields == {"video_id", "frames", "frame_times", "questions", "events", "given_prompts", "subtitles"}
    assert all(request.given_prompts is None for request in requests)
    # change every answer (and reorder the choices): the backend's output does not move
    changed = [dataclasses.replace(s, choices=list(reversed(s.choices)), answer_idx=(s.answer_idx + 1) % len(s.choices))
               for s in shapes_set.samples]
    backend = AnnotationsBackend(omit_prob=0.3, confuse_prob=0.3, seed=4)
    before = [p.to_record() for p in backend.generate(requests)]
    after = [p.to_record() for p in backend.generate(build_requests(changed, frame_store))]
    assert before == after
    # the request's question context holds the questions only, not options
    for request in requests:
        group = group_by_video(shapes_set.samples)[request.video_id]
        assert sorted(request.questions) == sorted({s.question for s in group})


def test_video_without_events_is_an_error(requests):
    request = dataclasses.replace(requests[0], events=None)
    result = AnnotationsBackend().generate([request])[0]
    assert isinstance(result, PromptError) and request.video_id in str(result)


@pytest.mark.parametrize("key", ["omit_prob", "confuse_prob"])
def test_probabilities_are_checked(key):
    with pytest.raises(ValueError, match=key):
        AnnotationsBackend(**{key: 1.5})
