"""Training and evaluation of the student on cached (or recomputed) backbone features.

The loop runs unchanged on one CPU, one GPU or several processes under `accelerate launch` /
`torchrun` (DDP); `accelerate` picks the device and precision. Logging goes through a callback,
so this module knows nothing about DVC.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from cater.choices import CHOICE_TEXTS, LR_SCHEDULES, PROMPT_VARIANTS
from cater.data.schema import Sample
from cater.distill import DistillationLoss, DistillConfig
from cater.features import CachedFeatures
from cater.io import decode_array, jsonl_lines
from cater.models.student import CaTeRStudent, StudentConfig


@dataclass
class TrainConfig:
    prompt_variant: str = "event"
    prompt_generator: str = "annotations"
    teacher: str = "videollava"
    distill: DistillConfig = field(default_factory=DistillConfig)
    student: dict = field(default_factory=dict)
    choice_text: str = "qa"  # qa: pooled `question + answer` (recipe) | answer: the answer alone | qa_subtitles: qa + subtitles
    epochs: int = 30
    batch_size: int = 32
    lr: float = 3e-3
    lr_schedule: str = "warmup_cosine"  # warmup_cosine: linear warmup, then cosine decay to 0 (seed) | constant
    warmup_fraction: float = 0.05  # of all optimizer steps (seed: total // 20)
    weight_decay: float = 0.01
    label_fraction: float = 1.0  # labels on this seeded fraction of train (per question type); teachers see all of it
    seed: int = 0
    backbone_on_the_fly: bool = False
    mixed_precision: str = "no"
    loader_workers: int = 0  # DataLoader worker processes reading the feature shards (0: in the training process)

    def __post_init__(self) -> None:
        if isinstance(self.distill, dict):
            self.distill = DistillConfig(**self.distill)
        if self.prompt_variant not in PROMPT_VARIANTS:
            raise ValueError(f"train.prompt_variant must be one of {PROMPT_VARIANTS}, got {self.prompt_variant!r}")
        if self.choice_text not in CHOICE_TEXTS:
            raise ValueError(f"train.choice_text must be one of {', '.join(CHOICE_TEXTS)}, got {self.choice_text!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"train.lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"train.warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if not 0.0 < self.label_fraction <= 1.0:
            raise ValueError(f"train.label_fraction must be in (0, 1], got {self.label_fraction}")
        if isinstance(self.loader_workers, bool) or not isinstance(self.loader_workers, int) or self.loader_workers < 0:
            raise ValueError(f"train.loader_workers must be an integer >= 0, got {self.loader_workers!r}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be a positive integer, got {getattr(self, name)}")


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


def labelled_subset(samples: list[Sample], fraction: float, seed: int) -> set[str]:
    """The ids of a seeded `fraction` of the labelled samples, drawn per question type (at least one each)."""
    by_type: dict[str, list[str]] = {}
    for s in samples:
        if s.answer_idx is not None:
            by_type.setdefault(s.question_type or "", []).append(s.id)
    chosen: set[str] = set()
    for qtype, ids in sorted(by_type.items()):
        ids = sorted(ids)
        random.Random(f"{seed}:{qtype}").shuffle(ids)
        chosen.update(ids[: max(1, round(fraction * len(ids)))])
    return chosen


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def derangement(items: list[str], seed: int) -> dict[str, str]:
    """Map every item to a different item (the shuffled-prompt control), deterministically."""
    if len(items) < 2:
        raise ValueError("the random prompt variant needs at least 2 videos")
    order = sorted(items)
    rng = random.Random(seed)
    rng.shuffle(order)
    return {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}


class TeacherOutputs(dict):
    """The teacher stage's rows by sample id, and the file they came from (named in errors)."""

    def __init__(self, rows: dict[str, dict], path: Path | str | None = None):
        super().__init__(rows)
        self.path = path


