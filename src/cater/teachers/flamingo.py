"""Flamingo as a teacher, with two implementations of the architecture to choose from.

`TeacherConfig.extra["backend"]` picks one:

- ``idefics`` (default): `IdeficsForVisionText2Text` + `IdeficsProcessor` from transformers, the open
  reproduction of Flamingo (e.g. ``HuggingFaceM4/idefics-9b-instruct``), loaded with `from_pretrained`.
  Prompt, in the family's chat format (the processor adds ``<s>`` and the image tokens)::

      User:<frame 1><frame 2>...<frame T>Question: ...\\nOptions:\\nA. ...\\n[Subtitles: ...\\n]
      Answer with the option's letter.<end_of_utterance>\\nAssistant: Answer:

- ``openflamingo``: the `open_flamingo` package (e.g. ``openflamingo/OpenFlamingo-9B-vitl-mpt7b``). Its
  loader builds the model from an open_clip vision encoder, a causal LM and a checkpoint of the perceiver
  and cross-attention weights, so `config.model` is a directory holding ``openflamingo.json``::

      {"clip_vision_encoder_path": "ViT-L-14", "clip_vision_encoder_pretrained": "openai",
       "lang_encoder_path": "anas-awadalla/mpt-7b", "tokenizer_path": "anas-awadalla/mpt-7b",
       "cross_attn_every_n_layers": 4, "checkpoint": "checkpoint.pt"}

  Relative paths (also after ``local-dir:``) are resolved against that directory. The clip is one media
  item with the frames on its frame axis, as OpenFlamingo feeds video: vision_x is [B, T_img=1, F=frames,
  C, H, W], the prompt one ``<image>`` then the same question text as above ending in ``Answer:``.

Both backends let the question and the answer position attend to every frame (IDEFICS: the image attention
mask widened to all images so far; OpenFlamingo: all frames in one media item).

Both: one forward pass per batch (left-padded), no generation. The scores are the next-token logits of the
option letters (" A", " B", ... as the tokenizer encodes them right after "Answer:") at the last prompt
position; `hard_idx` is their argmax. `hidden` is the language model's final (normed) hidden state at that
same position, as float32. The ground-truth answer is not part of `TeacherInput`, so it cannot leak.

`write_tiny_flamingo` writes a tiny randomly initialised checkpoint in each backend's real format, so tests
and the demo run the same loading code as the 9B models.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from cater.data.frames import uniform_indices
from cater.io import atomic_directory
from cater.teachers.base import (
    LETTERS, Teacher, TeacherConfig, TeacherError, TeacherInput, TeacherOutput, letter_matrix, letter_output, letter_token_ids, options_block, placement_kwargs, resolve_device,
    resolve_dtype,
)

BACKENDS = ("idefics", "openflamingo")
DEFAULT_BACKEND = "idefics"
KNOWN_EXTRA = {"backend", "instruction", "trust_remote_code"}
INSTRUCTION = "Answer with the option's letter."
ANSWER_CUE = "Answer:"

IDEFICS_MODEL_TYPE = "idefics"
IDEFICS_END_OF_UTTERANCE = "<end_of_utterance>"
OPENFLAMINGO_MANIFEST = "openflamingo.json"
OPENFLAMINGO_MEDIA = "<image>"
MANIFEST_REQUIRED = ("clip_vision_encoder_path", "lang_encoder_path", "tokenizer_path", "checkpoint")
MANIFEST_OPTIONAL = {"clip_vision_encoder_pretrained": None, "cross_attn_every_n_layers": 1,
                     "decoder_layers_attr_name": None}
LOCAL_DIR = "local-dir:"


# ----------------------------------------------------------------------------------------------- helpers


def _to_pil(frames: np.ndarray) -> list:
    from PIL import Image

    return [Image.fromarray(np.ascontiguousarray(frame)) for frame in frames]


def _question_text(item: TeacherInput, instruction: str) -> str:
    """Question, lettered options, optional subtitles, instruction and the answer cue (no answer)."""
    lines = [f"Question: {item.question.strip()}", "Options:", options_block(item.choices)]
    if item.subtitles and item.subtitles.strip():
        lines.append(f"Subtitles: {item.subtitles.strip()}")
    lines.append(instruction)
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- backends


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
        sequences = [["User:", *_to_pil(clip), prompt] for clip, prompt in zip(frames, prompts)]
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


class OpenFlamingoBackend:
    """OpenFlamingo (open_flamingo package): the clip is one media item whose frames lie on the frame axis
    (vision_x [B, T_img=1, F=frames, C, H, W]), so the perceiver reads every frame into the media's latents and
    the text after the one `<image>` (question and answer cue) cross-attends to all of them, as OpenFlamingo
    feeds video. With one `<image>` per frame instead, `only_attend_immediate_media` would leave the question
    the last frame alone."""

    media_tokens = (OPENFLAMINGO_MEDIA, "<|endofchunk|>")

    def __init__(self, config: TeacherConfig, device, dtype):
        if config.device_map or config.quantization:
            raise TeacherError("the flamingo teacher's openflamingo backend supports neither device_map nor quantization "
                               "(open_flamingo builds and loads the language model itself); use device and dtype fp16/bf16, "
                               "or the idefics backend")
        try:
            from open_flamingo import create_model_and_transforms
        except ImportError as exc:
            raise TeacherError(f"the openflamingo backend needs the open_flamingo package ({exc})") from None

        manifest = read_openflamingo_manifest(config.model)
        trust = config.extra.get("trust_remote_code", False)
        if not isinstance(trust, bool):
            raise TeacherError(f"teacher option trust_remote_code must be true or false, got {trust!r}")
        if not trust:
            check_no_remote_code(manifest)
        try:
            model, image_processor, tokenizer = create_model_and_transforms(
                clip_vision_encoder_path=manifest["clip_vision_encoder_path"],
                clip_vision_encoder_pretrained=manifest["clip_vision_encoder_pretrained"],
                lang_encoder_path=manifest["lang_encoder_path"],
                tokenizer_path=manifest["tokenizer_path"],
                cross_attn_every_n_layers=manifest["cross_attn_every_n_layers"],
                decoder_layers_attr_name=manifest["decoder_layers_attr_name"],
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise TeacherError(f"{config.model}: cannot build the OpenFlamingo model ({exc})") from None
        _load_openflamingo_checkpoint(model, manifest["checkpoint"])
        self.model = model.to(device=device, dtype=dtype).eval()
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        self.input_device = device
        self.dtype = dtype
        self.hidden_size = int(model.lang_dim)

    def prompt(self, question_text: str) -> str:
        return f"{question_text}\n{ANSWER_CUE}"

    def encode(self, frames: list[np.ndarray], prompts: list[str]) -> dict:
        """Rows grouped by frame count (the frame axis has no mask, so clips of other lengths run apart); each
        group: vision_x [n, 1, F, C, H, W], one `<image>` then the prompt, left-padded."""
        import torch

        groups = []
        for count in sorted({len(clip) for clip in frames}):
            rows = [i for i, clip in enumerate(frames) if len(clip) == count]
            vision = torch.stack([torch.stack([self.image_processor(image) for image in _to_pil(frames[i])]) for i in rows])
            tokens = self.tokenizer([OPENFLAMINGO_MEDIA + prompts[i] for i in rows], padding="longest", return_tensors="pt")
            groups.append({
                "rows": rows,
                "vision_x": vision[:, None].to(device=self.input_device, dtype=self.dtype),  # one media, F frames
                "lang_x": tokens["input_ids"].to(self.input_device),
                "attention_mask": tokens["attention_mask"].to(self.input_device),
            })
        return {"groups": groups, "rows": len(frames)}

    def _image_shape(self) -> tuple[int, int]:
        size = self.model.vision_encoder.image_size
        return tuple(size) if isinstance(size, (tuple, list)) else (size, size)

    def forward(self, inputs: dict):
        """As `Flamingo.forward`, but asking the language model for its hidden states too."""
        import torch

        with torch.inference_mode():
            last, logits = self.last_position(inputs)
        return last.float().cpu(), logits.float().cpu()

    def last_position(self, inputs: dict):
        """(hidden, logits) at each row's last position, on the model's device, with autograd if enabled."""
        import torch

        model = self.model
        parts = []
        for group in inputs["groups"]:
            try:
                self._encode_frames(group["vision_x"])
                model._condition_media_locations(input_ids=group["lang_x"])
                out = model.lang_encoder(input_ids=group["lang_x"], attention_mask=group["attention_mask"],
                                         output_hidden_states=True, use_cache=False)
            finally:
                model.lang_encoder.clear_conditioned_layers()
            parts.append((group["rows"], out.hidden_states[-1][:, -1], out.logits[:, -1]))
        order = torch.tensor([row for rows, _, _ in parts for row in rows]).argsort()
        hidden = torch.cat([h for _, h, _ in parts])[order.to(parts[0][1].device)]
        logits = torch.cat([lg for _, _, lg in parts])[order.to(parts[0][2].device)]
        return hidden, logits

    def _encode_frames(self, vision_x) -> None:
        """`Flamingo._encode_vision_x` for F > 1 frames per media (open_flamingo 2.0.1 asserts F == 1, though its
        perceiver reads a frame axis): the frozen vision encoder on every frame, the perceiver over each media's
        frames together, the result conditioning every cross-attention layer."""
        import torch
        from einops import rearrange

        model = self.model
        b, t, f = vision_x.shape[:3]
        with torch.no_grad():
            tokens = model.vision_encoder(rearrange(vision_x, "b T F c h w -> (b T F) c h w"))[1]
        latents = model.perceiver(rearrange(tokens, "(b T F) v d -> b T F v d", b=b, T=t, F=f))
        for layer in model.lang_encoder._get_decoder_layers():
            layer.condition_vis_x(latents)

    def trainable_parameters(self) -> list:
        """What OpenFlamingo trains and its checkpoint holds: perceiver, gated cross-attention, embeddings."""
        return [param for _, param in sorted(self.model.named_parameters(), key=lambda kv: kv[0])
                if param.requires_grad]

    def save_pretrained(self, path: Path) -> None:
        raise TeacherError("the flamingo teacher's openflamingo backend cannot save a fine-tuned checkpoint yet")


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


def check_no_remote_code(manifest: dict[str, Any]) -> None:
    """open_flamingo's factory always passes trust_remote_code=True to transformers. Unless the teacher
    sets `trust_remote_code: true`, allow only local language-model and tokenizer folders whose configs
    name no code of their own (`auto_map`), so no checkpoint-supplied Python can run."""
    for field in ("lang_encoder_path", "tokenizer_path"):
        folder = Path(manifest[field])
        if not folder.is_dir():
            raise TeacherError(f"openflamingo: {field} {manifest[field]!r} is not a local folder; a hub model may run its "
                               f"own code (open_flamingo loads with trust_remote_code=True). Download it, point "
                               f"{field} at the folder, or set the teacher option trust_remote_code: true if you trust it")
        for name in ("config.json", "tokenizer_config.json"):
            file = folder / name
            if file.is_file():
                try:
                    config = json.loads(file.read_text(encoding="utf-8"))
                except json.JSONDecodeError as exc:
                    raise TeacherError(f"{file}: malformed JSON at line {exc.lineno} ({exc.msg})") from None
                if isinstance(config, dict) and config.get("auto_map"):
                    raise TeacherError(f"{file}: names its own code (auto_map), which open_flamingo would run; set the "
                                       f"teacher option trust_remote_code: true only if you trust this checkpoint")


def read_openflamingo_manifest(model_dir: str | Path) -> dict[str, Any]:
    """Validated `openflamingo.json` with local paths resolved against its directory."""
    root = Path(model_dir)
    manifest_file = root / OPENFLAMINGO_MANIFEST
    if not root.is_dir():
        raise TeacherError(f"{root}: checkpoint not found (the openflamingo backend needs a local directory "
                           f"with {OPENFLAMINGO_MANIFEST})")
    if not manifest_file.is_file():
        raise TeacherError(f"{root}: no {OPENFLAMINGO_MANIFEST} (it names the vision encoder, language model "
                           f"and cross-attention checkpoint; see cater.teachers.flamingo)")
    try:
        raw = json.loads(manifest_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TeacherError(f"{manifest_file}: malformed JSON at line {exc.lineno} ({exc.msg})") from None
    if not isinstance(raw, dict):
        raise TeacherError(f"{manifest_file}: expected a JSON object")
    unknown = set(raw) - set(MANIFEST_REQUIRED) - set(MANIFEST_OPTIONAL)
    if unknown:
        raise TeacherError(f"{manifest_file}: unknown field(s) {sorted(unknown)}")
    missing = [key for key in MANIFEST_REQUIRED if not raw.get(key)]
    if missing:
        raise TeacherError(f"{manifest_file}: missing field(s) {missing}")
    manifest = {**MANIFEST_OPTIONAL, **raw}

    def local(value: str | None) -> str | None:
        if value and not Path(value).is_absolute() and (root / value).exists():
            return str(root / value)
        return value

    clip = manifest["clip_vision_encoder_path"]
    if clip.startswith(LOCAL_DIR):
        clip_dir = Path(local(clip[len(LOCAL_DIR):]))
        if not (clip_dir / "open_clip_config.json").is_file():
            raise TeacherError(f"{manifest_file}: field clip_vision_encoder_path: {clip_dir} has no "
                               f"open_clip_config.json")
        if not any(clip_dir.glob("*.safetensors")) and not any(clip_dir.glob("*.bin")):
            raise TeacherError(f"{manifest_file}: field clip_vision_encoder_path: no weights in {clip_dir}")
        manifest["clip_vision_encoder_path"] = LOCAL_DIR + str(clip_dir)
    manifest["clip_vision_encoder_pretrained"] = local(manifest["clip_vision_encoder_pretrained"])
    manifest["lang_encoder_path"] = local(manifest["lang_encoder_path"])
    manifest["tokenizer_path"] = local(manifest["tokenizer_path"])
    checkpoint = Path(manifest["checkpoint"])
    checkpoint = checkpoint if checkpoint.is_absolute() else root / checkpoint
    if not checkpoint.is_file():
        raise TeacherError(f"{manifest_file}: field checkpoint: {checkpoint} does not exist")
    manifest["checkpoint"] = checkpoint
    return manifest


def _load_openflamingo_checkpoint(model, checkpoint: Path) -> None:
    """Load the perceiver/cross-attention weights; every such weight must be in the file."""
    import torch

    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise TeacherError(f"{checkpoint}: not a readable torch checkpoint ({exc})") from None
    if isinstance(state, dict) and "model_state_dict" in state:  # open_flamingo's training checkpoints
        state = state["model_state_dict"]
    state = {key.removeprefix("module."): value for key, value in state.items()}
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise TeacherError(f"{checkpoint}: weights that this model does not have: {result.unexpected_keys[:5]}")
    by_name = dict(model.named_parameters(remove_duplicate=False))
    loaded = {id(by_name[key]) for key in state if key in by_name}
    required = dict(model.perceiver.named_parameters(prefix="perceiver"))
    required.update(model.lang_encoder.gated_cross_attn_layers.named_parameters(prefix="gated_cross_attn_layers"))
    missing = [name for name, param in required.items() if id(param) not in loaded]
    if missing:
        raise TeacherError(f"{checkpoint}: perceiver/cross-attention weights missing from the checkpoint: "
                           f"{missing[:5]}{' ...' if len(missing) > 5 else ''}")


# ----------------------------------------------------------------------------------------------- teacher


class FlamingoTeacher(Teacher):
    family = "flamingo"

    def __init__(self, config: TeacherConfig):
        super().__init__(config)
        if config.family != self.family:
            raise TeacherError(f"FlamingoTeacher got family {config.family!r}; it only loads 'flamingo'")
        unknown = set(config.extra) - KNOWN_EXTRA
        if unknown:
            raise TeacherError(f"teacher {config.model}: unknown option(s) {sorted(unknown)} for family flamingo "
                               f"(known: {sorted(KNOWN_EXTRA)})")
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
        return self.backend.prompt(_question_text(item, self.instruction))

    def frames(self, item: TeacherInput) -> np.ndarray:
        """The frames given to the model: `num_frames` uniformly sampled, or all stored frames."""
        frames = item.frames
        n = self.config.num_frames
        if n is not None and n != len(frames):
            frames = frames[uniform_indices(len(frames), n)]
        return frames

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


# ----------------------------------------------------------------------------------------------- tiny models

TINY_IMAGE = 32
TINY_PATCH = 8
TINY_HIDDEN = 32
TINY_LAYERS = 2
CLIP_DIR = "clip"
LM_DIR = "lm"
CHECKPOINT_FILE = "checkpoint.pt"


GATE_PARAMS = ("attn_gate", "ff_gate", "alpha_cross_attn", "alpha_dense")  # OpenFlamingo, IDEFICS


def _seeded_init(named_params, seed: int) -> None:
    """Fill each (name, parameter) from one seeded generator, in name order, at a scale giving O(1) logits."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(named_params, key=lambda kv: kv[0]):
            if param.ndim == 1 and ("norm" in name or name.endswith("ln_1.weight") or name.endswith("ln_2.weight")
                                    or name.endswith(("ln_pre.weight", "ln_post.weight"))):
                param.fill_(1.0)
            elif name.endswith(GATE_PARAMS):
                param.fill_(1.0)  # open the tanh gates, so the frames reach the language model
            elif param.ndim <= 1 or param.shape[-1] == 1:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)  # biases and other vectors
            else:
                fan_in = int(np.prod(param.shape[1:]))
                embedding = "embed" in name or "wte" in name or "latents" in name or "class_embedding" in name
                param.copy_(torch.randn(param.shape, generator=generator) * (1.0 if embedding else fan_in ** -0.5))


