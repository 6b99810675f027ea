"""What the model reads and how its answer is read: the instructions, the user turn, the built-in chat
templates, and the answer parsed as JSON or as headed lists."""
from __future__ import annotations

import json
import re

from cater.prompts.base import PromptError, subtitle_lines

VICUNA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}USER: {{ m['content'] }}\n"
    "{% else %}ASSISTANT: {{ m['content'] }}{{ eos_token }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
TEMPLATES = {"vicuna": VICUNA_TEMPLATE}

SYSTEM = (
    "You turn a frame-by-frame description of a short video into prompts for a video "
    "question-answering model. Write the events in the order they happen, one short sentence "
    "each, and one short sentence per frame. Do not answer the questions."
)

_ITEM = re.compile(r"^\s*(?:\d+\s*[.):]|[-*\u2022])\s*(.+?)\s*$")
_HEADING = re.compile(r"^\W*(event|frame)s?(?:[- ]level)?(?: prompts?)?\W*$", re.IGNORECASE)


def _json_object(text: str) -> dict | None:
    """The first {...} span of `text` that decodes to an object with 'events' and 'frames'."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and "events" in obj and "frames" in obj:
            return obj
    return None


def _sections(text: str) -> dict[str, list[str]]:
    """Numbered or bulleted items under 'Events' / 'Frames' heading lines."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        heading = _HEADING.match(line)
        if heading:
            current = heading.group(1).lower() + "s"
            sections.setdefault(current, [])
            continue
        item = _ITEM.match(line)
        if item and current:
            sections[current].append(item.group(1))
    return sections


def parse_generation(text: str, num_frames: int) -> tuple[list[str], list[str]]:
    """(events, frames) from generated text: JSON first, then headed lists; PromptError otherwise."""
    obj = _json_object(text)
    if obj is not None:
        how = "JSON"
        events, frames = obj["events"], obj["frames"]
        if not (isinstance(events, list) and isinstance(frames, list)
                and all(isinstance(s, str) for s in events + frames)):
            raise PromptError("JSON answer: 'events' and 'frames' must be lists of strings")
    else:
        sections = _sections(text)
        if not sections.get("events") or not sections.get("frames"):
            raise PromptError(f"answer is neither JSON nor 'Events'/'Frames' lists: {text[:120]!r}")
        how = "list"
        events, frames = sections["events"], sections["frames"]
    events = [s.strip() for s in events if s.strip()]
    frames = [s.strip() for s in frames]
    if not events:
        raise PromptError(f"{how} answer has no events")
    if len(frames) != num_frames or not all(frames):
        raise PromptError(f"{how} answer has {sum(1 for f in frames if f)} frame sentences for {num_frames} frames")
    return events, frames


def user_message(summary: list[str], questions: list[str], subtitles: str | None = None) -> str:
    n = len(summary)
    lines = ["What each sampled frame of the video shows, in time order:"]
    lines += [f"{i + 1}. {s}" for i, s in enumerate(summary)]
    if questions:
        lines.append("Questions that will be asked about the video (context only, do not answer them):")
        lines += [f"- {q}" for q in questions]
    lines += subtitle_lines(subtitles)
    lines.append(f'Answer with JSON only: {{"events": [one sentence per event], "frames": [exactly {n} sentences]}}.')
    return "\n".join(lines)