def load_teacher_outputs(path: Path, keep_hidden: bool = True) -> TeacherOutputs:
    """The rows by sample id, without their hidden states (a 4096-wide vector each for a 7B teacher): with
    `keep_hidden` a row keeps where its line starts (`hidden_at`), the vector's width and whether it is
    finite, and `TeacherHidden` reads it again when a batch needs it; memory holds only the letter logits."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: teacher outputs missing (run or pull the teacher stage)")
    rows = {}
    for lineno, start, line in jsonl_lines(path):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: malformed JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("key"), str):
            raise ValueError(f"{path}:{lineno}: expected an object with a string field 'key'")
        blob = row.pop("hidden", None)
        if keep_hidden and blob:
            vector = decode_array(blob)
            row.update(hidden_at=start, hidden_width=int(vector.shape[-1]), hidden_finite=bool(np.isfinite(vector).all()))
        rows[row["key"]] = row
    return TeacherOutputs(rows, path)


class TeacherHidden:
    """The teacher's hidden state of each row of a split, read from the outputs file when a batch asks for it
    (memory bounded by the batch). A locator is a byte offset into `path`, an inline encoded array, or None
    (no usable hidden state: zeros, masked out of the align term by `teacher_hidden_valid`)."""

    def __init__(self, path: Path | str | None, locators: list, width: int):
        self.path, self.locators, self.width = path, locators, width
        self._handle = None

    def __getstate__(self) -> dict:  # an open file does not cross processes: a copy opens its own
        return {**self.__dict__, "_handle": None}

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.locators), self.width

    def _blob(self, locator):
        if isinstance(locator, dict):
            return locator
        if self._handle is None:
            self._handle = open(self.path, "rb")
        self._handle.seek(locator)
        return json.loads(self._handle.readline())["hidden"]

    def __getitem__(self, rows) -> torch.Tensor:
        index = torch.as_tensor(rows)
        flat = index.reshape(-1).tolist()
        out = torch.zeros(len(flat), self.width)
        for k, row in enumerate(flat):
            locator = self.locators[row]
            if locator is not None:
                out[k] = torch.from_numpy(decode_array(self._blob(locator)).astype(np.float32))
        return out.reshape(*index.shape, self.width)


class SplitTensors:
    """Everything one split needs, as index tensors into the cached features."""

    def __init__(self, samples: list[Sample], features: CachedFeatures, cfg: TrainConfig, teacher: dict[str, dict] | None,
                 random_map: dict[str, str] | None, labelled: set[str] | None = None):
        if not samples:
            raise ValueError("empty split")
        index = features.index
        t = features.num_frames
        c = max(len(s.choices) for s in samples)
        n = len(samples)
        self.ids = [s.id for s in samples]
        self.question_types = [s.question_type for s in samples]
        self.video_ids = [s.video_id for s in samples]
        self.video_row = torch.tensor([features.video_row[s.video_id] for s in samples])
        # -100 = no label: unlabelled splits (TVQA test_public) and the samples outside `labelled` (train.label_fraction)
        self.labels = torch.tensor([s.answer_idx if s.answer_idx is not None and (labelled is None or s.id in labelled) else -100
                                    for s in samples])
        self.choice_ids = torch.zeros(n, c, dtype=torch.long)
        self.choice_mask = torch.zeros(n, c, dtype=torch.bool)
        self.question_ids = torch.tensor([index["samples"][s.id]["question"] for s in samples])
        self.prompt_ids = torch.full((n, t), -1, dtype=torch.long)
        key = cfg.choice_text
        if samples and key not in index["samples"][samples[0].id]:
            raise ValueError(f"train.choice_text: {key}: the features store has no such texts; the features stage writes "
                             f"them only for datasets with subtitles (TVQA with dataset.subtitles set)")
        prompts = None if cfg.prompt_variant == "none" else features.prompt_ids(cfg.prompt_generator)
        kind = "frame" if cfg.prompt_variant == "frame" else "event"
        self.missing_prompts = 0
        for i, s in enumerate(samples):
            ids = index["samples"][s.id][key]
            self.choice_ids[i, : len(ids)] = torch.tensor(ids)
            self.choice_mask[i, : len(ids)] = True
            if prompts is not None:
                source = random_map[s.video_id] if cfg.prompt_variant == "random" else s.video_id
                if source in prompts:
                    self.prompt_ids[i] = torch.tensor(prompts[source][kind])
                else:
                    self.missing_prompts += 1
        self.teacher_logits = torch.zeros(n, c)
        self.teacher_valid = torch.zeros(n, dtype=torch.bool)  # finite teacher logits: the hard / soft terms
        self.teacher_hidden = None
        self.teacher_hidden_valid = torch.zeros(n, dtype=torch.bool)  # a finite teacher hidden state: the align term
        self.nonfinite_teacher_rows = 0  # rows whose choice_logits hold NaN / inf: used as missing
        self.nonfinite_teacher_hidden = 0  # rows whose hidden state holds NaN / inf: no align target
        self.teacher_hidden_projected = False  # the rows' hidden states are embeddings in the student's space already
        self.teacher_source = None
        if teacher is not None:
            source = getattr(teacher, "path", None) or "teacher outputs"
            self.teacher_source = source
            self.teacher_hidden_projected = any(bool(row.get("projected")) for row in teacher.values())
            hidden = []
            for i, s in enumerate(samples):
                row = teacher.get(s.id)
                if row is not None and row.get("choice_only") and cfg.distill.mode in ("soft", "hybrid"):
                    raise ValueError(
                        f"{source}: sample {s.id!r}: the teacher gives only its choice (a seed JSONL teacher_hard_idx), "
                        f"not a distribution, so train.distill.mode {cfg.distill.mode} would distil a one-hot; use mode "
                        "hard (the seed's hybrid is mode hard + embed_weight 0.4)")
                if row is not None and row.get("choice_logits") is not None:
                    logits = row["choice_logits"]
                    if len(logits) != len(s.choices):
                        raise ValueError(
                            f"{source}: sample {s.id!r}: field choice_logits has {len(logits)} values, but the sample has "
                            f"{len(s.choices)} choices (the teacher outputs do not belong to these splits; re-run the teacher stage)")
                    values = torch.tensor([float("nan") if x is None else x for x in logits], dtype=torch.float32)
                    if torch.isfinite(values).all():
                        self.teacher_logits[i, : len(values)] = values
                        self.teacher_valid[i] = True
                    else:
                        self.nonfinite_teacher_rows += 1
                locator, width, finite = None, 0, False
                if row and row.get("hidden"):  # inline (rows given directly rather than read by load_teacher_outputs)
                    vector = decode_array(row["hidden"])
                    locator, width, finite = row["hidden"], int(vector.shape[-1]), bool(np.isfinite(vector).all())
                elif row and "hidden_at" in row:
                    locator, width, finite = row["hidden_at"], row["hidden_width"], row["hidden_finite"]
                if locator is not None and not finite:
                    self.nonfinite_teacher_hidden += 1
                hidden.append((locator if finite else None, width))
            width = next((w for locator, w in hidden if locator is not None), 0)
            for s, (locator, w) in zip(samples, hidden):
                if locator is not None and w != width:
                    raise ValueError(f"{source}: sample {s.id!r}: field hidden has {w} values, other rows have {width} "
                                     "(the outputs mix teachers; re-run the teacher stage)")
            if width:
                self.teacher_hidden = TeacherHidden(source if source != "teacher outputs" else None,
                                                    [locator for locator, _ in hidden], width)
                self.teacher_hidden_valid = torch.tensor([locator is not None for locator, _ in hidden], dtype=torch.bool)

    def __len__(self) -> int:
        return len(self.ids)


class FeatureBatcher:
    """Turns a batch of row indices into the student's inputs, read from the feature store (only the rows the
    batch needs) or, for the visual part, from the live backbone."""

    def __init__(self, features: CachedFeatures, backbone=None, frame_store=None):
        self.features = features
        self.positions = torch.arange(features.token_length)
        self.backbone, self.frame_store = backbone, frame_store

    def visual(self, split: SplitTensors, rows: torch.Tensor):
        if self.backbone is None:
            return self.features.video(split.video_row[rows])
        frames = np.concatenate([self.frame_store.load(split.video_ids[int(r)]) for r in rows])
        cls, patches = self.backbone.frame_features(frames)
        b, t = len(rows), self.features.num_frames
        return cls.float().reshape(b, t, -1).cpu(), patches.float().reshape(b, t, patches.shape[1], -1).cpu()

    def __call__(self, split: SplitTensors, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        cls, patches = self.visual(split, rows)
        prompt_ids = split.prompt_ids[rows]
        has_prompt = prompt_ids >= 0
        safe = prompt_ids.clamp(min=0)
        if len(self.features.prompt_lengths):
            prompt_tokens = self.features.prompt_tokens(safe)
            prompt_pad = self.positions >= self.features.prompt_lengths[safe][..., None]
        else:  # a store without prompt strings (no generator): every frame goes without a prompt
            prompt_tokens = torch.zeros(*safe.shape, len(self.positions), self.features.embed_dim)
            prompt_pad = torch.ones(*safe.shape, len(self.positions), dtype=torch.bool)
        batch = {
            "cls": cls,
            "patches": patches,
            "prompt_tokens": prompt_tokens,
            "prompt_pad": prompt_pad,
            "has_prompt": has_prompt,
            "choices": self.features.pooled(split.choice_ids[rows]),
            "choice_mask": split.choice_mask[rows],
            "question": self.features.pooled(split.question_ids[rows]),
            "labels": split.labels[rows],
            "teacher_logits": split.teacher_logits[rows],
            "teacher_valid": split.teacher_valid[rows],
        }
        if split.teacher_hidden is not None:
            batch["teacher_hidden"] = split.teacher_hidden[rows]
            batch["teacher_hidden_valid"] = split.teacher_hidden_valid[rows]
        return batch


class BatchCollate:
    """The DataLoader's collate_fn: row indices -> the batch; a class, not a lambda, so spawned workers can pickle it."""

    def __init__(self, batcher: FeatureBatcher, split: SplitTensors):
        self.batcher, self.split = batcher, split

    def __call__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        return self.batcher(self.split, torch.tensor(rows))


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


