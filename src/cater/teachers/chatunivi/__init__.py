"""Chat-UniVi (PKU-YuanGroup, CVPR 2024) as a teacher, implemented here from the paper and the
parity fixture's ARCHITECTURE.md (no transformers class or package exists for it).

Model = CLIP ViT vision tower (HF `CLIPVisionModel`) -> multi-scale DPC-KNN token clustering
(per frame: 256 -> 64 -> 32 -> 16 tokens; videos: frames grouped into events, each event's tokens
re-clustered at the three scales) -> one `Linear(C, H)` projector -> LLaMA (HF `LlamaForCausalLM`).

Checkpoint layout (the official one): `config.json` (a LLaMA config with `model_type: "ChatUniVi"`,
the `mm_*` keys and a nested `config` with the clustering rates) and the weights under
`model.*`/`lm_head.*` (LLaMA), `model.mm_projector.*` and
`model.vision_tower.vision_tower.vision_model.*` (CLIP). `...rotary_emb.inv_freq` keys (written by
transformers 4.31) are constants and are ignored.

The CLIP *config* and *preprocessor config* are not part of the official checkpoint: the reference
fetches them from the hub repo named by `mm_vision_tower`. We look for them, in order, in
`<checkpoint>/clip_vision_config.json` / `<checkpoint>/clip_preprocessor_config.json` (what
`cater.testing.tiny.chatunivi` and the parity fixture ship), then in `mm_vision_tower` as a local
directory or an already-cached hub id.

Precision: clustering (distances, densities, merging) always runs in float32, whatever the model
dtype; the merged tokens are cast back to the model dtype before the projector.

Modules: `clustering` (DPC-KNN and the event/pyramid merging), `checkpoint` (the official layout: config,
weights, CLIP configs), `model` (`ChatUniViModel`), `teacher` (conversation templates, tokenizer,
`ChatUniViTeacher`). The names below are re-exported so `from cater.teachers.chatunivi import X` works.
"""
from __future__ import annotations

from cater.teachers.chatunivi.checkpoint import (
    CLIP_CONFIG_FILE, CLIP_PREPROCESSOR_FILE, PROJECTOR_PREFIX, VISION_PREFIX, cluster_settings, llama_config, load_exact,
    load_image_processor, load_vision_config, official_state, read_checkpoint_config, read_tensors, strip_prefix,
    weight_files,
)
from cater.teachers.chatunivi.clustering import (
    ClusterSettings, cluster_and_merge, cluster_count, cluster_image, cluster_video, dpc_knn, merge_clusters,
    neighbour_count, spatial_pyramid, temporal_events,
)
from cater.teachers.chatunivi.model import IMAGE_TOKEN_INDEX, ChatUniViModel, ChatUniViOutput, EmbeddedSample
from cater.teachers.chatunivi.teacher import (
    ANSWER_INSTRUCTION, CONV_TEMPLATES, IMAGE_PLACEHOLDER, TEACHER_EXTRA_KEYS, ChatUniViTeacher, ConvTemplate, load_tokenizer,
    tokenize_with_placeholders,
)

__all__ = [
    "ANSWER_INSTRUCTION", "CLIP_CONFIG_FILE", "CLIP_PREPROCESSOR_FILE", "CONV_TEMPLATES", "IMAGE_PLACEHOLDER",
    "IMAGE_TOKEN_INDEX", "PROJECTOR_PREFIX", "TEACHER_EXTRA_KEYS", "VISION_PREFIX", "ChatUniViModel", "ChatUniViOutput",
    "ChatUniViTeacher", "ClusterSettings", "ConvTemplate", "EmbeddedSample", "cluster_and_merge", "cluster_count",
    "cluster_image", "cluster_settings", "cluster_video", "dpc_knn", "llama_config", "load_exact", "load_image_processor",
    "load_tokenizer", "load_vision_config", "merge_clusters", "neighbour_count", "official_state",
    "read_checkpoint_config", "read_tensors", "spatial_pyramid", "strip_prefix", "temporal_events",
    "tokenize_with_placeholders", "weight_files",
]
