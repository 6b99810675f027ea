"""The flamingo teacher's ``idefics`` backend: `IdeficsForVisionText2Text` + `IdeficsProcessor` (transformers)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from cater.teachers.base import TeacherConfig, TeacherError, placement_kwargs
from cater.teachers.flamingo.common import ANSWER_CUE, to_pil

IDEFICS_MODEL_TYPE = "idefics"
IDEFICS_END_OF_UTTERANCE = "<end_of_utterance>"


class IdeficsBackend:
    """IDEFICS (transformers): each frame is one interleaved image of the user turn, in time order. The processor's
    image attention mask lets a token cross-attend to the latest image only, so the question and the answer
    position would see the last frame alone; it is widened so that every token attends to every image before it
    (the question and the answer cue: all frames)."""

    media_tokens = ("<image>", "<fake_token_around_image>", IDEFICS_END_OF_UTTERANCE)

    def __init__(self, config: TeacherConfig, device, dtype):
        from transformers import IdeficsForVisionText2Text, IdeficsProcessor

        model_type = _read_model_type(config.model)
        if model_type != IDEFICS_MODEL_TYPE:
            raise TeacherError(f"{config.model}: model_type is {model_type!r}, but the flamingo teacher's idefics "
                               f"backend needs {IDEFICS_MODEL_TYPE!r}")
        load_kwargs: dict[str, Any] = {"dtype": dtype, **placement_kwargs(config, device, dtype)}
        try:
            self.model = IdeficsForVisionText2Text.from_pretrained(config.model, **load_kwargs)
            self.processor = IdeficsProcessor.from_pretrained(config.model)
        except OSError as exc:
            raise TeacherError(f"{config.model}: cannot load the IDEFICS checkpoint ({exc})") from None
        if "device_map" not in load_kwargs:
            self.model.to(device)
        self.model.eval()
        self.input_device = self.model.device
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            raise TeacherError(f"{config.model}: the tokenizer has no pad token, so batches cannot be padded")
        self.hidden_size = int(self.model.config.hidden_size)

    def prompt(self, question_text: str) -> str:
        """The text after the frames, up to and including the answer cue."""
        return f"{question_text}{IDEFICS_END_OF_UTTERANCE}\nAssistant: {ANSWER_CUE}"

    def encode(self, frames: list[np.ndarray], prompts: list[str]) -> dict:
        sequences = [["User:", *to_pil(clip), prompt] for clip, prompt in zip(frames, prompts)]
        inputs = self.processor(text=sequences, add_end_of_utterance_token=False, padding="longest",
                                return_tensors="pt")
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        mask = inputs["image_attention_mask"]  # [B, tokens, images]: 1 where a token attends to an image
        inputs["image_attention_mask"] = mask.cummax(dim=1).values  # an image, once seen, stays attended
        return {key: value.to(self.input_device) for key, value in inputs.items()}

    def forward(self, inputs: dict):
        """Final normed hidden state and vocabulary logits at each row's last position."""
        import torch

        with torch.inference_mode():
            last, logits = self.last_position(inputs)
        return last.float().cpu(), logits.float().cpu()

    def last_position(self, inputs: dict):
        """(hidden, logits) at each row's last position, on the model's device, with autograd if enabled."""
        out = self.model.model(**inputs, use_cache=False)
        last = out.last_hidden_state[:, -1]
        return last, self.model.lm_head(last)

    def trainable_parameters(self) -> list:
        """All weights, the frozen-by-config language and vision layers included (the tiny demo teachers
        start random, so the IDEFICS recipe's frozen LM would leave nothing to build on)."""
        params = [param for _, param in sorted(self.model.named_parameters(), key=lambda kv: kv[0])]
        for param in params:
            param.requires_grad_(True)
        return params

    def save_pretrained(self, path: Path) -> None:
        self.model.save_pretrained(path)
        self.processor.save_pretrained(path)


def _read_model_type(model: str) -> str | None:
    """model_type from the checkpoint's config.json; a clear TeacherError if there is no checkpoint."""
    path = Path(model)
    if path.exists():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise TeacherError(f"{path}: not a model checkpoint directory (no config.json)")
        try:
            return json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
        except json.JSONDecodeError as exc:
            raise TeacherError(f"{config_file}: malformed JSON ({exc.msg})") from None
    from transformers import PreTrainedConfig

    try:
        config, _ = PreTrainedConfig.get_config_dict(model)
    except Exception as exc:  # OSError and hub errors all mean "not available here"
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise TeacherError(f"{model}: checkpoint not found (no such local directory, and the hub id could not "
                           f"be resolved: {reason})") from None
    return config.get("model_type")
