"""Video-LLaVA as a teacher: one batched forward pass per batch, option-letter logits at the answer position.

The model is loaded with `VideoLlavaForConditionalGeneration.from_pretrained` and the prompt follows the
checkpoint's chat format: `USER: <video>\\n{question}\\n{options}\\nAnswer with the option's letter. ASSISTANT:`
(through the processor's chat template when the checkpoint ships one). The scores of a sample are the
next-token logits of the option letters (" A", " B", ... as the tokenizer encodes them right after
"ASSISTANT:") at the last prompt position. The pooled hidden state is the final (normed) hidden state of
the language model at that same position: the last non-pad token, since batches are left-padded.

`cater.testing.tiny.videollava` writes a tiny randomly initialised checkpoint in the real format, so tests and
the demo exercise the same loading code as the 7B model.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cater.teachers.base import (
    LETTERS, Teacher, TeacherConfig, TeacherError, TeacherInput, TeacherOutput, check_extra, letter_matrix, letter_output,
    letter_token_ids, options_block, placement_kwargs, resolve_device, resolve_dtype,
)

MODEL_TYPE = "video_llava"
INSTRUCTION = "Answer with the option's letter."
KNOWN_EXTRA = {"revision", "attn_implementation", "instruction"}


# ----------------------------------------------------------------------------------------------- loading


def read_checkpoint_config(model: str, revision: str | None = None) -> dict[str, Any]:
    """The checkpoint's config.json as a dict; a clear TeacherError if it cannot be found."""
    path = Path(model)
    if path.exists():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise TeacherError(f"{path}: not a model checkpoint directory (no config.json)")
        try:
            return json.loads(config_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise TeacherError(f"{config_file}: malformed JSON ({exc.msg})") from None
    from transformers import PreTrainedConfig

    try:
        config, _ = PreTrainedConfig.get_config_dict(model, revision=revision)
    except Exception as exc:  # OSError, EnvironmentError, HF hub errors: all mean "not available here"
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise TeacherError(
            f"{model}: checkpoint not found (no such local directory, and the hub id could not be resolved: {reason})"
        ) from None
    return config


# ----------------------------------------------------------------------------------------------- teacher


class VideoLlavaTeacher(Teacher):
    family = "videollava"

    def __init__(self, config: TeacherConfig):
        super().__init__(config)
        from transformers import VideoLlavaForConditionalGeneration, VideoLlavaProcessor

        check_extra(config, KNOWN_EXTRA, self.family)
        revision = config.extra.get("revision")
        checkpoint = read_checkpoint_config(config.model, revision)
        model_type = checkpoint.get("model_type")
        if model_type != MODEL_TYPE:
            raise TeacherError(f"{config.model}: model_type is {model_type!r}, but family videollava needs {MODEL_TYPE!r}")

        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype)
        load_kwargs: dict[str, Any] = {"dtype": self.dtype, "revision": revision,
                                       **placement_kwargs(config, self.device, self.dtype)}
        if config.extra.get("attn_implementation"):
            load_kwargs["attn_implementation"] = config.extra["attn_implementation"]
        try:
            self.model = VideoLlavaForConditionalGeneration.from_pretrained(config.model, **load_kwargs)
            self.processor = VideoLlavaProcessor.from_pretrained(config.model, revision=revision)
        except OSError as exc:
            raise TeacherError(f"{config.model}: cannot load the Video-LLaVA checkpoint ({exc})") from None
        if "device_map" not in load_kwargs:
            self.model.to(self.device)
        self.model.eval()
        self.input_device = self.model.device
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            raise TeacherError(f"{config.model}: the tokenizer has no pad token, so batches cannot be padded")
        self.instruction = config.extra.get("instruction", INSTRUCTION)
        self.hidden_size = int(self.model.config.text_config.hidden_size)
        self.letter_ids = self._letter_token_ids()

    # -- prompt ---------------------------------------------------------------------------------------

    def prompt(self, item: TeacherInput) -> str:
        """The full prompt up to and including 'ASSISTANT:'. Never contains the answer."""
        lines = []
        if item.subtitles:
            lines.append(f"Subtitles: {item.subtitles.strip()}")
        lines += [item.question.strip(), options_block(item.choices), self.instruction]
        body = "\n".join(lines)
        if self.processor.chat_template:
            messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": body}]}]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return f"USER: {self.processor.video_token}\n{body} ASSISTANT:"

    def _letter_token_ids(self) -> tuple[int, ...]:
        """Each letter's token id after the prompt (special tokens as the processor adds them)."""
        probe = TeacherInput("probe", np.zeros((1, 1, 1, 3), np.uint8), "Which option?", list(LETTERS))
        return letter_token_ids(self.tokenizer, self.prompt(probe), self.config.model, add_special_tokens=True)

    def _encode(self, items: list[TeacherInput]):
        inputs = self.processor(
            text=[self.prompt(item) for item in items],
            videos=[self.select_frames(item.frames) for item in items],
            padding=True,
            return_tensors="pt",
        )
        return {k: v.to(self.input_device) for k, v in inputs.items()}

    def _forward(self, inputs: dict):
        """Final hidden state and vocabulary logits at the last position of each (left-padded) row."""
        with torch.inference_mode():
            last, logits = self._last_position(inputs)
        return last.float().cpu(), logits.float().cpu()

    def _last_position(self, inputs: dict):
        """(final hidden state, vocabulary logits) at each row's last position, on the model's device,
        with autograd if it is enabled (`_forward` runs this under inference mode)."""
        mask = inputs["attention_mask"]
        # positions count real tokens only, so a left-padded row is computed like an unpadded one
        position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
        out = self.model.model(
            input_ids=inputs["input_ids"],
            attention_mask=mask,
            position_ids=position_ids,
            pixel_values_videos=inputs["pixel_values_videos"].to(self.model.dtype),
            use_cache=False,
        )
        last = out.last_hidden_state[:, -1]
        return last, self.model.lm_head(last)

    # -- scoring --------------------------------------------------------------------------------------

    def score(self, batch: list[TeacherInput]) -> list[TeacherOutput]:
        for item in batch:
            self.check_input(item)
        results: dict[int, TeacherOutput] = {}
        # one forward pass per group of equal frame count (normally the whole batch)
        groups: dict[int, list[int]] = {}
        for i, item in enumerate(batch):
            groups.setdefault(len(self.select_frames(item.frames)), []).append(i)
        for indices in groups.values():
            items = [batch[i] for i in indices]
            hidden, logits = self._forward(self._encode(items))
            for row, (i, item) in enumerate(zip(indices, items)):
                results[i] = self._output(item, logits[row], hidden[row])
        return [results[i] for i in range(len(batch))]

    def _output(self, item: TeacherInput, vocab_logits, hidden) -> TeacherOutput:
        return letter_output(item, self.letter_ids, vocab_logits, hidden)

    # -- fine-tuning ----------------------------------------------------------------------------------

    def letter_logits(self, batch: list[TeacherInput]) -> torch.Tensor:
        """As `score`, but differentiable: the letter logits [B, max choices] (float32, -inf past a sample's
        choices), in one forward pass per group of equal frame count."""
        for item in batch:
            self.check_input(item)
        groups: dict[int, list[int]] = {}
        for i, item in enumerate(batch):
            groups.setdefault(len(self.select_frames(item.frames)), []).append(i)
        rows: list = [None] * len(batch)
        for indices in groups.values():
            _, logits = self._last_position(self._encode([batch[i] for i in indices]))
            for row, i in enumerate(indices):
                rows[i] = logits[row]
        return letter_matrix(batch, self.letter_ids, torch.stack(rows).float())

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Everything: vision towers, projector and language model (the tiny demo teachers start random)."""
        params = [param for _, param in sorted(self.model.named_parameters(), key=lambda kv: kv[0])]
        for param in params:
            param.requires_grad_(True)
        return params

    def save_pretrained(self, path: str | Path) -> None:
        """The model and processor with `save_pretrained`, loadable by this class unchanged."""
        self.model.save_pretrained(path)
        self.processor.save_pretrained(path)

    def score_per_option(self, batch: list[TeacherInput]) -> list[TeacherOutput]:
        """The older, slower way, kept as a reference: C+1 unbatched passes for C options.

        One pass over the prompt gives the hidden state; one pass per option with that option's letter
        appended gives the log-probability of the letter at the answer position. `choice_logits` holds
        these log-probabilities (they equal the one-pass logits up to a per-sample constant).
        """
        outputs = []
        for item in batch:
            self.check_input(item)
            inputs = self._encode([item])
            hidden, _ = self._forward(inputs)
            logprobs = []
            for letter_id in self.letter_ids[: len(item.choices)]:
                appended = dict(inputs)
                letter = torch.full((1, 1), letter_id, dtype=inputs["input_ids"].dtype, device=self.input_device)
                appended["input_ids"] = torch.cat([inputs["input_ids"], letter], dim=1)
                appended["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(letter)], dim=1)
                with torch.inference_mode():
                    logits = self.model(
                        input_ids=appended["input_ids"],
                        attention_mask=appended["attention_mask"],
                        pixel_values_videos=appended["pixel_values_videos"].to(self.model.dtype),
                        use_cache=False,
                    ).logits
                answer_position = logits[0, -2].float()  # predicts the appended letter
                logprobs.append(torch.log_softmax(answer_position, dim=-1)[letter_id].item())
            # the shared non-finite guard, on the per-option scores (option i's score at index i)
            outputs.append(letter_output(item, range(len(logprobs)), torch.tensor(logprobs), hidden[0]))
        return outputs
