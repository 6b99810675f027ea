"""The one interface every teacher family implements.

A teacher reads a batch of samples (frames, question, choices, optional subtitles) and returns,
per sample, the next-token logits of the option letters at the answer position, the chosen
option, and a pooled final hidden state. One forward pass per sample, batched; no generation.
A teacher never sees the ground-truth answer.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LETTERS = ("A", "B", "C", "D", "E")
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class TeacherError(RuntimeError):
    """A teacher cannot be built or cannot score this input; the message says why."""


@dataclass
class TeacherInput:
    id: str
    frames: np.ndarray  # uint8 [T, H, W, 3], as stored by the frames stage
    question: str
    choices: list[str]
    subtitles: str | None = None


@dataclass
class TeacherOutput:
    id: str
    choice_logits: list[float] | None  # None when this sample's output is missing
    hard_idx: int | None
    hidden: np.ndarray | None  # float32 [hidden_size]
    missing_reason: str | None = None
    choice_only: bool = False  # the teacher gave a choice, not a distribution (the logits only encode it)
    projected: bool = False  # `hidden` is already an embedding in the student's space (the seed's teacher_embedding)

    @property
    def missing(self) -> bool:
        return self.choice_logits is None


@dataclass
class TeacherConfig:
    family: str  # videollava | flamingo | chatunivi
    model: str  # hub id or local path
    dtype: str = "fp32"  # fp32 | fp16 | bf16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    device_map: str | None = None
    quantization: str | None = None  # None | 4bit | 8bit (CUDA + bitsandbytes only)
    batch_size: int = 4
    num_frames: int | None = None  # frames given to the teacher; None = all stored frames
    extra: dict[str, Any] = field(default_factory=dict)  # family-specific options


class Teacher(ABC):
    """Subclasses load their checkpoint in __init__ with from_pretrained (or the family's own loader)."""

    family: str = ""
    hidden_size: int = 0

    def __init__(self, config: TeacherConfig):
        self.config = config

    @abstractmethod
    def score(self, batch: list[TeacherInput]) -> list[TeacherOutput]:
        """Score a batch in one forward pass; return one output per input, in order."""

    def select_frames(self, frames: np.ndarray) -> np.ndarray:
        """The frames given to the model: `config.num_frames` uniformly sampled from the stored ones, or all (None)."""
        n = self.config.num_frames
        if n is not None and n != len(frames):
            from cater.data.frames import uniform_indices

            frames = frames[uniform_indices(len(frames), n)]
        return frames

    def sample_source(self, sample_id: str) -> str | None:
        """A digest of what this teacher's output for `sample_id` depends on besides the sample and its frames
        (None: nothing; a model's weights are in the stage's config hash)."""
        return None

    # -- fine-tuning (optional; cater.testing.tiny.finetune uses these) -----------------------------

    def letter_logits(self, batch: list[TeacherInput]):
        """The option letters' next-token logits at the answer position, torch [B, max choices], with
        autograd (the same prompt, encoding and forward pass as `score`; columns past a sample's
        choices are -inf)."""
        raise TeacherError(f"teacher family {self.family!r} has no differentiable scoring path")

    def trainable_parameters(self) -> list:
        """The parameters fine-tuning updates (the rest stay frozen)."""
        raise TeacherError(f"teacher family {self.family!r} cannot be fine-tuned")

    def caching_frozen_inputs(self):
        """A context in which the teacher may memoize what fine-tuning never changes (e.g. the features
        of a frozen vision tower); by default it memoizes nothing."""
        from contextlib import nullcontext

        return nullcontext()

    def save_pretrained(self, path) -> None:
        """Write the (fine-tuned) model into the empty directory `path`, in the family's checkpoint format."""
        raise TeacherError(f"teacher family {self.family!r} cannot save its model")

    @staticmethod
    def check_input(item: TeacherInput) -> None:
        if item.frames is None or len(item.frames) == 0:
            raise TeacherError(f"sample {item.id}: no frames")
        if len(item.choices) > len(LETTERS):
            raise TeacherError(
                f"sample {item.id}: {len(item.choices)} choices, but teachers have only "
                f"{len(LETTERS)} option letters ({''.join(LETTERS)})"
            )
        if len(item.choices) < 2:
            raise TeacherError(f"sample {item.id}: fewer than 2 choices")


def check_extra(config: TeacherConfig, known, family: str) -> None:
    """A clear error for `extra` options the family does not know (a typo must not be ignored silently)."""
    unknown = set(config.extra) - set(known)
    if unknown:
        raise TeacherError(f"teacher {config.model}: unknown option(s) {sorted(unknown)} for family {family} "
                           f"(known: {sorted(known)})")


def options_block(choices: list[str]) -> str:
    """The choices as lettered lines: 'A. red circle\\nB. ...'."""
    return "\n".join(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(choices))


def resolve_device(device: str):
    """'auto' -> cuda when available, else cpu; an unavailable cuda device is an error."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TeacherError(f"device {device!r} requested, but CUDA is not available on this machine")
    try:
        return torch.device(device)
    except RuntimeError:
        raise TeacherError(f"device {device!r} is not a valid torch device (use auto, cpu, cuda or cuda:N)") from None


def resolve_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise TeacherError(f"dtype {name!r} is not supported (use one of {sorted(DTYPES)})")
    return getattr(torch, DTYPES[name])


def quantization_config(kind: str | None, device, compute_dtype):
    """A BitsAndBytesConfig for 4bit/8bit; only on CUDA with bitsandbytes importable."""
    if kind is None:
        return None
    if kind not in ("4bit", "8bit"):
        raise TeacherError(f"quantization {kind!r} is not supported (use 4bit, 8bit or leave it unset)")
    if device.type != "cuda":
        raise TeacherError(f"quantization {kind!r} needs a CUDA device (bitsandbytes); the device here is {device.type}")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise TeacherError(f"quantization {kind!r} needs the bitsandbytes package, which is not installed") from None
    from transformers import BitsAndBytesConfig

    if kind == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=compute_dtype, bnb_4bit_quant_type="nf4")
    return BitsAndBytesConfig(load_in_8bit=True)


def placement_kwargs(config: TeacherConfig, device, dtype) -> dict[str, Any]:
    """`from_pretrained` keyword arguments for `device_map` (accelerate places or shards the model, e.g. `auto`
    over every visible GPU) and `quantization` (bitsandbytes; the quantized model goes on `device` unless a
    device_map is given). Empty when neither is set: the caller moves the model to `device` itself."""
    quant = quantization_config(config.quantization, device, dtype)
    kwargs: dict[str, Any] = {}
    if config.device_map or quant is not None:
        kwargs["device_map"] = config.device_map or {"": device.index or 0}
    if quant is not None:
        kwargs["quantization_config"] = quant
    return kwargs


def letter_token_ids(tokenizer, prompt: str, model_name: str, add_special_tokens: bool = False) -> tuple[int, ...]:
    """Each option letter's token id in context: `prompt` + ' X' must add exactly one token to `prompt`."""
    base = tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]
    ids = []
    for letter in LETTERS:
        extended = tokenizer(f"{prompt} {letter}", add_special_tokens=add_special_tokens)["input_ids"]
        if len(extended) != len(base) + 1 or extended[: len(base)] != base:
            pieces = tokenizer.convert_ids_to_tokens(extended[max(0, len(base) - 1):])
            raise TeacherError(
                f"{model_name}: option letter {letter!r} does not encode to exactly one token after the prompt "
                f"(got {pieces}); cannot read its logit at the answer position"
            )
        ids.append(extended[-1])
    if len(set(ids)) != len(ids):
        raise TeacherError(f"{model_name}: option letters share token ids {ids}")
    return tuple(ids)


