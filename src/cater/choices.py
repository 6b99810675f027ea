"""The allowed values of every enumerated param, in one light module (no torch, no numpy).

`params_schema` validates params.yaml against them, the classes that use them import them from here,
and the ablation grid enumerates them; so a new option is added in one place.
"""
from __future__ import annotations

PROMPT_VARIANTS = ("none", "random", "frame", "event")  # train.prompt_variant
DISTILL_MODES = ("none", "hard", "soft", "hybrid")  # train.distill.mode
# train.choice_text: pooled "question answer: choice" (seed) | the answer alone | the qa string followed by the
# sample's subtitles (datasets with subtitles: TVQA), cut at the text encoder's context
CHOICE_TEXTS = ("qa", "answer", "qa_subtitles")
LR_SCHEDULES = ("warmup_cosine", "constant")  # train.lr_schedule
MIXED_PRECISION = ("no", "fp16", "bf16")  # train.mixed_precision
FUSIONS = ("norm", "gated")  # norm: LayerNorm(visual + dropout(attn)) (seed) | gated: pre-norm attn + FF, tanh gate from 0
FRAME_POOLS = ("tokens", "cls", "patches", "attention")  # tokens: mean over CLS + patches (seed)
TEMPORAL_HEADS = ("norm_mean", "residual")  # norm_mean: mean(LayerNorm(temporal)) (seed) | residual: mean(frames) + zero-init linear
FRAME_CODECS = ("png", "jpeg", "npy")  # frames.codec
BACKBONE_LIBRARIES = ("open_clip", "transformers")  # features.library: open_clip (default) | transformers (a local CLIPModel directory)
SPLIT_SUBSETS = ("stratified", "first")  # splits.subset
