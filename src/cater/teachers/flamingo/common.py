"""What both Flamingo backends share: the instruction, the answer cue, the question text, frames as PIL images."""
from __future__ import annotations

import numpy as np

from cater.teachers.base import TeacherInput, options_block

INSTRUCTION = "Answer with the option's letter."
ANSWER_CUE = "Answer:"


def to_pil(frames: np.ndarray) -> list:
    from PIL import Image

    return [Image.fromarray(np.ascontiguousarray(frame)) for frame in frames]


def question_text(item: TeacherInput, instruction: str) -> str:
    """Question, lettered options, optional subtitles, instruction and the answer cue (no answer)."""
    lines = [f"Question: {item.question.strip()}", "Options:", options_block(item.choices)]
    if item.subtitles and item.subtitles.strip():
        lines.append(f"Subtitles: {item.subtitles.strip()}")
    lines.append(instruction)
    return "\n".join(lines)
