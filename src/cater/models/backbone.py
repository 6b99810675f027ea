"""The frozen open_clip dual encoder, exposing token-level features.

`frame_features` gives, per image, the projected CLS vector (identical to `encode_image`) and the
projected patch tokens; `text_features` gives, per string, the projected pooled vector (identical
to `encode_text`) and the projected features of every token up to and including end-of-text.
Model configs shipped with the repo (e.g. `cater-tiny`) live in `model_configs/` and are
registered with open_clip, so `create_model` builds them like any built-in architecture.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

CONFIG_DIR = Path(__file__).with_name("model_configs")


def register_model_configs() -> None:
    import open_clip

    if "cater-tiny" not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)


@dataclass
class BackboneSpec:
    name: str = "cater-tiny"  # an open_clip architecture, e.g. ViT-B-16
    pretrained: str | None = None  # None = random init from `seed`; "openai"; or a local checkpoint path
    seed: int = 0


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
        return int(self.model.text_projection.shape[-1])

    def preprocess(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 [B, H, W, 3] -> normalized float [B, 3, S, S]: short side resized to S, centre crop."""
        x = torch.as_tensor(frames, device=self.device).permute(0, 3, 1, 2).float() / 255.0
        h, w = x.shape[-2:]
        s = self.image_size
        if min(h, w) != s:
            scale = s / min(h, w)
            x = F.interpolate(x, size=(max(s, round(h * scale)), max(s, round(w * scale))), mode="bicubic", antialias=True, align_corners=False)
        h, w = x.shape[-2:]
        top, left = (h - s) // 2, (w - s) // 2
        x = x[..., top : top + s, left : left + s]
        return (x - self.mean) / self.std

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

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pooled [S, D], tokens [S, L, D], lengths [S]); pooled equals model.encode_text."""
        model = self.model
        ids = self.tokenizer(texts).to(self.device)
        x = model.token_embedding(ids) + model.positional_embedding
        x = model.transformer(x, attn_mask=model.attn_mask)
        x = model.ln_final(x) @ model.text_projection
        eot = ids.argmax(dim=-1)  # CLIP's end-of-text token has the largest id
        pooled = x[torch.arange(len(texts), device=x.device), eot]
        return pooled, x, eot + 1
