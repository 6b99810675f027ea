"""`hf`: a local text-only causal LM rewrites a fixed visual summary into event and frame prompts.

A text LLM cannot see, so each video is first given a fixed, per-frame *visual summary*:
- with `summary_from: <path to another generator's prompts .jsonl>` (e.g. data/prompts/annotations.jsonl),
  the frame-level prompts of that generator (`summary_field: frames`, default) or its event prompts, as
  the sentences covering each frame (`summary_field: events`: the seed's `--source_prompt_field
  event_prompts`); a video missing there is a PromptError (summaries of two kinds are never mixed in one run);
- otherwise a deterministic summary computed from the pixels of each sampled frame: brightness,
  the background colour, up to two other dominant colours with where they are and where they
  moved since the previous frame, and how much the frame changed (`visual_summary`).

The summary and the questions (never choices, never answers) go through the model's chat template;
decoding is greedy (`temperature: 0`, default) or sampled at `temperature` with a generator seeded by
(`seed`, the prompt), so a sampled rewrite is the same on every run and in any order; at most
`max_new_tokens` long. The answer is parsed as JSON
(`{"events": [...], "frames": [...]}`) if it holds such an object, else as numbered or bulleted lists
under "Events" and "Frames" headings. Anything else, or a wrong frame count, is that video's
PromptError with the reason; nothing is filled in.

Generator ablation, in params (model ids or local paths):
    vicuna:  {backend: hf, model: lmsys/vicuna-7b-v1.5, chat_template: vicuna}
    mistral: {backend: hf, model: mistralai/Mistral-7B-Instruct-v0.2}
    llama3:  {backend: hf, model: meta-llama/Meta-Llama-3-8B-Instruct}
Vicuna's tokenizer ships no chat template: `chat_template: vicuna` selects the built-in one (any
other string is used as a Jinja template). Templates that reject a system turn (Mistral) get the
instructions prepended to the user turn.

A checkpoint's own Python code (`auto_map` in its config) never runs unless the generator sets
`trust_remote_code: true` (default false, passed explicitly to `from_pretrained`, so transformers never
asks at a terminal either); review that code before turning it on.

Generated texts are cached like API responses (response_cache.py), keyed by the model's identity
(id, revision, and for a local directory a digest of each file: whole files up to 64 MiB, size plus
first and last MiB above), the rendered prompt and the generation settings, so a rerun loads no
model at all.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from cater.io import file_fingerprint, read_jsonl, stable_hash
from cater.prompts.base import (PromptBackend, PromptError, PromptRequest, VideoPrompts, event_text_per_frame, spread_events,
                                subtitle_lines)
from cater.prompts.response_cache import ResponseCache, request_key

VICUNA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}USER: {{ m['content'] }}\n"
    "{% else %}ASSISTANT: {{ m['content'] }}{{ eos_token }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
TEMPLATES = {"vicuna": VICUNA_TEMPLATE}
SUMMARY_FIELDS = ("frames", "events")  # which prompts of summary_from are rewritten

SYSTEM = (
    "You turn a frame-by-frame description of a short video into prompts for a video "
    "question-answering model. Write the events in the order they happen, one short sentence "
    "each, and one short sentence per frame. Do not answer the questions."
)

# ---- the fixed visual summary ---------------------------------------------------------------

PALETTE = {
    "black": (0, 0, 0), "gray": (128, 128, 128), "white": (250, 250, 250), "red": (220, 40, 40),
    "orange": (240, 140, 30), "yellow": (230, 210, 40), "green": (40, 190, 60), "cyan": (40, 200, 210),
    "blue": (50, 80, 230), "purple": (140, 60, 180), "brown": (130, 80, 40), "pink": (240, 130, 180),
}
_NAMES = list(PALETTE)
_RGB = np.array([PALETTE[n] for n in _NAMES], dtype=np.float32)


def _colour_map(frame: np.ndarray) -> np.ndarray:
    """Nearest palette index per pixel of a frame subsampled to at most ~64 px a side."""
    step = max(1, max(frame.shape[:2]) // 64)
    small = frame[::step, ::step].astype(np.float32)
    distances = ((small[:, :, None, :] - _RGB[None, None]) ** 2).sum(-1)
    return distances.argmin(-1)


def _where(x: float, y: float) -> str:
    row = "top" if y < 1 / 3 else "bottom" if y > 2 / 3 else "middle"
    col = "left" if x < 1 / 3 else "right" if x > 2 / 3 else "centre"
    return "centre" if (row, col) == ("middle", "centre") else f"{row} {col}" if row != "middle" else f"middle {col}"


def _blobs(labels: np.ndarray, background: int) -> dict[str, tuple[float, float]]:
    """Up to two non-background colours covering >= 1% of the frame -> their centroid (x, y) in [0, 1]."""
    h, w = labels.shape
    counts = np.bincount(labels.ravel(), minlength=len(_NAMES))
    counts[background] = 0
    found = {}
    for index in np.argsort(-counts, kind="stable")[:2]:
        if counts[index] < 0.01 * h * w:
            break
        ys, xs = np.nonzero(labels == index)
        found[_NAMES[index]] = ((xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h)
    return found


def _moved(before: tuple[float, float], after: tuple[float, float]) -> str | None:
    dx, dy = after[0] - before[0], after[1] - before[1]
    if max(abs(dx), abs(dy)) < 0.05:
        return None
    if abs(dx) >= abs(dy):
        return "moved right" if dx > 0 else "moved left"
    return "moved down" if dy > 0 else "moved up"


def visual_summary(frames: np.ndarray, times: list[float]) -> list[str]:
    """One deterministic sentence per frame from its pixels (brightness, colours, places, motion)."""
    sentences = []
    previous_blobs: dict[str, tuple[float, float]] = {}
    previous = None
    for i, (frame, t) in enumerate(zip(frames, times)):
        labels = _colour_map(frame)
        background = int(np.bincount(labels.ravel(), minlength=len(_NAMES)).argmax())
        luma = float((frame.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).mean())
        light = "dark" if luma < 60 else "dim" if luma < 120 else "bright" if luma < 190 else "very bright"
        blobs = _blobs(labels, background)
        parts = []
        for name, (x, y) in blobs.items():
            motion = _moved(previous_blobs[name], (x, y)) if name in previous_blobs else None
            parts.append(f"{name} at the {_where(x, y)}" + (f" ({motion})" if motion else ""))
        text = f"Frame {i + 1} at {t:.2f} s: {light}, mostly {_NAMES[background]}"
        text += "; " + ", ".join(parts) if parts else "; nothing else visible"
        if previous is not None:
            change = float(np.abs(frame.astype(np.int16) - previous.astype(np.int16)).mean()) / 255
            text += "; " + ("no visible change" if change < 0.005 else "small change" if change < 0.05 else "large change")
        sentences.append(text + ".")
        previous_blobs, previous = blobs, frame
    return sentences


# ---- parsing the model's answer -------------------------------------------------------------

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


# ---- the backend ----------------------------------------------------------------------------


class HFBackend(PromptBackend):
    name = "hf"

    def __init__(self, model: str, cache_dir, summary_from: str | None = None, chat_template: str | None = None,
                 max_new_tokens: int = 384, dtype: str = "auto", device: str = "auto", revision: str | None = None,
                 trust_remote_code: bool = False, summary_field: str = "frames", temperature: float = 0.0, seed: int = 0,
                 use_subtitles: bool = False):
        if not isinstance(model, str) or not model:
            raise ValueError("model must be a model id or a local path")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ValueError(f"dtype must be auto, float32, float16 or bfloat16, got {dtype!r}")
        if not isinstance(trust_remote_code, bool):
            raise ValueError(f"trust_remote_code must be true or false, got {trust_remote_code!r}")
        self.trust_remote_code = trust_remote_code
        if summary_field not in SUMMARY_FIELDS:
            raise ValueError(f"summary_field must be one of {SUMMARY_FIELDS}, got {summary_field!r}")
        if summary_field != "frames" and not summary_from:
            raise ValueError("summary_field selects a field of summary_from's rows; set summary_from too")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature < 0:
            raise ValueError(f"temperature must be a number >= 0 (0: greedy), got {temperature!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.summary_field, self.temperature, self.seed = summary_field, float(temperature), seed
        if not isinstance(use_subtitles, bool):
            raise ValueError(f"use_subtitles must be true or false, got {use_subtitles!r}")
        self.use_subtitles = use_subtitles
        self.model_id, self.revision, self.max_new_tokens = model, revision, max_new_tokens
        self.dtype, self.device_name = dtype, device
        self.template = TEMPLATES.get(chat_template, chat_template) if chat_template else None
        self.summary_from = summary_from
        self._summaries = self._read_summaries(Path(summary_from), summary_field) if summary_from else None
        self.cache = ResponseCache(cache_dir)
        self._model = self._tokenizer = None
        self._identity_cache: dict[str, Any] | None = None
        self.generations = 0  # texts generated by the model in this process (cache misses)

    @staticmethod
    def _read_summaries(path: Path, field: str = "frames") -> dict[str, list[str]]:
        """Per video, one summary sentence per frame: the frame prompts, or the event prompts covering each frame."""
        if not path.exists():
            raise FileNotFoundError(f"{path}: summary_from prompts file not found (run that generator first)")
        summaries = {}
        for lineno, row in enumerate(read_jsonl(path), start=1):
            if not isinstance(row.get("video_id"), str) or not isinstance(row.get("frames"), list):
                raise ValueError(f"{path}:{lineno}: expected fields 'video_id' (str) and 'frames' (list)")
            if field == "events":
                events = row.get("events")
                if not isinstance(events, list) or not all(isinstance(e, dict) and "text" in e for e in events):
                    raise ValueError(f"{path}:{lineno}: field 'events' must be a list of {{text, start_frame, end_frame}}")
                summaries[row["video_id"]] = event_text_per_frame(events, len(row["frames"]))
            else:
                summaries[row["video_id"]] = row["frames"]
        return summaries

    def summary(self, request: PromptRequest) -> list[str]:
        if self._summaries is None:
            return visual_summary(request.frames, request.frame_times)
        if request.video_id not in self._summaries:
            raise PromptError(f"no frame prompts for this video in {self.summary_from}")
        summary = self._summaries[request.video_id]
        if len(summary) != len(request.frame_times):
            raise PromptError(f"{self.summary_from} has {len(summary)} frame prompts, the video {len(request.frame_times)} frames")
        return summary

    def messages(self, request: PromptRequest) -> list[dict[str, str]]:
        return [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": user_message(self.summary(request), request.questions,
                                                         request.subtitles if self.use_subtitles else None)}]

    def prompt_text(self, request: PromptRequest) -> str:
        """The exact text the model reads for `request` (chat template applied)."""
        self._load()
        return self._render(self.messages(request))

    def generate(self, requests: list[PromptRequest]) -> list[VideoPrompts | PromptError]:
        return [self._one(request) for request in requests]

    def _one(self, request: PromptRequest) -> VideoPrompts | PromptError:
        n = len(request.frame_times)
        try:
            prompt = self.prompt_text(request)
            settings = {"backend": "hf", "model": self._identity(), "prompt": prompt,
                        "max_new_tokens": self.max_new_tokens, "dtype": self.dtype}
            if self.temperature > 0:  # greedy keys stay as they were
                settings.update(temperature=self.temperature, seed=self.seed)
            key = request_key(settings)
            cached = self.cache.get(key)
            text = cached["text"] if cached is not None else self._generate(prompt)
            events, frames = parse_generation(text, n)
        except PromptError as exc:
            return PromptError(f"video {request.video_id}: {exc}")
        if cached is None:
            self.cache.put(key, {"backend": "hf", "model": self.model_id, "text": text})
        return VideoPrompts(video_id=request.video_id, events=spread_events(events, n), frames=frames)

    # ---- model ----

    def _load(self) -> None:
        """Tokenizer now (rendering needs it); the model itself only at the first cache miss."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model_id, revision=self.revision,
                                                            trust_remote_code=self.trust_remote_code)
            if self.template is None and not self._tokenizer.chat_template:
                raise ValueError(f"the tokenizer of {self.model_id} has no chat template; set chat_template "
                                 f"(one of {sorted(TEMPLATES)} or a Jinja string)")

    def _model_on_device(self):
        if self._model is None:
            import torch
            from transformers import AutoModelForCausalLM

            dtype = "auto" if self.dtype == "auto" else getattr(torch, self.dtype)
            device = self.device_name
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            try:
                self._model = AutoModelForCausalLM.from_pretrained(self.model_id, revision=self.revision, dtype=dtype,
                                                                   trust_remote_code=self.trust_remote_code)
            except ValueError as exc:
                if self.trust_remote_code or "trust_remote_code" not in str(exc):
                    raise
                raise ValueError(f"{self.model_id}: the checkpoint needs its own Python code (auto_map); it runs only "
                                 f"with trust_remote_code: true on this generator (review the code first)") from exc
            self._model.to(device).eval()
        return self._model

    def _render(self, messages: list[dict[str, str]]) -> str:
        from jinja2.exceptions import TemplateError

        kwargs = {"tokenize": False, "add_generation_prompt": True, "chat_template": self.template}
        try:
            return self._tokenizer.apply_chat_template(messages, **kwargs)
        except TemplateError:  # no system turn allowed: fold the instructions into the user turn
            merged = [{"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}]
            return self._tokenizer.apply_chat_template(merged, **kwargs)

    def _generate(self, prompt: str) -> str:
        import torch

        model = self._model_on_device()
        tokenizer = self._tokenizer
        encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        sampling = {}
        if self.temperature > 0:
            torch.manual_seed(int(stable_hash([self.seed, prompt])[:15], 16))  # per prompt: independent of order
            sampling = {"do_sample": True, "temperature": self.temperature}
        else:
            sampling = {"do_sample": False}
        with torch.no_grad():
            out = model.generate(**encoded, max_new_tokens=self.max_new_tokens, pad_token_id=pad, **sampling)
        self.generations += 1
        return tokenizer.decode(out[0, encoded["input_ids"].shape[1]:], skip_special_tokens=True)

    def _identity(self) -> dict[str, Any]:
        if self._identity_cache is None:
            identity: dict[str, Any] = {"id": self.model_id, "revision": self.revision}
            path = Path(self.model_id)
            if path.is_dir():
                identity["files"] = sorted((p.name, file_fingerprint(p)) for p in path.iterdir() if p.is_file())
            self._identity_cache = identity
        return self._identity_cache


# ---- a tiny model for tests and the demo ------------------------------------------------------

TINY_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def write_tiny_causal_lm(path: str | Path, seed: int = 0, script: list[str] | None = None) -> Path:
    """Write a tiny LlamaForCausalLM + byte-level BPE tokenizer with a chat template to `path`.

    Without `script` the weights are random (the output is random text). With `script` (a list of
    distinct text pieces) the model is wired to answer any prompt with exactly those pieces, then
    end of sequence: the pieces become tokens of their own, the attention and MLP outputs are zeroed
    so each position sees only its own token, and the output head maps each piece to the next.
    Either way it is saved with `save_pretrained` and loads through `from_pretrained`.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|assistant|>"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = [SYSTEM, user_message(["a red shape at the top left"], ["What appeared first?"]), *PALETTE]
    trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", additional_special_tokens=["<|assistant|>"])
    if script:
        if len(set(script)) != len(script):
            raise ValueError("script pieces must be distinct (each becomes one token with one successor)")
        tokenizer.add_tokens(script)
    tokenizer.chat_template = TINY_TEMPLATE
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    if script:
        _wire_script(model, [tokenizer.convert_tokens_to_ids("<|assistant|>")]
                     + tokenizer.convert_tokens_to_ids(script) + [tokenizer.eos_token_id])
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(path)
    model.save_pretrained(path)
    return path


def _wire_script(model, chain: list[int]) -> None:
    """Make greedy decoding follow `chain` token by token (see write_tiny_causal_lm)."""
    import torch

    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed = model.model.embed_tokens.weight
        head = model.lm_head.weight
        head.normal_(0.0, 0.01)
        for current, following in zip(chain, chain[1:]):
            direction = embed[current] / embed[current].norm()
            head[following] += 50.0 * direction
