"""The Chat-UniVi teacher: the reference's conversation templates, the tokenizer, and multiple-choice scoring."""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from cater.teachers.base import (
    Teacher, TeacherConfig, TeacherError, TeacherInput, TeacherOutput, check_extra, letter_matrix, letter_output,
    letter_token_ids, options_block, placement_kwargs, resolve_device, resolve_dtype,
)
from cater.teachers.chatunivi.checkpoint import (
    CLIP_CONFIG_FILE, CLIP_PREPROCESSOR_FILE, llama_config, load_image_processor, official_state, read_checkpoint_config,
)
from cater.teachers.chatunivi.model import IMAGE_TOKEN_INDEX, ChatUniViModel, ChatUniViOutput

IMAGE_PLACEHOLDER = "<image>"

# --------------------------------------------------------------------------------------------
# Conversation templates (the reference's `v1`, default of its video-QA script, and `simple`)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvTemplate:
    system: str
    roles: tuple[str, str]
    preset: tuple[tuple[str, str], ...]  # canned (role, message) turns before the user's
    seps: tuple[str, str]  # separator after a user turn, after an assistant turn

    def prompt(self, user_message: str) -> str:
        """The full prompt, ending with the assistant role and a colon: the answer comes next."""
        turns = list(self.preset) + [(self.roles[0], user_message)]
        text = self.system + self.seps[0]
        for i, (role, message) in enumerate(turns):
            text += f"{role}: {message}" + self.seps[i % 2]
        return text + f"{self.roles[1]}:"


CONV_TEMPLATES = {
    "v1": ConvTemplate(
        system="A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions.",
        roles=("USER", "ASSISTANT"),
        preset=(),
        seps=(" ", "</s>"),
    ),
    "simple": ConvTemplate(
        system="A chat between a curious human and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the human's questions.",
        roles=("Human", "Assistant"),
        preset=(("Human", "Hi!"), ("Assistant", "Hi there! How can I help you today?")),
        seps=("###", "###"),
    ),
}


def tokenize_with_placeholders(prompt: str, encode: Callable[[str], list[int]], bos_id: int | None) -> list[int]:
    """Split `prompt` on `<image>`, tokenise each piece with `encode` (which adds BOS), keep only
    the first piece's BOS, and put one IMAGE_TOKEN_INDEX between consecutive pieces."""
    ids: list[int] = []
    for i, piece in enumerate(prompt.split(IMAGE_PLACEHOLDER)):
        piece_ids = list(encode(piece))
        if i > 0:
            ids.append(IMAGE_TOKEN_INDEX)
            if bos_id is not None and piece_ids[:1] == [bos_id]:
                piece_ids = piece_ids[1:]
        ids.extend(piece_ids)
    return ids



ANSWER_INSTRUCTION = "Answer with the option's letter from the given choices directly."
TEACHER_EXTRA_KEYS = {"conv_mode", "max_frames", "attn_implementation"}


def load_tokenizer(path: Path, config: dict):
    from transformers import AutoTokenizer

    names = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
    if not any((path / name).is_file() for name in names):
        raise TeacherError(f"Chat-UniVi checkpoint {path}: no tokenizer ({', '.join(names)}); the teacher needs one")
    if not (path / "tokenizer.json").is_file() and (path / "tokenizer.model").is_file():
        import importlib.util

        if importlib.util.find_spec("google.protobuf") is None:  # transformers converts tokenizer.model through it
            raise TeacherError(f"Chat-UniVi checkpoint {path}: its tokenizer is tokenizer.model only (as released), which "
                               f"transformers converts with protobuf; install it (requirements.txt pins it)")
    try:
        return AutoTokenizer.from_pretrained(str(path), config=llama_config(config))
    except (OSError, ValueError) as err:
        raise TeacherError(f"Chat-UniVi checkpoint {path}: tokenizer could not be loaded: {err}") from err