def letter_output(item: TeacherInput, letter_ids, vocab_logits, hidden) -> TeacherOutput:
    """One sample's output from its next-token logits (torch, [vocab]) and pooled hidden state;
    non-finite values make the output missing, never a guess."""
    letters = vocab_logits[list(letter_ids[: len(item.choices)])].numpy().astype(np.float32)
    hidden = hidden.numpy().astype(np.float32)
    if not np.isfinite(letters).all():
        return TeacherOutput(item.id, None, None, None, "non-finite option logits")
    if not np.isfinite(hidden).all():
        return TeacherOutput(item.id, None, None, None, "non-finite hidden state")
    return TeacherOutput(item.id, [float(x) for x in letters], int(np.argmax(letters)), hidden)


def letter_matrix(batch: list[TeacherInput], letter_ids, vocab_logits):
    """The option letters' logits of each row of `vocab_logits` (torch [B, vocab], autograd kept) as
    [B, max choices]; columns past a sample's own choices are -inf (softmax gives them 0)."""
    import torch

    width = max(len(item.choices) for item in batch)
    letters = vocab_logits[:, list(letter_ids[:width])]
    counts = torch.tensor([len(item.choices) for item in batch], device=letters.device)
    valid = torch.arange(width, device=letters.device)[None, :] < counts[:, None]
    return letters.masked_fill(~valid, float("-inf"))
