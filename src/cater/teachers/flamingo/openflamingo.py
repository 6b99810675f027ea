"""The flamingo teacher's ``openflamingo`` backend (the `open_flamingo` package): the model, its manifest
(`openflamingo.json`), the remote-code check and the perceiver/cross-attention checkpoint."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from cater.teachers.base import TeacherConfig, TeacherError
from cater.teachers.flamingo.common import ANSWER_CUE, to_pil

OPENFLAMINGO_MANIFEST = "openflamingo.json"
OPENFLAMINGO_MEDIA = "<image>"
MANIFEST_REQUIRED = ("clip_vision_encoder_path", "lang_encoder_path", "tokenizer_path", "checkpoint")
MANIFEST_OPTIONAL = {"clip_vision_encoder_pretrained": None, "cross_attn_every_n_layers": 1,
                     "decoder_layers_attr_name": None}
LOCAL_DIR = "local-dir:"


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
            vision = torch.stack([torch.stack([self.image_processor(image) for image in to_pil(frames[i])]) for i in rows])
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