class ChatUniViTeacher(Teacher):
    """Chat-UniVi multiple-choice scorer: one forward pass per batch (left padding).

    choice_logits: next-token logits of ' A'..' E' (first len(choices)) right after 'ASSISTANT:'.
    hidden: the final-norm hidden state of the last prompt token (the answer position), float32.
    extra: conv_mode ('v1' default, the reference video-QA template; or 'simple'),
    max_frames (64, the reference video-QA cap; frames beyond it are subsampled uniformly),
    attn_implementation (passed to LLaMA, e.g. 'eager' or 'sdpa').

    Frames: `num_frames` (if set) picks a uniform subset of the stored frames. One frame (or two)
    takes the image path (112 tokens per frame); three or more the video path (112 per event).
    With 17-64 frames the reference's event split is decided by near-ties (ARCHITECTURE.md
    section 8), so events there are deterministic here but not guaranteed to match the reference.
    """

    family = "chatunivi"

    def __init__(self, config: TeacherConfig):
        super().__init__(config)
        if config.family != self.family:
            raise TeacherError(f"ChatUniViTeacher got family {config.family!r}")
        check_extra(config, TEACHER_EXTRA_KEYS, self.family)
        dtype = resolve_dtype(config.dtype)
        self.template = CONV_TEMPLATES.get(config.extra.get("conv_mode", "v1"))
        if self.template is None:
            raise TeacherError(f"chatunivi teacher: conv_mode must be one of {sorted(CONV_TEMPLATES)}")
        self.max_frames = int(config.extra.get("max_frames", 64))
        path = Path(config.model)
        checkpoint_config = read_checkpoint_config(path)  # family check before the slow loading
        self.tokenizer = load_tokenizer(path, checkpoint_config)
        device = resolve_device(config.device)
        placement = placement_kwargs(config, device, dtype)  # device_map, quantization (bitsandbytes)
        self.model = ChatUniViModel.from_pretrained(
            path,
            dtype=dtype,
            device=device if "device_map" not in placement else "cpu",
            device_map=placement.get("device_map"),
            quantization_config=placement.get("quantization_config"),
            attn_implementation=config.extra.get("attn_implementation"),
        )
        self.image_processor = load_image_processor(path, self.model.checkpoint_config)
        self.hidden_size = self.model.hidden_size
        self.letter_ids = letter_token_ids(self.tokenizer, f"{self.template.roles[1]}:", config.model)
        if max(self.letter_ids) >= self.model.llm.config.vocab_size:
            raise TeacherError(f"tokenizer letter ids {self.letter_ids} exceed the model vocabulary")

    # ---- inputs -----------------------------------------------------------------------------

    def user_message(self, item: TeacherInput, num_frames: int) -> str:
        parts = [IMAGE_PLACEHOLDER * num_frames]
        if item.subtitles:
            parts.append(f"Subtitles: {item.subtitles}")
        parts += [item.question, options_block(item.choices), ANSWER_INSTRUCTION]
        return "\n".join(parts)

    def select_frames(self, frames: np.ndarray) -> np.ndarray:
        frames = super().select_frames(frames)
        if len(frames) > self.max_frames:  # the reference loader's integer-linspace subsample
            frames = frames[np.linspace(0, len(frames) - 1, self.max_frames).astype(int)]
        return frames

    def pixel_values(self, frames: np.ndarray) -> torch.Tensor:
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise TeacherError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
        return self.image_processor(images=list(frames), return_tensors="pt")["pixel_values"]

    def encode(self, item: TeacherInput) -> tuple[torch.Tensor, torch.Tensor, str]:
        """(input_ids with placeholders, pixel values [T,3,S,S], prompt text) of one sample."""
        self.check_input(item)
        frames = self.select_frames(item.frames)
        prompt = self.template.prompt(self.user_message(item, len(frames)))
        encode = lambda text: self.tokenizer(text)["input_ids"]  # noqa: E731
        ids = tokenize_with_placeholders(prompt, encode, self.tokenizer.bos_token_id)
        return torch.tensor(ids), self.pixel_values(frames), prompt

    # ---- scoring ----------------------------------------------------------------------------

    def forward(self, batch: list[TeacherInput], logits: str | None = "last") -> ChatUniViOutput:
        encoded = [self.encode(item) for item in batch]
        return self.model([e[0] for e in encoded], [e[1] for e in encoded], logits=logits)

    # ---- fine-tuning ------------------------------------------------------------------------

    def letter_logits(self, batch: list[TeacherInput]) -> torch.Tensor:
        """As `score`, but differentiable (LLaMA, projector, embeddings; the vision tower and the
        clustering are frozen): letter logits [B, max choices], float32, -inf past a sample's
        choices. One pass for the whole batch (`score` splits it into `batch_size` chunks)."""
        for item in batch:
            self.check_input(item)
        encoded = [self.encode(item) for item in batch]
        result = self.model.forward_with_grad([e[0] for e in encoded], [e[1] for e in encoded], logits="last")
        return letter_matrix(batch, self.letter_ids, result.logits.float())

    def trainable_parameters(self) -> list[nn.Parameter]:
        """LLaMA and the projector; the CLIP vision tower stays frozen (as in the Chat-UniVi recipe)."""
        for param in self.model.vision_tower.parameters():
            param.requires_grad_(False)
        trained = []
        for module in (self.model.llm, self.model.mm_projector):
            for _, param in sorted(module.named_parameters(), key=lambda kv: kv[0]):
                param.requires_grad_(True)
                trained.append(param)
        return trained

    @contextmanager
    def caching_frozen_inputs(self):
        """Memoize the frozen part (CLIP features, clustering) per video while the block runs."""
        previous, self.model.visual_memo = self.model.visual_memo, {}
        try:
            yield
        finally:
            self.model.visual_memo = previous

    def save_pretrained(self, path: str | Path) -> None:
        """The official layout (see the module docstring) with the current weights, plus the tokenizer
        and the non-weight files of the source checkpoint (generation and bundled CLIP configs)."""
        from safetensors.torch import save_file

        path, source = Path(path), Path(self.config.model)
        state = official_state(self.model.llm, self.model.vision_tower, self.model.mm_projector,
                               self.model.checkpoint_config)
        save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
        (path / "config.json").write_text(json.dumps(self.model.checkpoint_config, indent=2))
        for name in ("generation_config.json", CLIP_CONFIG_FILE, CLIP_PREPROCESSOR_FILE):
            if (source / name).is_file():
                (path / name).write_bytes((source / name).read_bytes())
        self.tokenizer.save_pretrained(str(path))

    def score(self, batch: list[TeacherInput]) -> list[TeacherOutput]:
        for item in batch:  # fail before any compute
            self.check_input(item)
        outputs = []
        size = max(1, self.config.batch_size)
        for start in range(0, len(batch), size):
            chunk = batch[start:start + size]
            result = self.forward(chunk, logits="last")
            last_logits = result.logits.float().cpu()
            hidden = result.last_hidden_state[:, -1].float().cpu()
            # the shared guard: non-finite letter logits or hidden state make the output missing, never a guess
            outputs.extend(letter_output(item, self.letter_ids, last_logits[row], hidden[row]) for row, item in enumerate(chunk))
        return outputs
