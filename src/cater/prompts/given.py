"""`given`: the prompts that came with the dataset (the seed JSONL's `event_prompts` / `frame_prompts`).

Nothing is generated. `mapping` says how a list of event sentences meets the sampled frames:
    seed    the i-th sentence goes to the i-th frame, the list padded with its last sentence and cut at the
            frame count (the seed repository's rule; default)
    spread  the sentences share the frames in equal consecutive segments (as LLM events without spans)
Frame prompts are mapped one per frame the seed's way; without them the event sentences stand in (as in the
seed). A video without given prompts is a PromptError, never filled with other text.
"""
from __future__ import annotations

from cater.prompts.base import PromptBackend, PromptError, PromptRequest, VideoPrompts, spread_events

MAPPINGS = ("seed", "spread")


def per_frame(texts: list[str], num_frames: int) -> list[str]:
    """The seed's rule: pad with the last sentence, keep the first `num_frames`."""
    return (list(texts) + [texts[-1]] * max(0, num_frames - len(texts)))[:num_frames]


class GivenBackend(PromptBackend):
    name = "given"

    def __init__(self, mapping: str = "seed"):
        if mapping not in MAPPINGS:
            raise ValueError(f"mapping must be one of {MAPPINGS}, got {mapping!r}")
        self.mapping = mapping

    def generate(self, requests: list[PromptRequest]) -> list[VideoPrompts | PromptError]:
        return [self._one(request) for request in requests]

    def _one(self, request: PromptRequest) -> VideoPrompts | PromptError:
        given = request.given_prompts
        if not given or not given.get("event"):
            return PromptError(f"video {request.video_id}: the dataset gives no prompts for it (seed JSONL event_prompts)")
        n = len(request.frame_times)
        events = given["event"]
        if self.mapping == "seed":
            spans = [{"text": text, "start_frame": i, "end_frame": i} for i, text in enumerate(per_frame(events, n))]
        else:
            spans = spread_events(events, n)
        return VideoPrompts(request.video_id, spans, per_frame(given.get("frame") or events, n))