def _write_tiny_idefics(path: Path, seed: int) -> None:
    from transformers import IdeficsConfig, IdeficsForVisionText2Text, IdeficsImageProcessor, IdeficsProcessor

    from cater.teachers.tiny_tokenizers import llama_sentencepiece

    # IDEFICS-9B's tokenizer is LLaMA's SentencePiece with <end_of_utterance> and the two image tokens added;
    # the image tokens come last, in the decoupled "additional" embedding
    image_specials = ["<fake_token_around_image>", "<image>"]
    tokenizer, sentencepiece_model = llama_sentencepiece((IDEFICS_END_OF_UTTERANCE, *image_specials), pad_token="<unk>")
    processor = IdeficsProcessor(IdeficsImageProcessor(image_size=TINY_IMAGE), tokenizer)
    config = IdeficsConfig(
        vocab_size=len(tokenizer) - len(image_specials), additional_vocab_size=len(image_specials),
        hidden_size=TINY_HIDDEN, intermediate_size=2 * TINY_HIDDEN, num_hidden_layers=TINY_LAYERS,
        num_attention_heads=2, max_position_embeddings=1024, cross_layer_interval=1,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, use_resampler=True,
        vision_config=dict(embed_dim=TINY_HIDDEN, image_size=TINY_IMAGE, patch_size=TINY_PATCH, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=2 * TINY_HIDDEN),
        perceiver_config=dict(use_resampler=True, resampler_n_latents=4, resampler_depth=1, resampler_n_heads=2,
                              resampler_head_dim=16),
    )
    model = IdeficsForVisionText2Text(config)
    _seeded_init(model.named_parameters(), seed)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    (path / "tokenizer.model").write_bytes(sentencepiece_model)


