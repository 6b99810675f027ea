"""The flamingo teacher: one of two backends (idefics, openflamingo), one forward pass per batch."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cater.teachers.base import (
    LETTERS, Teacher, TeacherConfig, TeacherError, TeacherInput, TeacherOutput, check_extra, letter_matrix, letter_output,
    letter_token_ids, resolve_device, resolve_dtype,
)
from cater.teachers.flamingo.common import INSTRUCTION, question_text
from cater.teachers.flamingo.idefics import IdeficsBackend
from cater.teachers.flamingo.openflamingo import OpenFlamingoBackend

BACKENDS = ("idefics", "openflamingo")
DEFAULT_BACKEND = "idefics"
KNOWN_EXTRA = {"backend", "instruction", "trust_remote_code"}


class FlamingoTeacher(Teacher):
    family = "flamingo"

    def __init__(self, config: TeacherConfig):
        super().__init__(config)
        if config.family != self.family:
            raise TeacherError(f"FlamingoTeacher got family {config.family!r}; it only loads 'flamingo'")
        check_extra(config, KNOWN_EXTRA, self.family)
        self.backend_name = config.extra.get("backend", DEFAULT_BACKEND)
        if self.backend_name not in BACKENDS:
            raise TeacherError(f"teacher {config.model}: unknown flamingo backend {self.backend_name!r} "
                               f"(use one of {', '.join(BACKENDS)})")
        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype)
        backend_class = IdeficsBackend if self.backend_name == "idefics" else OpenFlamingoBackend
        self.backend = backend_class(config, device, dtype)
        self.instruction = config.extra.get("instruction", INSTRUCTION)
        self.hidden_size = self.backend.hidden_size
        probe = TeacherInput("probe", np.zeros((1, 1, 1, 3), np.uint8), "Which option?", list(LETTERS))
        self.letter_ids = letter_token_ids(self.backend.tokenizer, self.prompt(probe), config.model)

    def prompt(self, item: TeacherInput) -> str:
        """The text that follows the frames, ending with the answer cue."""
        return self.backend.prompt(question_text(item, self.instruction))

    def frames(self, item: TeacherInput) -> np.ndarray:
        """The frames given to the model (`Teacher.select_frames`)."""
        return self.select_frames(item.frames)

    def _check(self, item: TeacherInput) -> None:
        self.check_input(item)
        frames = np.asarray(item.frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise TeacherError(f"sample {item.id}: frames must be uint8 [T, H, W, 3], got {frames.dtype} "
                               f"{list(frames.shape)}")
        texts = [item.question, *item.choices, item.subtitles or ""]
        for token in self.backend.media_tokens:
            if any(token in text for text in texts):
                raise TeacherError(f"sample {item.id}: text contains the model's special token {token!r}")

    def score(self, batch: list[TeacherInput]) -> list[TeacherOutput]:
        for item in batch:
            self._check(item)
        if not batch:
            return []
        inputs = self.backend.encode([self.frames(item) for item in batch], [self.prompt(item) for item in batch])
        hidden, logits = self.backend.forward(inputs)
        return [self._output(item, logits[row], hidden[row]) for row, item in enumerate(batch)]

    def _output(self, item: TeacherInput, vocab_logits, hidden) -> TeacherOutput:
        return letter_output(item, self.letter_ids, vocab_logits, hidden)

    # -- fine-tuning ----------------------------------------------------------------------------------

    def letter_logits(self, batch: list[TeacherInput]):
        """As `score`, but differentiable: the letter logits [B, max choices] (float32, -inf past a sample's
        choices) of one forward pass."""
        for item in batch:
            self._check(item)
        inputs = self.backend.encode([self.frames(item) for item in batch], [self.prompt(item) for item in batch])
        _, logits = self.backend.last_position(inputs)
        return letter_matrix(batch, self.letter_ids, logits.float())

    def trainable_parameters(self) -> list:
        return self.backend.trainable_parameters()

    def save_pretrained(self, path) -> None:
        """The backend's own format (idefics: `save_pretrained` of model and processor)."""
        self.backend.save_pretrained(Path(path))
