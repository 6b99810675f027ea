"""One typed config per params.yaml section (dataclasses; no torch, so every stage can import it).

`cater.params_schema` derives the allowed keys, types, bounds and values of params.yaml from these classes: a
field's annotation gives its type (a `Literal` from `cater.choices` the allowed values), `bounded(...)` its
numeric range, a nested dataclass a nested section, `dict` a free-form mapping that its own builder checks (prompt
generators, teacher models). The defaults are params.yaml's (tests/test_sections.py). The classes the code runs
on are these very ones: `ShapesConfig` (the demo generator), `DistillConfig` (the loss), `StudentConfig` (the
model; `embed_dim` and `num_frames` come from the features, not from params) and `TrainConfig` (training).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cater.choices import (CHOICE_TEXTS, DISTILL_MODES, FRAME_POOLS, FUSIONS, LR_SCHEDULES, PROMPT_VARIANTS,
                           TEMPORAL_HEADS, BackboneLibrary, ChoiceText, DistillMode, FrameCodec, FramePool, Fusion,
                           LRSchedule, MixedPrecision, PromptVariant, SplitSubset, TemporalHead)


def bounded(default: Any, low: float | None = None, high: float | None = None, low_open: bool = False, **kwargs):
    """A field whose value must lie in [low, high] (`low_open`: strictly above low); None is always allowed."""
    return field(default=default, metadata={"bounds": (low, high, not low_open)}, **kwargs)


NOT_A_PARAM = {"param": False}  # a field the code sets, not a params.yaml key
MAX_OBJECTS = 6  # the demo's count questions have an answer word for 2..6 objects (cater.data.shapes.COUNT_WORDS)


# --- dataset -------------------------------------------------------------------------------------------------


@dataclass
class ShapesConfig:
    """`dataset.shapes`: the embedded demo generator (cater.data.shapes)."""
    seed: int = field(default=0, metadata=NOT_A_PARAM)  # dataset.seed
    videos: dict | None = None  # {"train": 250, "val": 100, "test": 150}
    size: int = bounded(64, low=16)
    fps: int = bounded(8, low=1)
    seconds: float = bounded(4.0, low=0, low_open=True)
    min_objects: int = 2
    max_objects: int = 6

    def __post_init__(self) -> None:
        if self.videos is None:
            self.videos = {"train": 250, "val": 100, "test": 150}
        if not 2 <= self.min_objects <= self.max_objects <= MAX_OBJECTS:
            raise ValueError(f"dataset.shapes: need 2 <= min_objects <= max_objects <= {MAX_OBJECTS}, "
                             f"got {self.min_objects} and {self.max_objects}")


@dataclass
class DatasetSection:
    """`dataset`: which release, and the adapter's options (each adapter reads the keys it knows and checks that
    no other is set; cater.data.adapters). The defaults here are the adapters' own."""
    name: str = "shapes"  # shapes | msrvtt_qa | msvd_qa | activitynet_qa | tvqa | seed_jsonl (cater.data.registry)
    seed: int = 0
    shapes: ShapesConfig = field(default_factory=ShapesConfig)
    annotations: str | None = None
    videos: str | list | None = None
    splits: list | dict | None = None
    check_videos: bool = True
    num_choices: int = bounded(5, low=2, high=5)
    use_ts: bool = False
    subtitles: str | None = None
    frames_dir: str | None = None
    video_mapping: str | None = None
    frames_root: str | None = None
    min_answer_freq: int = 1


# --- frames, splits, prompts, teacher, features --------------------------------------------------------------


@dataclass
class FramesSection:
    num_frames: int = bounded(8, low=1)
    size: int = bounded(64, low=8)
    workers: int = bounded(2, low=1)
    skip_bad: bool = False
    codec: FrameCodec = "png"
    quality: int = bounded(95, low=1, high=100)


@dataclass
class SplitsSection:
    train_n: int | None = bounded(None, low=1)
    val_n: int | None = bounded(None, low=1)
    test_n: int | None = bounded(None, low=1)
    seed: int = 0
    subset: SplitSubset = "stratified"
    val_from_train: int | float | None = None


@dataclass
class PromptsSection:
    batch_size: int = bounded(16, low=1)
    max_failures: int = bounded(0, low=0)
    generators: dict = field(default_factory=dict)  # name -> backend options (cater.prompts.registry)


@dataclass
class TeacherSection:
    batch_size: int = bounded(8, low=1)
    models: dict = field(default_factory=dict)  # name -> cater.teachers.base.TeacherConfig fields (+ family options)


