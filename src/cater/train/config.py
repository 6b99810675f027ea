"""The training configuration: params.yaml's `train:` section, checked when it is built."""
from __future__ import annotations

from dataclasses import dataclass, field

from cater.choices import CHOICE_TEXTS, LR_SCHEDULES, PROMPT_VARIANTS
from cater.distill import DistillConfig


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