def features_identity(features: CachedFeatures) -> dict[str, Any]:
    """What a checkpoint was trained on: the backbone spec and the shapes of its feature store."""
    return {"backbone": features.index.get("backbone"), "embed_dim": features.embed_dim, "num_frames": features.num_frames}


# ---- the checkpoint file: safetensors + JSON metadata, never a pickle ------------------------------------------

CHECKPOINT_METADATA_KEY = "cater_student"  # the one safetensors metadata entry: the JSON of CHECKPOINT_FIELDS
CHECKPOINT_FORMAT = 1
CHECKPOINT_FIELDS = ("best_epoch", "best_global_step", "val_accuracy", "student_config", "train_config")
OPTIONAL_CHECKPOINT_FIELDS = ("features",)  # absent from checkpoints written before it existed
RUNTIME_FIELDS = ("loader_workers",)  # how training ran, not what it computed: kept out of the checkpoint


def checkpoint_bytes(checkpoint: dict[str, Any]) -> bytes:
    """The checkpoint `train` returns, as safetensors bytes: the student's state dict as tensors, the rest as
    JSON in a single metadata entry (safetensors writes several entries in a per-process random order; one
    entry with sorted keys gives the same bytes in every run)."""
    from safetensors.torch import save

    meta = {key: checkpoint[key] for key in (*CHECKPOINT_FIELDS, *OPTIONAL_CHECKPOINT_FIELDS) if key in checkpoint}
    meta["format"] = CHECKPOINT_FORMAT
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in checkpoint["model"].items()}
    return save(tensors, metadata={CHECKPOINT_METADATA_KEY: json.dumps(meta, sort_keys=True, separators=(",", ":"))})


