"""The whole distillation objective in one place.

    none    cross-entropy to the labels
    hard    + w_hard * cross-entropy to the teacher's chosen option
    soft    + w_soft * T^2 * KL(teacher_T || student_T) over the options
    hybrid  + both
    align   (optional, any mode but none) + w_align * (1 - cos(proj(video), teacher hidden)), proj learned,
            over the samples that have a teacher hidden state (`teacher_hidden_valid`)
    embed   (optional, any mode but none) + w_embed * MSE(normalize(video), normalize(R @ teacher hidden)):
            the seed repository's "soft" loss. R is a fixed Gaussian projection (not trained), seeded as the
            seed seeds it (`embed_seed`, the hidden width and the teacher family's name as the seed spells it);
            no projection when the
            hidden state already has the student's width (a seed JSONL `teacher_embedding`).

Samples whose teacher output is missing contribute only the label term; the ground truth is
never substituted for a teacher.
"""
from __future__ import annotations

import hashlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from cater.sections import DistillConfig  # train.distill, typed with the other params sections

__all__ = ["DistillConfig", "DistillationLoss", "PAD_LOGIT", "fixed_projection"]


# Padded choices, in the float32 the loss is computed in: exp() of it is exactly 0, and it stays finite after
# dividing by any temperature >= 1e-29 (torch.finfo(float32).min would overflow to -inf at T < 1).
PAD_LOGIT = -1e9


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `mask`; what is not selected (even NaN) never reaches the result or its gradient."""
    values = torch.where(mask, values, torch.zeros_like(values))
    return values.sum() / mask.to(values.dtype).sum().clamp(min=1.0)


def fixed_projection(student_dim: int, teacher_dim: int, seed: int, teacher_name: str) -> torch.Tensor:
    """[student_dim, teacher_dim] Gaussian / sqrt(teacher_dim), the same matrix on every machine: the seed's
    generator seed (seed + width * 997 + sha1(name)[:8] % 100003), so a seed user's embeddings are matched."""
    name_hash = int.from_bytes(hashlib.sha1(teacher_name.encode("utf-8")).digest()[:8], "big") % 100003
    generator = torch.Generator().manual_seed(seed + teacher_dim * 997 + name_hash)
    return torch.randn(student_dim, teacher_dim, generator=generator) / math.sqrt(teacher_dim)


class DistillationLoss(nn.Module):
    """`forward` returns (total loss, {component: value}) for logging."""

    def __init__(self, config: DistillConfig, student_dim: int = 0, teacher_dim: int = 0, teacher_name: str = ""):
        super().__init__()
        self.config = config
        use_align = config.align_weight > 0 and config.mode != "none" and teacher_dim > 0
        self.align_proj = nn.Linear(student_dim, teacher_dim) if use_align else None
        self.use_embed = config.embed_weight > 0 and config.mode != "none" and teacher_dim > 0
        if self.use_embed and teacher_dim != student_dim:  # a buffer: saved with the module, never trained
            self.register_buffer("embed_proj", fixed_projection(student_dim, teacher_dim, config.embed_seed, teacher_name))
        else:
            self.embed_proj = None

    def forward(self, logits, labels, choice_mask, teacher_logits=None, teacher_valid=None, video=None, teacher_hidden=None,
                teacher_hidden_valid=None):
        """`teacher_hidden_valid` [B] (default: all True where `teacher_hidden` is given) masks the align term:
        a sample counts there when it has a teacher hidden state, whether or not its teacher logits are valid.

        Every term is computed in float32, whatever the student's precision (fp16 / bf16 under autocast or
        a half model): padded choices are re-masked with a float32 constant, so a student that masks with
        torch.finfo(float16).min and one that masks with torch.finfo(float32).min give the same loss."""
        cfg = self.config
        logits = logits.float().masked_fill(~choice_mask, PAD_LOGIT)
        has_label = labels >= 0  # train.label_fraction < 1 leaves samples without a label (-100)
        per_sample = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
        parts = {"label": _masked_mean(per_sample, has_label)}
        total = cfg.label_weight * parts["label"]
        if cfg.mode == "none":
            return total, {k: float(v.detach()) for k, v in parts.items()}
        valid = teacher_valid & choice_mask.any(dim=1)
        t_logits = teacher_logits.float().masked_fill(~choice_mask, PAD_LOGIT)
        if cfg.mode in ("hard", "hybrid"):
            hard_target = t_logits.argmax(dim=1)
            per_sample = F.cross_entropy(logits, hard_target, reduction="none")
            parts["hard"] = _masked_mean(per_sample, valid)
            total = total + cfg.hard_weight * parts["hard"]
        if cfg.mode in ("soft", "hybrid"):
            T = cfg.temperature
            t_logp = F.log_softmax(t_logits / T, dim=1)
            s_logp = F.log_softmax(logits / T, dim=1)
            kl_terms = torch.where(choice_mask, t_logp.exp() * (t_logp - s_logp), torch.zeros_like(s_logp))
            parts["soft"] = _masked_mean(kl_terms.sum(dim=1), valid) * T * T
            total = total + cfg.soft_weight * parts["soft"]
        if teacher_hidden is not None:
            if teacher_hidden_valid is None:
                teacher_hidden_valid = torch.ones(teacher_hidden.shape[0], dtype=torch.bool, device=teacher_hidden.device)
            # a row without a usable hidden state is zeroed, so even a NaN there reaches no gradient
            teacher_hidden = torch.where(teacher_hidden_valid[:, None], teacher_hidden.float(), 0.0)
        if self.align_proj is not None and video is not None and teacher_hidden is not None:
            projected = self.align_proj(video.to(self.align_proj.weight.dtype)).float()
            cos = F.cosine_similarity(projected, teacher_hidden, dim=-1)
            parts["align"] = _masked_mean(1 - cos, teacher_hidden_valid)
            total = total + cfg.align_weight * parts["align"]
        if self.use_embed and video is not None and teacher_hidden is not None:
            target = teacher_hidden
            if self.embed_proj is not None:
                target = target @ self.embed_proj.t()
            squared = (F.normalize(video.float(), dim=-1) - F.normalize(target, dim=-1)).pow(2).mean(dim=-1)
            parts["embed"] = _masked_mean(squared, teacher_hidden_valid)
            total = total + cfg.embed_weight * parts["embed"]
        return total, {k: float(v.detach()) for k, v in parts.items()}
