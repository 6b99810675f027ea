"""The CaTeR student: event-prompt cross-modal attention + a temporal adapter on a frozen CLIP.

    patch tokens of frame t  --cross-attend-->  token features of frame t's prompt
    frame vectors (+ time embeddings)  --temporal transformer-->  video vector
    video vector  . choice text vectors  --cosine x learnable scale-->  choice logits

Defaults reproduce the recipe. The options below (all off by default) are the improvements the
design notes measured on a frozen random backbone: attention pooling over patches, conditioning
the video vector on the question, and a residual text head on the frozen choice embeddings.
Inputs are backbone features, so the same module trains on cached features or on features
recomputed on the fly.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class StudentConfig:
    embed_dim: int = 64  # the backbone's joint embedding width
    num_frames: int = 8
    heads: int = 4
    cross_layers: int = 1
    temporal_layers: int = 2
    dropout: float = 0.1
    frame_pool: str = "cls"  # cls (recipe) | mean | attention
    question_conditioning: bool = False
    text_head: bool = False
    logit_scale_init: float = 1 / 0.07  # CLIP's initial temperature; the notes found ~100 helps

    def __post_init__(self) -> None:
        if self.frame_pool not in ("cls", "mean", "attention"):
            raise ValueError(f"student.frame_pool must be cls, mean or attention, got {self.frame_pool!r}")
        if self.embed_dim % self.heads:
            raise ValueError(f"student.heads ({self.heads}) must divide the embedding width ({self.embed_dim})")

    def to_dict(self) -> dict:
        return asdict(self)


class PromptCrossAttention(nn.Module):
    """Visual tokens of each frame attend to the token features of that frame's prompt."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm_q, self.norm_kv = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(dropout))
        self.gate = nn.Parameter(torch.zeros(1))  # starts as identity: the frozen features pass through

    def forward(self, visual: torch.Tensor, prompt: torch.Tensor, prompt_pad: torch.Tensor, has_prompt: torch.Tensor) -> torch.Tensor:
        # visual [N, 1+P, D]; prompt [N, L, D]; prompt_pad [N, L] True = padding; has_prompt [N]
        safe_pad = prompt_pad.clone()
        safe_pad[~has_prompt, 0] = False  # keep softmax finite for frames without a prompt (masked below)
        attended, _ = self.attn(self.norm_q(visual), self.norm_kv(prompt), self.norm_kv(prompt), key_padding_mask=safe_pad, need_weights=False)
        update = attended + self.ff(self.norm_ff(visual + attended))
        return visual + torch.tanh(self.gate) * update * has_prompt[:, None, None].to(visual.dtype)


class AttentionPool(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        q = self.query.expand(tokens.shape[0], -1, -1)
        kv = self.norm(tokens)
        return self.attn(q, kv, kv, need_weights=False)[0][:, 0]


class CaTeRStudent(nn.Module):
    def __init__(self, config: StudentConfig):
        super().__init__()
        self.config = config
        d = config.embed_dim
        self.cross = nn.ModuleList(PromptCrossAttention(d, config.heads, config.dropout) for _ in range(config.cross_layers))
        self.pool = AttentionPool(d, config.heads) if config.frame_pool == "attention" else None
        self.time_embed = nn.Parameter(torch.zeros(1, config.num_frames + 1, d))
        nn.init.normal_(self.time_embed, std=0.02)
        layer = nn.TransformerEncoderLayer(d, config.heads, 4 * d, config.dropout, batch_first=True, norm_first=True, activation="gelu")
        self.temporal = nn.TransformerEncoder(layer, config.temporal_layers, enable_nested_tensor=False)
        self.temporal_out = nn.Linear(d, d)
        nn.init.zeros_(self.temporal_out.weight)  # the adapter starts as the mean of frame vectors
        nn.init.zeros_(self.temporal_out.bias)
        self.question_proj = nn.Linear(d, d) if config.question_conditioning else None
        self.text_head = nn.Linear(d, d) if config.text_head else None
        if self.text_head is not None:
            nn.init.zeros_(self.text_head.weight)
            nn.init.zeros_(self.text_head.bias)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(config.logit_scale_init)))

    def video_vector(self, cls, patches, prompt_tokens, prompt_pad, has_prompt, question=None) -> torch.Tensor:
        """cls [B, T, D], patches [B, T, P, D], prompt_tokens [B, T, L, D], prompt_pad [B, T, L], has_prompt [B, T]."""
        b, t, p, d = patches.shape
        visual = torch.cat([cls[:, :, None], patches], dim=2).reshape(b * t, p + 1, d)
        if prompt_tokens is not None:
            kv = prompt_tokens.reshape(b * t, -1, d)
            pad = prompt_pad.reshape(b * t, -1)
            flags = has_prompt.reshape(b * t)
            for i, block in enumerate(self.cross):
                if i == len(self.cross) - 1 and self.config.frame_pool == "cls":
                    # only the CLS row is read after the last block: computing the others changes nothing
                    visual = block(visual[:, :1], kv, pad, flags)
                else:
                    visual = block(visual, kv, pad, flags)
        if self.pool is not None:
            frames = self.pool(visual)
        elif self.config.frame_pool == "mean":
            frames = visual[:, 1:].mean(dim=1)
        else:
            frames = visual[:, 0]
        frames = frames.reshape(b, t, d)
        sequence = frames + self.time_embed[:, 1 : t + 1]
        if self.question_proj is not None and question is not None:
            q = self.question_proj(question)[:, None] + self.time_embed[:, :1]
            sequence = torch.cat([q, sequence], dim=1)
        hidden = self.temporal(sequence)
        return frames.mean(dim=1) + self.temporal_out(hidden.mean(dim=1))

    def forward(self, cls, patches, prompt_tokens, prompt_pad, has_prompt, choices, choice_mask, question=None):
        """choices [B, C, D] frozen text vectors, choice_mask [B, C] True = real choice. Returns (logits [B, C], video [B, D])."""
        video = self.video_vector(cls, patches, prompt_tokens, prompt_pad, has_prompt, question)
        if self.text_head is not None:
            choices = choices + self.text_head(choices)
        sims = torch.einsum("bd,bcd->bc", F.normalize(video, dim=-1), F.normalize(choices, dim=-1))
        logits = self.logit_scale.clamp(max=math.log(200.0)).exp() * sims
        return logits.masked_fill(~choice_mask, -1e9), video
