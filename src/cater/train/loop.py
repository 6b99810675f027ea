"""The training loop and what it needs: seeding, the learning-rate schedule, the AdamW parameter groups, the
student with its loss as one module (for DDP), prediction and accuracy.

The loop runs unchanged on one CPU, one GPU or several processes under `accelerate launch` / `torchrun` (DDP);
`accelerate` picks the device and precision. Logging goes through a callback.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from cater.distill import DistillationLoss
from cater.features import CachedFeatures
from cater.models.student import CaTeRStudent, StudentConfig
from cater.train.checkpoint import RUNTIME_FIELDS, features_identity
from cater.train.config import TrainConfig
from cater.train.data import BatchCollate, FeatureBatcher, SplitTensors


SEED_TEACHER_NAMES = {"chatunivi": "chatunivl"}  # the seed's spelling, which seeds its projection


def seed_teacher_name(family: str) -> str:
    """The teacher's name as the seed's build_teacher_cache.py --teacher_name spells it."""
    return SEED_TEACHER_NAMES.get(family, family)


def lr_factor(step: int, total_steps: int, schedule: str, warmup_fraction: float) -> float:
    """The learning-rate multiplier at optimizer step `step` (0-based) of `total_steps`."""
    if schedule == "constant":
        return 1.0
    warmup = max(1, int(total_steps * warmup_fraction)) if warmup_fraction > 0 else 0
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))



def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class StudentWithLoss(nn.Module):
    """One module for DDP: the student and the (possibly trainable) distillation projection."""

    def __init__(self, student: CaTeRStudent, loss: DistillationLoss):
        super().__init__()
        self.student, self.loss = student, loss

    def forward(self, batch):
        logits, video = self.student(
            batch["cls"], batch["patches"], batch["prompt_tokens"], batch["prompt_pad"], batch["has_prompt"],
            batch["choices"], batch["choice_mask"], batch["question"],
        )
        return self.loss(logits, batch["labels"], batch["choice_mask"], batch["teacher_logits"], batch["teacher_valid"],
                         video, batch.get("teacher_hidden"), teacher_hidden_valid=batch.get("teacher_hidden_valid"))


# Parameters whose own name (the last dotted part) contains one of these are embeddings, scales or gates: no
# weight decay, whatever their shape. Matched on the leaf name, so `query_proj.weight` is still a weight matrix.
NO_DECAY_NAME_FRAGMENTS = ("time_embed", "time_pos", "pos_embed", "query", "logit_scale", "gate")


def parameter_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on weight matrices only. No decay on parameters with ndim < 2 (biases, norm
    weights, scalar scales and gates), on embeddings (nn.Embedding tables, learned tokens such as `time_embed`,
    and other names with a fragment of NO_DECAY_NAME_FRAGMENTS). Every parameter is in exactly one group."""
    embedding_tables = {id(m.weight) for m in module.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        exempt = param.ndim < 2 or id(param) in embedding_tables or any(f in leaf for f in NO_DECAY_NAME_FRAGMENTS)
        (no_decay if exempt else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def build_student(cfg: TrainConfig, features: CachedFeatures) -> CaTeRStudent:
    student_cfg = StudentConfig(embed_dim=features.embed_dim, num_frames=features.num_frames, **cfg.student)
    return CaTeRStudent(student_cfg)


@torch.no_grad()
def predict(student: CaTeRStudent, batcher: FeatureBatcher, split: SplitTensors, batch_size: int = 32) -> torch.Tensor:
    student.eval()
    out = []
    for start in range(0, len(split), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(split)))
        b = batcher(split, rows)
        device = next(student.parameters()).device
        b = {k: v.to(device) for k, v in b.items()}
        logits, _ = student(b["cls"], b["patches"], b["prompt_tokens"], b["prompt_pad"], b["has_prompt"], b["choices"], b["choice_mask"], b["question"])
        out.append(logits.cpu())
    return torch.cat(out)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    labelled = labels >= 0
    return float((logits.argmax(1)[labelled] == labels[labelled]).float().mean()) if labelled.any() else float("nan")


def train(cfg: TrainConfig, train_split: SplitTensors, val_split: SplitTensors, batcher: FeatureBatcher,
          features: CachedFeatures, log: Callable[[int, dict[str, float]], None] | None = None,
          accelerator=None, teacher_family: str | None = None) -> dict[str, Any]:
    """Train; select the epoch with the best validation accuracy. Returns the checkpoint dict. `teacher_family`
    (videollava, flamingo, chatunivi) names the teacher in the embed term's fixed projection, as the seed does."""
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    seed_everything(cfg.seed)
    accelerator = accelerator or Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available())
    student = build_student(cfg, features)
    teacher_dim = train_split.teacher_hidden.shape[-1] if train_split.teacher_hidden is not None else 0
    if cfg.distill.embed_weight > 0 and train_split.teacher_hidden_projected and teacher_dim != features.embed_dim:
        raise ValueError(
            f"{train_split.teacher_source}: the teacher embeddings are already projected to {teacher_dim} dimensions (the "
            f"seed's --d_model), but the student is {features.embed_dim} wide (features.backbone); projecting them again "
            f"would compare random directions. Use a backbone of width {teacher_dim}, or rebuild the seed's teacher cache "
            f"with --d_model {features.embed_dim}")
    loss = DistillationLoss(cfg.distill, features.embed_dim, teacher_dim, seed_teacher_name(teacher_family or cfg.teacher))
    module = StudentWithLoss(student, loss)
    optimizer = torch.optim.AdamW(parameter_groups(module, cfg.weight_decay), lr=cfg.lr)
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(list(range(len(train_split))), batch_size=cfg.batch_size, shuffle=True, generator=generator,
                        collate_fn=BatchCollate(batcher, train_split), num_workers=cfg.loader_workers,
                        pin_memory=torch.cuda.is_available(), persistent_workers=cfg.loader_workers > 0)
    module, optimizer, loader = accelerator.prepare(module, optimizer, loader)
    total_steps = cfg.epochs * len(loader)  # per process: each one steps its own schedule once per optimizer step
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, cfg.lr_schedule, cfg.warmup_fraction))
    best = {"val_accuracy": -1.0}
    for epoch in range(cfg.epochs):
        module.train()
        totals: dict[str, float] = {}
        steps = 0
        lr = schedule.get_last_lr()[0]  # the rate of this epoch's first step
        for batch in loader:
            total, parts = module(batch)
            optimizer.zero_grad()
            accelerator.backward(total)
            optimizer.step()
            schedule.step()
            for k, v in {"total": float(total.detach()), **parts}.items():
                totals[k] = totals.get(k, 0.0) + v
            steps += 1
        unwrapped = accelerator.unwrap_model(module).student
        val_logits = predict(unwrapped, batcher, val_split, batch_size=cfg.batch_size)  # memory bounded by the train batch
        metrics = {f"loss/{k}": v / max(steps, 1) for k, v in sorted(totals.items())}
        metrics["val/accuracy"] = accuracy(val_logits, val_split.labels)
        metrics["lr"] = lr
        if log is not None and accelerator.is_main_process:
            log(epoch, metrics)
        if metrics["val/accuracy"] > best["val_accuracy"]:
            best = {
                "val_accuracy": metrics["val/accuracy"],
                "epoch": epoch,
                "global_step": (epoch + 1) * steps,
                "model": {k: v.detach().cpu().clone() for k, v in unwrapped.state_dict().items()},
            }
    return {
        "model": best["model"],
        "best_epoch": best["epoch"],
        "best_global_step": best["global_step"],
        "val_accuracy": best["val_accuracy"],
        "student_config": build_student(cfg, features).config.to_dict(),
        "train_config": {k: v for k, v in {**asdict(cfg), "distill": asdict(cfg.distill)}.items() if k not in RUNTIME_FIELDS},
        "features": features_identity(features),
    }
