"""What is sent and what comes back: the instructions, the JSON schema of the answer, the user turn's text,
the frames as data URLs, and the answer's text taken out of a Responses / Chat Completions body and parsed."""
from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np

from cater.prompts.base import PromptError, PromptRequest, subtitle_lines

OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "events": {"type": "array", "items": {"type": "string"}},
        "frames": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["events", "frames"],
    "additionalProperties": False,
}
SCHEMA_NAME = "video_prompts"

INSTRUCTIONS = (
    "You describe short videos for a video question-answering model. You see frames sampled "
    "uniformly from one video, in time order. Answer with JSON only:\n"
    '- "events": the distinct events of the video in the order they happen, one short factual '
    "sentence each (who or what, its colour and shape or appearance, what it does, where it moves);\n"
    '- "frames": exactly one short sentence per frame, in frame order, saying what is visible in '
    "that frame and where.\n"
    "Describe only what you see. Do not answer the questions; they only tell you what matters."
)


def encode_image(frame: np.ndarray, image_size: int, image_format: str = "jpeg", jpeg_quality: int = 90) -> str:
    """A data URL of one uint8 [H, W, 3] frame, downscaled so its longer side is <= image_size."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8), mode="RGB")
    w, h = image.size
    scale = image_size / max(w, h)
    if scale < 1:
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    if image_format == "png":
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format="JPEG", quality=jpeg_quality)
    mime = "image/png" if image_format == "png" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def user_text(request: PromptRequest, use_subtitles: bool = False) -> str:
    n = len(request.frame_times)
    times = ", ".join(f"{t:.2f}" for t in request.frame_times)
    lines = [f"The video has {n} frames below, at {times} seconds.", f'Give exactly {n} sentences in "frames".']
    if request.questions:
        lines.append("Questions that will be asked about this video (context only, do not answer them):")
        lines += [f"- {q}" for q in request.questions]
    if use_subtitles:
        lines += subtitle_lines(request.subtitles)
    return "\n".join(lines)


def parse_output(text: str, num_frames: int) -> tuple[list[str], list[str]]:
    """(events, frames) from the model's JSON text; PromptError naming what is wrong."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PromptError(f"output is not JSON ({exc.msg} at char {exc.pos}): {text[:120]!r}") from None
    if not isinstance(obj, dict) or set(obj) != {"events", "frames"}:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise PromptError(f"output violates the schema: expected keys ['events', 'frames'], got {keys}")
    for field in ("events", "frames"):
        items = obj[field]
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            raise PromptError(f"output violates the schema: '{field}' must be a list of strings")
        if any(not s.strip() for s in items):
            raise PromptError(f"output violates the schema: '{field}' holds an empty sentence")
    if not obj["events"]:
        raise PromptError("output violates the schema: 'events' is empty")
    if len(obj["frames"]) != num_frames:
        raise PromptError(f"output has {len(obj['frames'])} frame sentences for {num_frames} frames")
    return [s.strip() for s in obj["events"]], [s.strip() for s in obj["frames"]]


def responses_text(response) -> str:
    """The output text of a Responses API answer; PromptError for a refusal, an unfinished or malformed answer."""
    if isinstance(response, str):  # the client hands back non-JSON bodies as text
        raise PromptError(f"malformed response body (not JSON): {response[:120]!r}")
    status = getattr(response, "status", None)
    if status not in (None, "completed"):
        details = getattr(response, "incomplete_details", None)
        reason = getattr(details, "reason", None) or getattr(response, "error", None)
        raise PromptError(f"response {status}: {reason}")
    try:
        for item in response.output:
            for part in getattr(item, "content", None) or []:
                if getattr(part, "type", None) == "refusal":
                    raise PromptError(f"model refused: {_short(str(part.refusal))}")
        return response.output_text
    except (AttributeError, TypeError) as exc:
        raise PromptError(f"response body does not match the Responses API ({exc})") from None


def chat_text(completion) -> str:
    """The text of a Chat Completions answer; PromptError for a refusal, a cut-off or malformed answer."""
    if isinstance(completion, str):
        raise PromptError(f"malformed response body (not JSON): {completion[:120]!r}")
    try:
        choice = completion.choices[0]
        message = choice.message
        if getattr(message, "refusal", None):
            raise PromptError(f"model refused: {_short(message.refusal)}")
        if choice.finish_reason == "length":
            raise PromptError("answer cut off at max_output_tokens")
        if not isinstance(message.content, str):
            raise PromptError("answer has no text content")
        return message.content
    except (AttributeError, TypeError, IndexError) as exc:
        raise PromptError(f"response body does not match the Chat Completions API ({exc})") from None


def _usage(response) -> dict | None:
    usage = getattr(response, "usage", None)
    if usage is None or not hasattr(usage, "model_dump"):
        return None
    return usage.model_dump(mode="json")


def _short(text: Any, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
