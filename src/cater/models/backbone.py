"""The frozen CLIP dual encoder (open_clip, or a local HF transformers `CLIPModel`), exposing token-level features.

`frame_features` gives, per image, the projected CLS vector (identical to `encode_image` /
`get_image_features`) and the projected patch tokens; `text_features` gives, per string, the projected
pooled vector (identical to `encode_text` / `get_text_features`) and the projected features of every
token up to and including end-of-text. `load_backbone` picks the class by `BackboneSpec.library`.
Model configs shipped with the repo (e.g. `cater-tiny`) live in `model_configs/` and are
registered with open_clip, so `create_model` builds them like any built-in architecture.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cater.choices import BACKBONE_LIBRARIES

CONFIG_DIR = Path(__file__).with_name("model_configs")


def register_model_configs() -> None:
    import open_clip

    if "cater-tiny" not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)


@dataclass
class BackboneSpec:
    name: str = "cater-tiny"  # an open_clip architecture, e.g. ViT-B-16 (informational for transformers)
    pretrained: str | None = None  # None = random init from `seed`; "openai"; a local checkpoint path (transformers: a directory)
    seed: int = 0
    library: str = "open_clip"  # one of BACKBONE_LIBRARIES


def load_backbone(spec: BackboneSpec, device: str | torch.device = "cpu") -> "FrozenBackbone | FrozenHFCLIP":
    """The frozen backbone class for `spec.library`."""
    classes = {"open_clip": FrozenBackbone, "transformers": FrozenHFCLIP}
    if spec.library not in classes:
        raise ValueError(f"unknown backbone library {spec.library!r} (expected one of {', '.join(BACKBONE_LIBRARIES)})")
    return classes[spec.library](spec, device=device)


def preprocess_frames(frames, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> normalized float [B, 3, S, S]: short side resized to S (bicubic, antialias), centre crop."""
    x = torch.as_tensor(frames, device=mean.device).permute(0, 3, 1, 2).float() / 255.0
    h, w = x.shape[-2:]
    s = size
    if min(h, w) != s:
        scale = s / min(h, w)
        x = F.interpolate(x, size=(max(s, round(h * scale)), max(s, round(w * scale))), mode="bicubic", antialias=True, align_corners=False)
    h, w = x.shape[-2:]
    top, left = (h - s) // 2, (w - s) // 2
    x = x[..., top : top + s, left : left + s]
    return (x - mean) / std


class FrozenBackbone(torch.nn.Module):
    def __init__(self, spec: BackboneSpec, device: str | torch.device = "cpu"):
        super().__init__()
        import open_clip

        register_model_configs()
        if spec.name not in open_clip.list_models():
            raise ValueError(f"unknown open_clip architecture {spec.name!r}")
        if spec.pretrained and spec.pretrained != "openai" and not Path(spec.pretrained).exists():
            if spec.pretrained not in open_clip.list_pretrained_tags_by_model(spec.name):
                raise FileNotFoundError(f"backbone checkpoint {spec.pretrained} not found")
        torch.manual_seed(spec.seed)
        self.model = open_clip.create_model(spec.name, pretrained=spec.pretrained or None, device=device)
        self.model.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(spec.name)
        self.spec = spec
        visual = self.model.visual
        self.image_size = visual.image_size[0] if isinstance(visual.image_size, tuple) else visual.image_size
        cfg = getattr(visual, "preprocess_cfg", {}) or {}
        mean = cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)
        std = cfg.get("std", open_clip.OPENAI_DATASET_STD)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.to(device)

    def architecture(self) -> dict:
        """The open_clip config this model was built from (a cache key: a changed config is a new model)."""
        import open_clip

        return open_clip.get_model_config(self.spec.name) or {}

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def embed_dim(self) -> int:
        projection = self.model.text_projection
        if projection is None:  # no projection: the text tower's own width
            return int(self.model.ln_final.normalized_shape[-1])
        return int(projection.out_features if isinstance(projection, torch.nn.Linear) else projection.shape[-1])

    def preprocess(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 [B, H, W, 3] -> normalized float [B, 3, S, S]: short side resized to S, centre crop."""
        return preprocess_frames(frames, self.image_size, self.mean, self.std)

    @torch.no_grad()
    def frame_features(self, frames) -> tuple[torch.Tensor, torch.Tensor]:
        """(cls [B, D], patches [B, P, D]); cls equals model.encode_image."""
        visual = self.model.visual
        visual.output_tokens = True
        try:
            pooled, tokens = visual(self.preprocess(frames))
        finally:
            visual.output_tokens = False
        if visual.proj is not None:
            tokens = tokens @ visual.proj
        return pooled, tokens

    @property
    def context_length(self) -> int:
        return int(self.model.positional_embedding.shape[0])

    def token_lengths(self, texts: list[str]) -> list[int]:
        """Each text's length in tokens, start and end of text included, before any truncation."""
        encode = getattr(self.tokenizer, "encode", None)  # open_clip's SimpleTokenizer (CLIP BPE)
        if encode is not None:
            return [len(encode(text)) + 2 for text in texts]
        hf = getattr(self.tokenizer, "tokenizer", None)  # open_clip's HFTokenizer wraps a transformers tokenizer
        if hf is not None:
            return [len(ids) for ids in hf(list(texts))["input_ids"]]
        raise TypeError(f"cannot count tokens with {type(self.tokenizer).__name__}")

    def end_of_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Each row's end-of-text position: the tokenizer's eos id where the model names one, else CLIP's rule
        (end-of-text has the largest id)."""
        eos = getattr(self.model, "text_eos_id", None)
        if eos is not None and getattr(self.model, "text_pool_type", "argmax") == "eos":
            return (ids == eos).int().argmax(dim=-1)
        return ids.argmax(dim=-1)

    def pool_index(self, ids: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        """The position `encode_text` pools, by the model's `text_pool_type` (open_clip's text_global_pool)."""
        pool = getattr(self.model, "text_pool_type", "argmax")
        if pool in ("argmax", "eos"):
            return eot
        if pool == "first":
            return torch.zeros_like(eot)
        if pool == "last":
            return torch.full_like(eot, ids.shape[1] - 1)
        raise ValueError(f"open_clip text_pool_type {pool!r} is not supported (argmax, eos, first, last)")

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pooled [S, D], tokens [S, L, D], lengths [S]); pooled equals model.encode_text.

        lengths count the tokens up to and including end-of-text; with `text_pool_type` argmax or eos (CLIP's)
        the pooled vector is the token at that position."""
        model = self.model
        if not hasattr(model, "token_embedding"):
            raise ValueError(f"open_clip model {self.spec.name!r} has a custom text tower; only CLIP-style text "
                             "encoders (token_embedding + transformer) expose token features here")
        ids = self.tokenizer(texts).to(self.device)
        cast_dtype = model.transformer.get_cast_dtype()
        x = model.token_embedding(ids).to(cast_dtype) + model.positional_embedding.to(cast_dtype)
        x = model.transformer(x, attn_mask=model.attn_mask)
        x = model.ln_final(x)
        projection = model.text_projection
        if projection is not None:
            x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
        eot = self.end_of_text(ids)
        pooled = x[torch.arange(len(texts), device=x.device), self.pool_index(ids, eot)]
        return pooled, x, eot + 1


OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class FrozenHFCLIP(torch.nn.Module):
    """A transformers `CLIPModel` from a local directory (`spec.pretrained`); the same interface as `FrozenBackbone`."""

    def __init__(self, spec: BackboneSpec, device: str | torch.device = "cpu"):
        super().__init__()
        import transformers

        path = Path(spec.pretrained) if spec.pretrained else None
        if path is None or not path.is_dir():
            raise FileNotFoundError(f"features.pretrained {spec.pretrained!r} is not a directory: the transformers backbone "
                                    f"loads a CLIPModel checkpoint (config.json, weights, tokenizer) from disk, never from the hub")
        self.model = transformers.CLIPModel.from_pretrained(path, local_files_only=True)
        self.model.eval().requires_grad_(False)
        tokenizer = getattr(transformers, "CLIPTokenizerFast", None) or transformers.CLIPTokenizer  # v5: one class
        self.tokenizer = tokenizer.from_pretrained(path, local_files_only=True)
        self.spec = spec
        self.image_size = int(self.model.config.vision_config.image_size)
        processor = path / "preprocessor_config.json"
        cfg = json.loads(processor.read_text()) if processor.is_file() else {}
        mean, std = cfg.get("image_mean", OPENAI_MEAN), cfg.get("image_std", OPENAI_STD)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.to(device)

    def architecture(self) -> dict:
        """The checkpoint's CLIPConfig (a cache key: a changed config is a new model)."""
        return self.model.config.to_dict()

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.projection_dim)

    @property
    def context_length(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    def preprocess(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 [B, H, W, 3] -> normalized float [B, 3, S, S]: short side resized to S, centre crop."""
        return preprocess_frames(frames, self.image_size, self.mean, self.std)

    @torch.no_grad()
    def frame_features(self, frames) -> tuple[torch.Tensor, torch.Tensor]:
        """(cls [B, D], patches [B, P, D]): every token through post_layernorm and visual_projection; cls equals
        get_image_features."""
        vision = self.model.vision_model
        hidden = vision(pixel_values=self.preprocess(frames)).last_hidden_state
        tokens = self.model.visual_projection(vision.post_layernorm(hidden))
        return tokens[:, 0], tokens[:, 1:]

    def token_lengths(self, texts: list[str]) -> list[int]:
        """Each text's length in tokens, start and end of text included, before any truncation."""
        return [len(ids) for ids in self.tokenizer(list(texts), verbose=False)["input_ids"]]

    def end_of_text(self, ids: torch.Tensor) -> torch.Tensor:
        """The end-of-text position of each row, found as CLIPTextModel finds it for pooling."""
        eos = self.model.config.text_config.eos_token_id
        if eos == 2:  # configs written before transformers fixed eos_token_id: the largest id is end-of-text
            return ids.argmax(dim=-1)
        return (ids == eos).int().argmax(dim=-1)

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pooled [S, D], tokens [S, L, D], lengths [S]); pooled equals get_text_features."""
        ids = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.context_length,
                             return_tensors="pt")["input_ids"].to(self.device)
        x = self.model.text_projection(self.model.text_model(input_ids=ids).last_hidden_state)
        eot = self.end_of_text(ids)
        pooled = x[torch.arange(len(texts), device=x.device), eot]
        return pooled, x, eot + 1