def _write_tiny_openflamingo(path: Path, seed: int) -> None:
    import open_clip
    import torch
    from open_flamingo import create_model_and_transforms
    from safetensors.torch import save_file
    from transformers import MptConfig, MptForCausalLM

    from cater.teachers.tiny_tokenizers import gpt_neox_bpe

    # vision encoder: an open_clip model in a local-dir (config + weights)
    clip_cfg = {"embed_dim": TINY_HIDDEN,
                "vision_cfg": {"image_size": TINY_IMAGE, "patch_size": TINY_PATCH, "width": TINY_HIDDEN,
                               "layers": 1, "head_width": 16},
                "text_cfg": {"context_length": 8, "vocab_size": 64, "width": TINY_HIDDEN, "heads": 2, "layers": 1}}
    (path / CLIP_DIR).mkdir()
    (path / CLIP_DIR / "open_clip_config.json").write_text(json.dumps({"model_cfg": clip_cfg}, indent=2))
    clip = open_clip.CLIP(**clip_cfg)
    _seeded_init(clip.named_parameters(), seed)
    save_file(clip.state_dict(), path / CLIP_DIR / "open_clip_model.safetensors")

    # language model: MPT (as in OpenFlamingo-9B-vitl-mpt7b) with GPT-NeoX's tokenizer class (byte-level BPE);
    # the loader adds <|endofchunk|>, <image> and <PAD> and resizes the embeddings, as for the real model
    tokenizer = gpt_neox_bpe()
    lm_config = MptConfig(vocab_size=len(tokenizer), d_model=TINY_HIDDEN, n_heads=2, n_layers=TINY_LAYERS,
                          expansion_ratio=2, max_seq_len=1024, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id)
    lm = MptForCausalLM(lm_config)
    _seeded_init(lm.named_parameters(), seed + 1)
    lm.save_pretrained(path / LM_DIR)
    tokenizer.save_pretrained(path / LM_DIR)

    manifest = {"clip_vision_encoder_path": f"{LOCAL_DIR}{CLIP_DIR}", "clip_vision_encoder_pretrained": None,
                "lang_encoder_path": LM_DIR, "tokenizer_path": LM_DIR, "cross_attn_every_n_layers": 1,
                "checkpoint": CHECKPOINT_FILE}
    resolved = dict(manifest, clip_vision_encoder_path=f"{LOCAL_DIR}{path / CLIP_DIR}",
                    lang_encoder_path=str(path / LM_DIR), tokenizer_path=str(path / LM_DIR))
    resolved.pop("checkpoint")
    model, _, _ = create_model_and_transforms(**resolved)
    # the checkpoint holds what OpenFlamingo trains: perceiver, gated cross-attention, input embeddings
    trained = {name: param for name, param in model.named_parameters() if param.requires_grad}
    _seeded_init(trained.items(), seed + 2)
    torch.save({name: param.detach().clone() for name, param in trained.items()}, path / CHECKPOINT_FILE)
    (path / OPENFLAMINGO_MANIFEST).write_text(json.dumps(manifest, indent=2))


def write_tiny_flamingo(path: str | Path, seed: int = 0, backend: str | None = DEFAULT_BACKEND) -> Path:
    """Write a tiny random checkpoint of `backend` (idefics | openflamingo) to `path`, deterministic in `seed`.

    idefics: config.json + model.safetensors + processor/tokenizer files (load with from_pretrained).
    openflamingo: openflamingo.json + clip/ (open_clip local-dir) + lm/ (MPT + tokenizer) + checkpoint.pt.
    The directory appears complete or not at all (it is written under a temporary name, then renamed).
    """
    backend = backend or DEFAULT_BACKEND
    if backend not in BACKENDS:
        raise TeacherError(f"unknown flamingo backend {backend!r} (use one of {', '.join(BACKENDS)})")
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(path) as staging, torch.random.fork_rng(devices=[]):  # keep callers' RNG state
        torch.manual_seed(seed)
        if backend == "idefics":
            _write_tiny_idefics(staging, seed)
        else:
            _write_tiny_openflamingo(staging, seed)
    return path
