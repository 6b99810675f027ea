"""The prompt-backend interface.

A backend turns a video's sampled frames (plus optional question context, never the answer)
into event-level prompts (one sentence per event, in time order, each covering a span of the
sampled frames) and frame-level prompts (one sentence per sampled frame).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class PromptError(RuntimeError):
    """Prompts for one video could not be produced; the message is the reason."""


@dataclass
class PromptRequest:
    video_id: str
    frames: np.ndarray  # uint8 [T, H, W, 3]
    frame_times: list[float]  # seconds, one per frame
    questions: list[str] = field(default_factory=list)  # question context only; no answers, no choices
    events: list[dict[str, Any]] | None = None  # ground-truth events; only the offline `annotations` backend reads them
    given_prompts: dict[str, list[str]] | None = None  # prompts shipped with the data; only the `given` backend reads them
    subtitles: str | None = None  # the video's (window's) subtitles; sent only by generators with use_subtitles: true


@dataclass
class VideoPrompts:
    video_id: str
    events: list[dict[str, Any]]  # [{"text": str, "start_frame": int, "end_frame": int}], time order
    frames: list[str]  # one sentence per sampled frame

    def to_record(self) -> dict:
        return {"video_id": self.video_id, "events": self.events, "frames": self.frames}

    def validate(self, num_frames: int) -> None:
        if len(self.frames) != num_frames:
            raise PromptError(f"{len(self.frames)} frame prompts for {num_frames} frames")
        if not self.events:
            raise PromptError("no event prompts")
        for event in self.events:
            if not str(event.get("text", "")).strip():
                raise PromptError("empty event prompt")
            if not 0 <= event["start_frame"] <= event["end_frame"] < num_frames:
                raise PromptError(f"event span {event['start_frame']}..{event['end_frame']} outside 0..{num_frames - 1}")
        if any(not text.strip() for text in self.frames):
            raise PromptError("empty frame prompt")


class PromptBackend(ABC):
    name: str = ""

    @abstractmethod
    def generate(self, requests: list[PromptRequest]) -> list[VideoPrompts | PromptError]:
        """One result per request, in order: prompts, or the error that explains the failure."""


SUBTITLES_HEADER = "Subtitles of this video (what is said; context only):"


def subtitle_lines(subtitles: str | None) -> list[str]:
    """The subtitle block of a generator's request, or nothing."""
    return [SUBTITLES_HEADER, subtitles.strip()] if subtitles and subtitles.strip() else []


def spread_events(texts: list[str], num_frames: int) -> list[dict[str, Any]]:
    """Assign event sentences without time spans to equal consecutive frame segments, in order."""
    events = []
    n = len(texts)
    for i, text in enumerate(texts):
        start = (i * num_frames) // n
        end = max(start, ((i + 1) * num_frames) // n - 1)
        events.append({"text": text, "start_frame": min(start, num_frames - 1), "end_frame": min(end, num_frames - 1)})
    return events


NO_EVENT = "Nothing new happens."


def event_text_per_frame(events: list[dict], num_frames: int) -> list[str]:
    """The event sentences covering each frame, joined; frames outside every event get NO_EVENT."""
    texts = []
    for f in range(num_frames):
        covering = [e["text"] for e in events if e["start_frame"] <= f <= e["end_frame"]]
        texts.append(" ".join(covering) if covering else NO_EVENT)
    return texts
