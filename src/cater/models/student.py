"""The CaTeR student: event-prompt cross-modal attention + a temporal adapter on a frozen CLIP.

    every visual token of frame t (CLS + patches)  --cross-attend-->  token features of frame t's prompt
    frame vector = mean over the fused tokens
    frame vectors + time embeddings  --temporal transformer, LayerNorm, mean over time-->  video vector
    video vector . choice text vectors  --cosine x learnable scale-->  choice logits

The defaults follow the seed's `CaTeRMini` (README, "Recipe fidelity"): one cross-attention layer
with 8 heads, fused = LayerNorm(visual + dropout(attention)), the mean over all tokens, a
2-layer temporal transformer with 4 heads followed by a LayerNorm and the mean over frames. The one
deliberate deviation is the learnable logit scale (the seed scores raw cosines).

The options (all off by default) are the alternatives the design notes measured on a frozen
random backbone: a gated pre-norm fusion block with a feed-forward layer, CLS-only or attention
pooling, a residual temporal head, conditioning the video vector on the question, and a residual
text head on the frozen choice embeddings. Inputs are backbone features, so the same module trains
on cached features or on features recomputed on the fly.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from cater.sections import StudentConfig  # train.student (+ the widths), typed with the other params sections


class PromptAttention(nn.Module):
    """What both fusion blocks share: visual tokens (queries) attend to the frame's prompt tokens, each side LayerNormed."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm_q, self.norm_kv = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)

    def attend(self, visual, prompt, prompt_pad, has_prompt):
        kv = self.norm_kv(prompt)
        return self.attn(self.norm_q(visual), kv, kv, key_padding_mask=_finite_pad(prompt_pad, has_prompt), need_weights=False)[0]


class NormFusion(PromptAttention):
    """The seed's block: fused = LayerNorm(visual + dropout(attention(LN(visual), LN(prompt))))."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__(dim, heads, dropout)
        self.drop = nn.Dropout(dropout)
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, visual, prompt, prompt_pad, has_prompt):
        attended = self.attend(visual, prompt, prompt_pad, has_prompt)
        # a frame without a prompt gets no attention term (the seed attends to the empty string instead)
        return self.norm_out(visual + self.drop(attended) * has_prompt[:, None, None].to(visual.dtype))

    def without_prompt(self, visual):
        return self.norm_out(visual)


class GatedFusion(PromptAttention):
    """Pre-norm cross-attention and feed-forward, added through a tanh gate that starts closed."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__(dim, heads, dropout)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(dropout))
        self.gate = nn.Parameter(torch.zeros(1))  # starts as identity: the frozen features pass through

    def forward(self, visual, prompt, prompt_pad, has_prompt):
        attended = self.attend(visual, prompt, prompt_pad, has_prompt)
        update = attended + self.ff(self.norm_ff(visual + attended))
        return visual + torch.tanh(self.gate) * update * has_prompt[:, None, None].to(visual.dtype)

    def without_prompt(self, visual):
        return visual


def _finite_pad(prompt_pad: torch.Tensor, has_prompt: torch.Tensor) -> torch.Tensor:
    """Unmask one key of frames without a prompt, so their softmax stays finite (their result is discarded)."""
    safe = prompt_pad.clone()
    safe[~has_prompt, 0] = False
    return safe


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
        block = NormFusion if config.fusion == "norm" else GatedFusion
        self.cross = nn.ModuleList(block(d, config.heads, config.dropout) for _ in range(config.cross_layers))
        self.pool = AttentionPool(d, config.heads) if config.frame_pool == "attention" else None
        self.time_embed = nn.Parameter(torch.zeros(1, config.num_frames + 1, d))  # slot 0: the question (optional)
        nn.init.normal_(self.time_embed, std=0.02)
        layer = nn.TransformerEncoderLayer(d, config.temporal_heads, 4 * d, config.dropout, batch_first=True, norm_first=True,
                                           activation="gelu")
        self.temporal = nn.TransformerEncoder(layer, config.temporal_layers, enable_nested_tensor=False)
        if config.temporal_head == "norm_mean":
            self.temporal_norm = nn.LayerNorm(d)
        else:
            self.temporal_out = nn.Linear(d, d)
            nn.init.zeros_(self.temporal_out.weight)  # the adapter starts as the mean of frame vectors
            nn.init.zeros_(self.temporal_out.bias)
        self.question_proj = nn.Linear(d, d) if config.question_conditioning else None
        self.text_head = nn.Linear(d, d) if config.text_head else None
        if self.text_head is not None:
            nn.init.zeros_(self.text_head.weight)
            nn.init.zeros_(self.text_head.bias)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(config.logit_scale_init)), requires_grad=config.learn_logit_scale)

    def frame_vectors(self, cls, patches, prompt_tokens, prompt_pad, has_prompt) -> torch.Tensor:
        """[B, T, D]: each frame's tokens fused with its prompt, then pooled."""
        b, t, p, d = patches.shape
        visual = torch.cat([cls[:, :, None], patches], dim=2).reshape(b * t, p + 1, d)
        if self.config.frame_pool == "cls":
            visual = visual[:, :1]  # tokens never attend to each other, so the other rows cannot reach the CLS row
        for block in self.cross:
            if prompt_tokens is None:  # the `none` variant: exactly what frames without a prompt get
                visual = block.without_prompt(visual)
            else:
                visual = block(visual, prompt_tokens.reshape(b * t, -1, d), prompt_pad.reshape(b * t, -1), has_prompt.reshape(b * t))
        pool = self.config.frame_pool
        if self.pool is not None:
            frames = self.pool(visual)
        elif pool == "tokens":
            frames = visual.mean(dim=1)
        elif pool == "patches":
            frames = visual[:, 1:].mean(dim=1)
        else:
            frames = visual[:, 0]
        return frames.reshape(b, t, d)

    def video_vector(self, cls, patches, prompt_tokens, prompt_pad, has_prompt, question=None) -> torch.Tensor:
        """cls [B, T, D], patches [B, T, P, D], prompt_tokens [B, T, L, D], prompt_pad [B, T, L], has_prompt [B, T]."""
        frames = self.frame_vectors(cls, patches, prompt_tokens, prompt_pad, has_prompt)
        t = frames.shape[1]
        sequence = frames + self.time_embed[:, 1 : t + 1]
        if self.question_proj is not None and question is not None:
            q = self.question_proj(question)[:, None] + self.time_embed[:, :1]
            sequence = torch.cat([q, sequence], dim=1)
        hidden = self.temporal(sequence)
        if self.config.temporal_head == "norm_mean":
            return self.temporal_norm(hidden).mean(dim=1)
        return frames.mean(dim=1) + self.temporal_out(hidden.mean(dim=1))

    def forward(self, cls, patches, prompt_tokens, prompt_pad, has_prompt, choices, choice_mask, question=None):
        """choices [B, C, D] frozen text vectors, choice_mask [B, C] True = real choice. Returns (logits [B, C], video [B, D])."""
        video = self.video_vector(cls, patches, prompt_tokens, prompt_pad, has_prompt, question)
        if self.text_head is not None:
            choices = choices + self.text_head(choices)
        sims = torch.einsum("bd,bcd->bc", F.normalize(video, dim=-1), F.normalize(choices, dim=-1))
        logits = self.logit_scale.clamp(max=math.log(200.0)).exp() * sims
        return logits.masked_fill(~choice_mask, torch.finfo(logits.dtype).min), video
