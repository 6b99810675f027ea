"""The allowed values of every enumerated param, in one light module (no torch, no numpy).

Each is a `Literal` type, the annotation of its field in `cater.sections` (from which `params_schema` derives
what params.yaml may say), and a tuple of its values for the code that enumerates them (the classes that use
them, the ablation grid); so a new option is added in one place.
"""
from __future__ import annotations

from typing import Literal, get_args

PromptVariant = Literal["none", "random", "frame", "event"]  # train.prompt_variant
DistillMode = Literal["none", "hard", "soft", "hybrid"]  # train.distill.mode
# train.choice_text: pooled "question answer: choice" (seed) | the answer alone | the qa string followed by the
# sample's subtitles (datasets with subtitles: TVQA), cut at the text encoder's context
ChoiceText = Literal["qa", "answer", "qa_subtitles"]
LRSchedule = Literal["warmup_cosine", "constant"]  # train.lr_schedule
MixedPrecision = Literal["no", "fp16", "bf16"]  # train.mixed_precision
Fusion = Literal["norm", "gated"]  # norm: LayerNorm(visual + dropout(attn)) (seed) | gated: pre-norm attn + FF, tanh gate from 0
FramePool = Literal["tokens", "cls", "patches", "attention"]  # tokens: mean over CLS + patches (seed)
TemporalHead = Literal["norm_mean", "residual"]  # norm_mean: mean(LayerNorm(temporal)) (seed) | residual: mean(frames) + zero-init linear
FrameCodec = Literal["png", "jpeg", "npy"]  # frames.codec
BackboneLibrary = Literal["open_clip", "transformers"]  # features.library: open_clip (default) | transformers (a local CLIPModel directory)
SplitSubset = Literal["stratified", "first"]  # splits.subset

PROMPT_VARIANTS = get_args(PromptVariant)
DISTILL_MODES = get_args(DistillMode)
CHOICE_TEXTS = get_args(ChoiceText)
LR_SCHEDULES = get_args(LRSchedule)
MIXED_PRECISION = get_args(MixedPrecision)
FUSIONS = get_args(Fusion)
FRAME_POOLS = get_args(FramePool)
TEMPORAL_HEADS = get_args(TemporalHead)
FRAME_CODECS = get_args(FrameCodec)
BACKBONE_LIBRARIES = get_args(BackboneLibrary)
SPLIT_SUBSETS = get_args(SplitSubset)
