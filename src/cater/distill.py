"""The whole distillation objective in one place.

    none    cross-entropy to the labels
    hard    + w_hard * cross-entropy to the teacher's chosen option
    soft    + w_soft * T^2 * KL(teacher_T || student_T) over the options
    hybrid  + both
    align   (optional, any mode but none) + w_align * (1 - cos(proj(video), teacher hidden))

Samples whose teacher output is missing contribute only the label term; the ground truth is
never substituted for a teacher.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

MODES = ("none", "hard", "soft", "hybrid")


@dataclass
class DistillConfig:
    mode: str = "hybrid"
    temperature: float = 2.0
    label_weight: float = 1.0
    hard_weight: float = 0.5
    soft_weight: float = 1.0
    align_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"train.distill must be one of {MODES}, got {self.mode!r}")
        if self.temperature <= 0:
            raise ValueError(f"train.temperature must be positive, got {self.temperature}")


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


class DistillationLoss(nn.Module):
    """`forward` returns (total loss, {component: value}) for logging."""

    def __init__(self, config: DistillConfig, student_dim: int = 0, teacher_dim: int = 0):
        super().__init__()
        self.config = config
        use_align = config.align_weight > 0 and config.mode != "none" and teacher_dim > 0
        self.align_proj = nn.Linear(student_dim, teacher_dim) if use_align else None

    def forward(self, logits, labels, choice_mask, teacher_logits=None, teacher_valid=None, video=None, teacher_hidden=None):
        cfg = self.config
        parts = {"label": F.cross_entropy(logits, labels)}
        total = cfg.label_weight * parts["label"]
        if cfg.mode == "none":
            return total, {k: float(v.detach()) for k, v in parts.items()}
        valid = teacher_valid & choice_mask.any(dim=1)
        t_logits = teacher_logits.masked_fill(~choice_mask, -1e9)
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
        if self.align_proj is not None and video is not None and teacher_hidden is not None:
            cos = F.cosine_similarity(self.align_proj(video), teacher_hidden, dim=-1)
            parts["align"] = _masked_mean(1 - cos, valid)
            total = total + cfg.align_weight * parts["align"]
        return total, {k: float(v.detach()) for k, v in parts.items()}
