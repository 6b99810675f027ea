"""`annotations`: the offline prompt backend for the demo, an imperfect captioner.

It reads the ground-truth events of a video (never the questions' answers) and writes
- event-level prompts: one sentence per event, in time order, spanning the frames the event covers;
- frame-level prompts: what is visible in each sampled frame (objects and where), with no motion
  and no order.
Like a real captioner it makes mistakes: each event is omitted with `omit_prob` and its colour or
direction is confused with `confuse_prob`, seeded per video, so the prompts do not simply restate
the ground truth.
"""
from __future__ import annotations

import random

from cater.data.shapes import COLORS, object_position, position_words, visible, ShapesConfig
from cater.io import stable_hash
from cater.prompts.base import PromptBackend, PromptError, PromptRequest, VideoPrompts


class AnnotationsBackend(PromptBackend):
    name = "annotations"

    def __init__(self, omit_prob: float = 0.1, confuse_prob: float = 0.1, seed: int = 0):
        for key, value in (("omit_prob", omit_prob), ("confuse_prob", confuse_prob)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"prompts.annotations.{key} must be in [0, 1], got {value}")
        self.omit_prob, self.confuse_prob, self.seed = omit_prob, confuse_prob, seed

    def generate(self, requests: list[PromptRequest]) -> list[VideoPrompts | PromptError]:
        return [self._one(request) for request in requests]

    def _one(self, request: PromptRequest) -> VideoPrompts | PromptError:
        if not request.events:
            return PromptError(f"video {request.video_id}: no event annotations (the annotations backend needs them)")
        rng = random.Random(stable_hash([self.seed, request.video_id]))
        seen = []
        for event in sorted(request.events, key=lambda e: e["start"]):
            if rng.random() < self.omit_prob:
                continue
            seen.append(self._perceive(event, rng))
        if not seen:  # a captioner always reports something
            seen.append(self._perceive(sorted(request.events, key=lambda e: e["start"])[0], rng))
        times = request.frame_times
        events = []
        for i, event in enumerate(seen):
            motion = "stays still" if event["direction"] == "nowhere" else f"moves {event['direction']}"
            ordinal = "first" if i == 0 else "finally" if i == len(seen) - 1 else "then"
            text = f"{ordinal.capitalize()}, a {event['color']} {event['shape']} appears and {motion}."
            covered = [f for f, t in enumerate(times) if visible(event, t)]
            if not covered:  # shorter than the frame spacing: the nearest sampled frame
                centre = (event["start"] + event["end"]) / 2
                covered = [min(range(len(times)), key=lambda f: abs(times[f] - centre))]
            events.append({"text": text, "start_frame": covered[0], "end_frame": covered[-1]})
        frames = [self._describe_frame(seen, t) for t in times]
        return VideoPrompts(video_id=request.video_id, events=events, frames=frames)

    def _perceive(self, event: dict, rng: random.Random) -> dict:
        event = dict(event)
        if rng.random() < self.confuse_prob:
            if rng.random() < 0.5:
                event["color"] = rng.choice([c for c in COLORS if c != event["color"]])
            else:
                event["direction"] = rng.choice([d for d in ("left", "right", "up", "down", "nowhere") if d != event["direction"]])
        return event

    @staticmethod
    def _describe_frame(events: list[dict], t: float) -> str:
        cfg = ShapesConfig()
        parts = []
        for event in events:
            if visible(event, t):
                x, y = object_position(event, t, cfg)
                parts.append(f"a {event['color']} {event['shape']} {position_words(x, y)}")
        if not parts:
            return "An empty dark background."
        return "A frame showing " + " and ".join(parts) + "."
