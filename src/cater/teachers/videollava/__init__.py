"""Video-LLaVA as a teacher (`teacher.py`: VideoLlavaForConditionalGeneration, letter logits at the answer position)."""
from __future__ import annotations

from cater.teachers.videollava.teacher import INSTRUCTION, KNOWN_EXTRA, MODEL_TYPE, VideoLlavaTeacher, read_checkpoint_config

__all__ = ["INSTRUCTION", "KNOWN_EXTRA", "MODEL_TYPE", "VideoLlavaTeacher", "read_checkpoint_config"]