def save_student(checkpoint: dict[str, Any], path: str | Path) -> None:
    """Write the checkpoint to `path` atomically (a killed run leaves the old file or none)."""
    from cater.io import atomic_path

    data = checkpoint_bytes(checkpoint)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _not_a_checkpoint(path: Path, data: bytes, detail: str) -> ValueError:
    hint = ""
    if data[:2] == b"PK" or data[:1] == b"\x80":
        hint = "; it looks like a pickle (an old models/student.pt or a crafted file), which is never loaded"
    return ValueError(f"{path}: not a safetensors checkpoint ({detail}){hint}; re-run or re-pull the train stage")


def load_student(checkpoint_path: str | Path) -> tuple[CaTeRStudent, dict]:
    """The student and its checkpoint dict from a file `save_student` wrote. Nothing in the file is unpickled
    or executed: the tensors are read by safetensors and the metadata is JSON."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(checkpoint_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: student checkpoint missing (run or pull the train stage)")
    data = path.read_bytes()
    try:
        tensors = load(data)
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8: 8 + header_len]).get("__metadata__") or {}
    except (SafetensorError, ValueError, UnicodeDecodeError, AttributeError) as exc:
        raise _not_a_checkpoint(path, data, f"{type(exc).__name__}: {str(exc)[:200]}") from None
    if CHECKPOINT_METADATA_KEY not in meta:
        raise ValueError(f"{path}: a safetensors file with no cater student metadata ('{CHECKPOINT_METADATA_KEY}'); "
                         "not a student checkpoint")
    try:
        info = json.loads(meta[CHECKPOINT_METADATA_KEY])
        if not isinstance(info, dict) or info.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"format {info.get('format') if isinstance(info, dict) else info!r}, "
                             f"expected {CHECKPOINT_FORMAT}")
        missing = [key for key in CHECKPOINT_FIELDS if key not in info]
        if missing:
            raise ValueError(f"missing {missing}")
        if not isinstance(info["student_config"], dict):
            raise ValueError("student_config is not a mapping")
        student = CaTeRStudent(StudentConfig(**info["student_config"]))
        student.load_state_dict(tensors)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ValueError(f"{path}: student checkpoint metadata / weights do not fit (student_config: "
                         f"{type(exc).__name__}: {str(exc)[:300]})") from None
    checkpoint = {key: info[key] for key in (*CHECKPOINT_FIELDS, *OPTIONAL_CHECKPOINT_FIELDS) if key in info}
    checkpoint["model"] = tensors
    return student.eval(), checkpoint