@dataclass
class FeaturesSection:
    backbone: str = "cater-tiny"
    pretrained: str | None = None
    seed: int = 0
    device: str = "auto"
    batch_size: int = bounded(256, low=1)
    text_chunk: int = bounded(1024, low=1)
    truncate_text: bool = False
    library: BackboneLibrary = "open_clip"


# --- train -----------------------------------------------------------------------------------------------------


@dataclass
class DistillConfig:
    """`train.distill`: the loss (cater.distill)."""
    mode: DistillMode = "hybrid"
    temperature: float = bounded(2.0, low=0, low_open=True)
    label_weight: float = bounded(1.0, low=0)
    hard_weight: float = bounded(0.5, low=0)
    soft_weight: float = bounded(1.0, low=0)
    align_weight: float = bounded(0.0, low=0)
    embed_weight: float = bounded(0.0, low=0)  # the seed's soft loss (0.4 there); see cater.distill
    embed_seed: int = 42  # seeds the fixed projection (the seed's --seed)

    def __post_init__(self) -> None:
        if self.mode not in DISTILL_MODES:
            raise ValueError(f"train.distill must be one of {DISTILL_MODES}, got {self.mode!r}")
        if self.temperature <= 0:
            raise ValueError(f"train.temperature must be positive, got {self.temperature}")


@dataclass
class StudentConfig:
    """`train.student`: the CaTeR student (cater.models.student), plus the two widths the features fix."""
    embed_dim: int = field(default=64, metadata=NOT_A_PARAM)  # the backbone's joint embedding width
    num_frames: int = field(default=8, metadata=NOT_A_PARAM)
    heads: int = bounded(8, low=1)  # cross-attention heads (seed: 8)
    temporal_heads: int = bounded(4, low=1)  # seed: 4
    cross_layers: int = bounded(1, low=1)
    temporal_layers: int = bounded(2, low=0)
    dropout: float = bounded(0.1, low=0, high=1)
    fusion: Fusion = "norm"
    frame_pool: FramePool = "tokens"
    temporal_head: TemporalHead = "norm_mean"
    question_conditioning: bool = False
    text_head: bool = False
    logit_scale_init: float = bounded(14.2857, low=0, low_open=True)  # CLIP's 1/0.07 as params.yaml writes it
    learn_logit_scale: bool = True  # false with logit_scale_init 1.0 scores raw cosines, as the seed does

    def __post_init__(self) -> None:
        for name, allowed in (("fusion", FUSIONS), ("frame_pool", FRAME_POOLS), ("temporal_head", TEMPORAL_HEADS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"student.{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("heads", "temporal_heads"):
            if getattr(self, name) < 1 or self.embed_dim % getattr(self, name):
                raise ValueError(f"student.{name} ({getattr(self, name)}) must divide the embedding width ({self.embed_dim})")
        if self.logit_scale_init <= 0:
            raise ValueError(f"student.logit_scale_init must be positive, got {self.logit_scale_init}")

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


@dataclass
class TrainConfig:
    """`train`: the ablation axes and the training recipe (cater.train)."""
    prompt_variant: PromptVariant = "event"
    prompt_generator: str = "annotations"
    teacher: str = "videollava"
    distill: DistillConfig = field(default_factory=DistillConfig)
    # the StudentConfig fields that are params, kept as given (the student is built once the widths are known)
    student: dict = field(default_factory=dict, metadata={"section": StudentConfig})
    choice_text: ChoiceText = "qa"  # qa: pooled `question + answer` (recipe) | answer: the answer alone | qa_subtitles
    epochs: int = bounded(30, low=1)
    batch_size: int = bounded(32, low=1)
    lr: float = bounded(3e-3, low=0, low_open=True)
    lr_schedule: LRSchedule = "warmup_cosine"  # linear warmup, then cosine decay to 0 (seed) | constant
    warmup_fraction: float = bounded(0.05, low=0, high=0.999999)  # of all optimizer steps; < 1: some must follow it
    weight_decay: float = bounded(0.01, low=0)
    label_fraction: float = bounded(1.0, low=0, high=1, low_open=True)  # labels on this seeded share of train
    seed: int = 0
    backbone_on_the_fly: bool = False
    loader_workers: int = 0  # DataLoader worker processes reading the feature shards (0: in the training process)
    mixed_precision: MixedPrecision = "no"

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


# the sections every stage's params.yaml must have, in dvc.yaml's order; `ablation` is free-form (cater.experiments)
SECTIONS: dict[str, type] = {
    "dataset": DatasetSection,
    "frames": FramesSection,
    "splits": SplitsSection,
    "prompts": PromptsSection,
    "teacher": TeacherSection,
    "features": FeaturesSection,
    "train": TrainConfig,
}
