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
`write_tiny_chatunivi` and the parity fixture ship), then in `mm_vision_tower` as a local
directory or an already-cached hub id.

Precision: clustering (distances, densities, merging) always runs in float32, whatever the model
dtype; the merged tokens are cast back to the model dtype before the projector.
"""
from __future__ import annotations

import hashlib
import json
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from cater.io import atomic_directory
from cater.teachers.base import (
    LETTERS, Teacher, TeacherConfig, TeacherError, TeacherInput, TeacherOutput, letter_matrix, letter_output, options_block,
    placement_kwargs,
)

IMAGE_TOKEN_INDEX = -200  # placeholder id of one frame in input_ids (the reference's constant)
IMAGE_PLACEHOLDER = "<image>"
VISION_PREFIX = "model.vision_tower.vision_tower."
PROJECTOR_PREFIX = "model.mm_projector."
CLIP_CONFIG_FILE = "clip_vision_config.json"
CLIP_PREPROCESSOR_FILE = "clip_preprocessor_config.json"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# --------------------------------------------------------------------------------------------
# Conversation templates (the reference's `v1`, default of its video-QA script, and `simple`)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvTemplate:
    system: str
    roles: tuple[str, str]
    preset: tuple[tuple[str, str], ...]  # canned (role, message) turns before the user's
    seps: tuple[str, str]  # separator after a user turn, after an assistant turn

    def prompt(self, user_message: str) -> str:
        """The full prompt, ending with the assistant role and a colon: the answer comes next."""
        turns = list(self.preset) + [(self.roles[0], user_message)]
        text = self.system + self.seps[0]
        for i, (role, message) in enumerate(turns):
            text += f"{role}: {message}" + self.seps[i % 2]
        return text + f"{self.roles[1]}:"


CONV_TEMPLATES = {
    "v1": ConvTemplate(
        system="A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions.",
        roles=("USER", "ASSISTANT"),
        preset=(),
        seps=(" ", "</s>"),
    ),
    "simple": ConvTemplate(
        system="A chat between a curious human and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the human's questions.",
        roles=("Human", "Assistant"),
        preset=(("Human", "Hi!"), ("Assistant", "Hi there! How can I help you today?")),
        seps=("###", "###"),
    ),
}


def tokenize_with_placeholders(prompt: str, encode: Callable[[str], list[int]], bos_id: int | None) -> list[int]:
    """Split `prompt` on `<image>`, tokenise each piece with `encode` (which adds BOS), keep only
    the first piece's BOS, and put one IMAGE_TOKEN_INDEX between consecutive pieces."""
    ids: list[int] = []
    for i, piece in enumerate(prompt.split(IMAGE_PLACEHOLDER)):
        piece_ids = list(encode(piece))
        if i > 0:
            ids.append(IMAGE_TOKEN_INDEX)
            if bos_id is not None and piece_ids[:1] == [bos_id]:
                piece_ids = piece_ids[1:]
        ids.extend(piece_ids)
    return ids


# --------------------------------------------------------------------------------------------
# DPC-KNN token clustering
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterSettings:
    spatial_rates: tuple[float, float, float] = (64, 32, 16)  # >1: absolute cluster counts
    spatial_k: tuple[int, int, int] = (5, 3, 3)
    temporal_rate: float = 1 / 16
    temporal_k: int = 5
    noise: float = 1e-6  # density tie-breaking noise, uniform in [0, noise)
    seed: int = 0  # seed of that noise, reset for every sample


def cluster_count(num_tokens: int, rate: float) -> int:
    """Rates above 1 are absolute counts; others are fractions of the token count."""
    count = math.ceil(rate) if rate > 1 else max(math.ceil(num_tokens * rate), 1)
    if count > num_tokens:
        raise ValueError(f"cannot make {count} clusters from {num_tokens} tokens")
    return count


def neighbour_count(k0: int, num_clusters: int) -> int:
    return min(3, max(num_clusters // 2, 1)) if k0 > num_clusters else k0


def dpc_knn(x: torch.Tensor, num_clusters: int, k: int, generator: torch.Generator | None = None, noise: float = 1e-6) -> torch.Tensor:
    """DPC-KNN labels of x [B, N, C] (float32): [B, N] int64 in 0..num_clusters-1.

    Label = rank of the cluster centre by descending score (density x separation)."""
    batch, num_tokens, channels = x.shape
    dist = torch.cdist(x, x) / math.sqrt(channels)
    nearest = torch.topk(dist, k=min(k, num_tokens), dim=-1, largest=False).values
    density = torch.exp(-(nearest**2).mean(dim=-1))
    if noise > 0:
        jitter = torch.rand(density.shape, generator=generator, dtype=density.dtype)
        density = density + jitter.to(density.device) * noise

    denser = density[:, None, :] > density[:, :, None]  # [b, i, j]: j is denser than i
    dist_max = dist.flatten(1).max(dim=-1).values[:, None, None]
    separation = torch.where(denser, dist, dist_max).min(dim=-1).values
    centres = torch.topk(separation * density, k=num_clusters, dim=-1).indices  # sorted, best first

    to_centres = torch.gather(dist, 1, centres[:, :, None].expand(-1, -1, num_tokens))  # [B, K, N]
    labels = to_centres.argmin(dim=1)  # ties: lowest label
    ranks = torch.arange(num_clusters, device=x.device).expand(batch, -1)
    return labels.scatter(1, centres, ranks)


def merge_clusters(x: torch.Tensor, labels: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """Mean of each cluster's members: [B, N, C] -> [B, K, C], in label order."""
    batch, _, channels = x.shape
    sums = x.new_zeros(batch, num_clusters, channels).scatter_add_(1, labels[:, :, None].expand(-1, -1, channels), x)
    counts = x.new_zeros(batch, num_clusters).scatter_add_(1, labels, torch.ones_like(labels, dtype=x.dtype))
    return sums / (counts[:, :, None] + 1e-6)


def cluster_and_merge(x: torch.Tensor, rate: float, k0: int, generator: torch.Generator | None = None, noise: float = 1e-6, trace: list | None = None) -> torch.Tensor:
    """One clustering step (the paper's CTM): [B, N, C] -> [B, K, C] in float32."""
    x = x.float()
    num_clusters = cluster_count(x.shape[1], rate)
    labels = dpc_knn(x, num_clusters, neighbour_count(k0, num_clusters), generator, noise)
    if trace is not None:
        trace.append(labels)
    return merge_clusters(x, labels, num_clusters)


def spatial_pyramid(features: torch.Tensor, settings: ClusterSettings, generator=None, trace=None) -> list[torch.Tensor]:
    """Per-frame clustering at three scales: [T, N, C] -> [[T,64,C], [T,32,C], [T,16,C]]."""
    levels, current = [], features
    for rate, k0 in zip(settings.spatial_rates, settings.spatial_k):
        current = cluster_and_merge(current, rate, k0, generator, settings.noise, trace)
        levels.append(current)
    return levels


def temporal_events(frame_means: torch.Tensor, settings: ClusterSettings, generator=None, trace=None) -> list[list[int]]:
    """Group frames ([T, C] mean patch features) into events, ordered by their first frame."""
    x = frame_means.float()[None]
    num_clusters = cluster_count(x.shape[1], settings.temporal_rate)
    labels = dpc_knn(x, num_clusters, neighbour_count(settings.temporal_k, num_clusters), generator, settings.noise)
    if trace is not None:
        trace.append(labels)
    events: dict[int, list[int]] = {}
    for frame, label in enumerate(labels[0].tolist()):
        events.setdefault(label, []).append(frame)  # dict order = order of first appearance
    return list(events.values())


def cluster_image(features: torch.Tensor, settings: ClusterSettings, generator=None, trace=None) -> torch.Tensor:
    """Each frame of [t, N, C] on its own: [t * 112, C] (64 + 32 + 16 tokens per frame)."""
    return torch.cat(spatial_pyramid(features, settings, generator, trace), dim=1).flatten(0, 1)


def cluster_video(features: torch.Tensor, settings: ClusterSettings, generator=None, trace=None) -> tuple[torch.Tensor, list[list[int]]]:
    """Video [T, N, C] -> ([112 * n_events, C], events). Each event re-clusters the concatenated
    per-frame tokens of its frames at every scale."""
    events = temporal_events(features.float().mean(dim=1), settings, generator, trace)
    levels = spatial_pyramid(features, settings, generator, trace)
    merged = []
    for frames in events:
        for level, rate, k0 in zip(levels, settings.spatial_rates, settings.spatial_k):
            tokens = level[frames].flatten(0, 1)[None]  # frames in time order, concatenated
            merged.append(cluster_and_merge(tokens, rate, k0, generator, settings.noise, trace)[0])
    return torch.cat(merged, dim=0), events


# --------------------------------------------------------------------------------------------
# Checkpoint reading
# --------------------------------------------------------------------------------------------


def read_checkpoint_config(path: Path) -> dict:
    """config.json of a Chat-UniVi checkpoint; TeacherError if absent or of another family."""
    if not path.is_dir():
        raise TeacherError(f"Chat-UniVi checkpoint {path}: directory not found")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise TeacherError(f"Chat-UniVi checkpoint {path}: no config.json")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise TeacherError(f"{config_file}: invalid JSON ({err})") from err
    model_type = str(config.get("model_type", ""))
    architectures = config.get("architectures") or []
    is_univi = model_type.lower() == "chatunivi" or any("ChatUniVi" in str(a) for a in architectures)
    if not is_univi:
        raise TeacherError(
            f"{config_file}: model_type={model_type!r}, architectures={architectures}: not a Chat-UniVi "
            "checkpoint (expected model_type 'ChatUniVi' / ChatUniViLlamaForCausalLM)"
        )
    for key in ("mm_hidden_size", "mm_vision_tower", "hidden_size", "vocab_size"):
        if key not in config:
            raise TeacherError(f"{config_file}: missing key {key!r} required by Chat-UniVi")
    clustering = config.get("config")
    if not isinstance(clustering, dict) or not clustering.get("use_cluster", False):
        raise TeacherError(
            f"{config_file}: no nested 'config' with use_cluster=true; only clustering Chat-UniVi "
            "checkpoints (all released ones) are supported"
        )
    if config.get("mm_use_im_start_end") or config.get("mm_use_im_patch_token"):
        raise TeacherError(f"{config_file}: mm_use_im_start_end / mm_use_im_patch_token are not supported")
    if config.get("mm_vision_select_feature", "patch") not in ("patch", "cls_patch"):
        raise TeacherError(f"{config_file}: unknown mm_vision_select_feature {config['mm_vision_select_feature']!r}")
    return config


def llama_config(config: dict):
    """The LLaMA part of a Chat-UniVi config.json (the mm_* keys ride along, unused)."""
    from transformers import LlamaConfig

    keys = {k: v for k, v in config.items() if k not in ("model_type", "architectures", "auto_map", "config")}
    if keys.get("rope_scaling", 0) is None:
        del keys["rope_scaling"]  # transformers 4.31 wrote null; v5 deprecates the key
    llama = LlamaConfig(**keys)
    llama.architectures = ["LlamaForCausalLM"]
    return llama


def cluster_settings(config: dict) -> ClusterSettings:
    nested = config["config"]
    return ClusterSettings(
        spatial_rates=(nested["spatial_cluster_rate0"], nested["spatial_cluster_rate1"], nested["spatial_cluster_rate2"]),
        temporal_rate=nested["temporal_cluster_rate"],
    )


def weight_files(path: Path) -> list[Path]:
    """The checkpoint's weight files: one file or the shards named by an index."""
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (path / single).is_file():
            return [path / single]
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / index).is_file():
            shards = sorted(set(json.loads((path / index).read_text())["weight_map"].values()))
            return [path / shard for shard in shards]
    raise TeacherError(f"Chat-UniVi checkpoint {path}: no model.safetensors / pytorch_model.bin (or sharded index)")


def read_tensors(files: Sequence[Path], prefixes: Sequence[str]) -> dict[str, torch.Tensor]:
    """Tensors whose names start with one of `prefixes`, from safetensors or torch files."""
    from safetensors import safe_open

    tensors = {}
    for file in files:
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():
                    if name.startswith(tuple(prefixes)):
                        tensors[name] = handle.get_tensor(name)
        else:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            tensors.update({n: t for n, t in state.items() if n.startswith(tuple(prefixes))})
    return tensors


def load_vision_config(path: Path, config: dict):
    from transformers import CLIPVisionConfig

    bundled = path / CLIP_CONFIG_FILE
    if bundled.is_file():
        return CLIPVisionConfig.from_json_file(str(bundled))
    tower = str(config["mm_vision_tower"])
    try:  # a local directory, or a hub id already in the cache (tests run offline)
        return CLIPVisionConfig.from_pretrained(tower)
    except OSError as err:
        raise TeacherError(
            f"Chat-UniVi checkpoint {path}: no {CLIP_CONFIG_FILE}, and the vision tower config "
            f"{tower!r} (mm_vision_tower) could not be loaded: {err}"
        ) from err


def load_image_processor(path: Path, config: dict):
    """The CLIP preprocessor of the checkpoint (PIL backend: bicubic resize, as the reference)."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    bundled = path / CLIP_PREPROCESSOR_FILE
    if bundled.is_file():
        settings = json.loads(bundled.read_text())
        settings.pop("image_processor_type", None)
        return CLIPImageProcessorPil(**settings)
    tower = str(config["mm_vision_tower"])
    try:
        return CLIPImageProcessorPil.from_pretrained(tower)
    except OSError as err:
        raise TeacherError(
            f"Chat-UniVi checkpoint {path}: no {CLIP_PREPROCESSOR_FILE}, and the CLIP preprocessor of "
            f"{tower!r} (mm_vision_tower) could not be loaded: {err}"
        ) from err


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


@dataclass
class EmbeddedSample:
    embeds: torch.Tensor  # [L, H] input embeddings, visual tokens spliced in
    events: list[list[int]] | None = None
    visual_span: tuple[int, int] | None = None
    merged_visual: torch.Tensor | None = None  # projector input [n_visual, C], float32
    cluster_trace: list[torch.Tensor] = field(default_factory=list)


@dataclass
class ChatUniViOutput:
    last_hidden_state: torch.Tensor  # [B, L, H] after the final RMSNorm (left-padded)
    attention_mask: torch.Tensor  # [B, L], 0 on padding
    logits: torch.Tensor | None  # [B, L, V] ("all") or [B, V] ("last")
    events: list[list[list[int]] | None]  # per sample: temporal events of its video, None if none
    visual_spans: list[tuple[int, int] | None]  # per sample: [start, end) of visual tokens, unpadded
    merged_visual: list[torch.Tensor | None]  # per sample: projector input [n_visual, C]
    cluster_trace: list[list[torch.Tensor]]  # per sample: labels of each clustering call, in order


class ChatUniViModel(nn.Module):
    """CLIP tower + token clustering + projector + LLaMA, loaded from the official layout."""

    def __init__(self, llm, vision_tower, projector: nn.Linear, config: dict):
        super().__init__()
        self.llm = llm
        self.vision_tower = vision_tower
        self.mm_projector = projector
        self.checkpoint_config = config
        self.clustering = cluster_settings(config)
        self.select_layer = int(config.get("mm_vision_select_layer", -2))
        self.select_feature = config.get("mm_vision_select_feature", "patch")
        self.visual_memo: dict | None = None  # see _frozen_visual_tokens

    @property
    def hidden_size(self) -> int:
        return self.llm.config.hidden_size

    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.get_input_embeddings().weight.dtype

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", device_map: str | dict | None = None, attn_implementation: str | None = None, quantization_config=None) -> "ChatUniViModel":
        """The LLaMA part through transformers' from_pretrained (so `device_map` and a bitsandbytes
        `quantization_config` apply to it, the bulk of the weights); the vision tower and the projector in
        `dtype` on the LLaMA's first device."""
        from transformers import CLIPVisionModel

        path = Path(path)
        config = read_checkpoint_config(path)
        files = weight_files(path)
        load_kwargs = {"config": llama_config(config), "dtype": dtype, "output_loading_info": True}
        if device_map is not None:
            load_kwargs["device_map"] = device_map
        if attn_implementation is not None:
            load_kwargs["attn_implementation"] = attn_implementation
        if quantization_config is not None:
            load_kwargs["quantization_config"] = quantization_config
        llm, info = _llama_class().from_pretrained(str(path), **load_kwargs)
        if info.get("missing_keys"):
            raise TeacherError(f"Chat-UniVi checkpoint {path}: LLaMA weights missing: {sorted(info['missing_keys'])[:8]}")

        extra = read_tensors(files, (VISION_PREFIX, PROJECTOR_PREFIX))
        vision_tower = CLIPVisionModel(load_vision_config(path, config))
        load_exact(vision_tower, strip_prefix(extra, VISION_PREFIX, vision_tower), f"{path} vision tower")
        projector = nn.Linear(int(config["mm_hidden_size"]), int(config["hidden_size"]))
        load_exact(projector, strip_prefix(extra, PROJECTOR_PREFIX, projector), f"{path} mm_projector")

        model = cls(llm, vision_tower, projector, config).eval()
        if device_map is None:
            model.llm.to(device)
        model.vision_tower.to(device=model.device, dtype=dtype)
        model.mm_projector.to(device=model.device, dtype=dtype)
        return model

    # ---- vision -----------------------------------------------------------------------------

    @torch.no_grad()
    def encode_frames(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """CLIP features [T, N, C] of the selected layer (default -2: output of the second-last
        block, no post-layernorm), class token dropped."""
        tower = self.vision_tower
        layers = tower.encoder.layers
        blocks = self.select_layer % (len(layers) + 1)  # hidden-state index = blocks run
        x = tower.embeddings(pixel_values.to(device=self.device, dtype=self.dtype))
        x = tower.pre_layrnorm(x)
        for layer in layers[:blocks]:
            x = layer(x, None)
        return x[:, 1:] if self.select_feature == "patch" else x

    def visual_tokens(self, pixel_values: torch.Tensor, generator=None, trace=None) -> tuple[torch.Tensor, list[list[int]] | None]:
        """Merged (pre-projector) tokens [n_visual, C] float32 for one run of frames."""
        features = self.encode_frames(pixel_values)
        if len(features) <= 2:  # one or two placeholders: images, each on its own
            return cluster_image(features, self.clustering, generator, trace), None
        return cluster_video(features, self.clustering, generator, trace)

    # ---- sequence ---------------------------------------------------------------------------

    @torch.no_grad()
    def embed_sample(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> EmbeddedSample:
        """Input embeddings [L, H] of one sample, visual tokens spliced in at the placeholders.

        The placeholders must form one consecutive run with one frame each."""
        return self._embed_sample(input_ids, pixel_values)

    def _frozen_visual_tokens(self, pixel_values: torch.Tensor, generator, trace):
        """`visual_tokens` without autograd (the vision tower and the clustering are frozen); memoized
        by the pixels' bytes while `visual_memo` is a dict (fine-tuning turns it on)."""
        key = None
        if self.visual_memo is not None:
            key = hashlib.sha1(pixel_values.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
            key = f"{tuple(pixel_values.shape)}:{pixel_values.dtype}:{key}"
            if key in self.visual_memo:
                return self.visual_memo[key]
        with torch.no_grad():
            result = self.visual_tokens(pixel_values, generator, trace)
        if key is not None:
            self.visual_memo[key] = result
        return result

    def _embed_sample(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> EmbeddedSample:
        """`embed_sample` with autograd through the projector and the token embeddings, if enabled."""
        input_ids = torch.as_tensor(input_ids).flatten().to(self.device)
        positions = (input_ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
        embed = self.llm.get_input_embeddings()
        if not positions:
            return EmbeddedSample(embed(input_ids))
        if positions != list(range(positions[0], positions[0] + len(positions))):
            raise TeacherError("Chat-UniVi: the <image> placeholders must be one consecutive run")
        if pixel_values is None or len(pixel_values) != len(positions):
            got = 0 if pixel_values is None else len(pixel_values)
            raise TeacherError(f"Chat-UniVi: {len(positions)} <image> placeholders but {got} frames")
        generator = torch.Generator().manual_seed(self.clustering.seed)
        trace: list[torch.Tensor] = []
        merged, events = self._frozen_visual_tokens(pixel_values, generator, trace)
        visual = self.mm_projector(merged.to(self.dtype))
        start, end = positions[0], positions[-1] + 1
        pieces = [embed(input_ids[:start]), visual, embed(input_ids[end:])]
        return EmbeddedSample(torch.cat(pieces, dim=0), events, (start, start + len(visual)), merged, trace)

    @torch.no_grad()
    def forward(self, input_ids: Sequence[torch.Tensor], pixel_values: Sequence[torch.Tensor | None], logits: str | None = "last") -> ChatUniViOutput:
        """A batch of samples, left-padded after visual splicing, in one LLaMA pass.

        logits: "last" -> [B, V] at the last position, "all" -> [B, L, V], None -> not computed."""
        return self.forward_with_grad(input_ids, pixel_values, logits)

    def forward_with_grad(self, input_ids: Sequence[torch.Tensor], pixel_values: Sequence[torch.Tensor | None], logits: str | None = "last") -> ChatUniViOutput:
        """`forward` with autograd (if enabled) through LLaMA, the projector and the token embeddings;
        the vision tower and the clustering always run without it."""
        samples = [self._embed_sample(ids, pix) for ids, pix in zip(input_ids, pixel_values, strict=True)]
        length = max(len(s.embeds) for s in samples)
        embeds = torch.zeros(len(samples), length, self.hidden_size, dtype=self.dtype, device=self.device)
        mask = torch.zeros(len(samples), length, dtype=torch.long, device=self.device)
        for row, sample in enumerate(samples):
            embeds[row, length - len(sample.embeds):] = sample.embeds
            mask[row, length - len(sample.embeds):] = 1
        position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)
        hidden = self.llm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, use_cache=False).last_hidden_state
        head = self.llm.get_output_embeddings()
        out_logits = None
        if logits == "all":
            out_logits = head(hidden)
        elif logits == "last":
            out_logits = head(hidden[:, -1])
        return ChatUniViOutput(
            last_hidden_state=hidden,
            attention_mask=mask,
            logits=out_logits,
            events=[s.events for s in samples],
            visual_spans=[s.visual_span for s in samples],
            merged_visual=[s.merged_visual for s in samples],
            cluster_trace=[s.cluster_trace for s in samples],
        )


def _llama_class():
    """LlamaForCausalLM that knows the checkpoint's non-LLaMA keys, so loading it reports only
    real surprises (the vision tower and projector are loaded separately)."""
    from transformers import LlamaForCausalLM

    class ChatUniViLlama(LlamaForCausalLM):
        _keys_to_ignore_on_load_unexpected = [r"^model\.vision_tower\.", r"^model\.mm_projector\.", r"rotary_emb\.inv_freq$"]

    return ChatUniViLlama


def strip_prefix(tensors: dict[str, torch.Tensor], prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    """Checkpoint names under `prefix` -> the module's own names. The official names carry
    `vision_model.`; transformers v5's CLIPVisionModel has no such level, so drop it if needed."""
    own = set(module.state_dict())
    out = {}
    for name, tensor in tensors.items():
        if not name.startswith(prefix):
            continue
        local = name[len(prefix):]
        if local not in own and local.startswith("vision_model.") and local[len("vision_model."):] in own:
            local = local[len("vision_model."):]
        out[local] = tensor
    return out


def load_exact(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict that names missing, unexpected and mis-shaped weights."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise TeacherError(f"{what}: missing weights {missing[:8]}, unexpected weights {unexpected[:8]}")
    for name, tensor in state.items():
        expected = own[name].shape
        if tensor.shape != expected:
            raise TeacherError(f"{what}: {name} has shape {tuple(tensor.shape)}, expected {tuple(expected)}")
    module.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------------------------
# The teacher
# --------------------------------------------------------------------------------------------

ANSWER_INSTRUCTION = "Answer with the option's letter from the given choices directly."
TEACHER_EXTRA_KEYS = {"conv_mode", "max_frames", "attn_implementation"}


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TeacherError(f"device {name!r} requested but CUDA is not available")
    if name != "cpu" and not name.startswith("cuda"):
        raise TeacherError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return name


def load_tokenizer(path: Path, config: dict):
    from transformers import AutoTokenizer

    names = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
    if not any((path / name).is_file() for name in names):
        raise TeacherError(f"Chat-UniVi checkpoint {path}: no tokenizer ({', '.join(names)}); the teacher needs one")
    if not (path / "tokenizer.json").is_file() and (path / "tokenizer.model").is_file():
        import importlib.util

        if importlib.util.find_spec("google.protobuf") is None:  # transformers converts tokenizer.model through it
            raise TeacherError(f"Chat-UniVi checkpoint {path}: its tokenizer is tokenizer.model only (as released), which "
                               f"transformers converts with protobuf; install it (requirements.txt pins it)")
    try:
        return AutoTokenizer.from_pretrained(str(path), config=llama_config(config))
    except (OSError, ValueError) as err:
        raise TeacherError(f"Chat-UniVi checkpoint {path}: tokenizer could not be loaded: {err}") from err


def letter_token_ids(tokenizer, answer_prefix: str) -> list[int]:
    """Token id of each option letter as the first answer token after `answer_prefix`
    ('...ASSISTANT:' + ' A'), looked up from the tokenizer."""
    base = tokenizer(answer_prefix, add_special_tokens=False)["input_ids"]
    ids = []
    for letter in LETTERS:
        extended = tokenizer(f"{answer_prefix} {letter}", add_special_tokens=False)["input_ids"]
        if extended[: len(base)] != base or len(extended) != len(base) + 1:
            raise TeacherError(f"tokenizer: answer letter {letter!r} is not one token after {answer_prefix!r}")
        ids.append(extended[-1])
    if len(set(ids)) != len(ids):
        raise TeacherError(f"tokenizer: answer letters share token ids {ids}")
    return ids


class ChatUniViTeacher(Teacher):
    """Chat-UniVi multiple-choice scorer: one forward pass per batch (left padding).

    choice_logits: next-token logits of ' A'..' E' (first len(choices)) right after 'ASSISTANT:'.
    hidden: the final-norm hidden state of the last prompt token (the answer position), float32.
    extra: conv_mode ('v1' default, the reference video-QA template; or 'simple'),
    max_frames (64, the reference video-QA cap; frames beyond it are subsampled uniformly),
    attn_implementation (passed to LLaMA, e.g. 'eager' or 'sdpa').

    Frames: `num_frames` (if set) picks a uniform subset of the stored frames. One frame (or two)
    takes the image path (112 tokens per frame); three or more the video path (112 per event).
    With 17-64 frames the reference's event split is decided by near-ties (ARCHITECTURE.md
    section 8), so events there are deterministic here but not guaranteed to match the reference.
    """

    family = "chatunivi"

    def __init__(self, config: TeacherConfig):
        super().__init__(config)
        if config.family != self.family:
            raise TeacherError(f"ChatUniViTeacher got family {config.family!r}")
        unknown = set(config.extra) - TEACHER_EXTRA_KEYS
        if unknown:
            raise TeacherError(f"chatunivi teacher: unknown extra options {sorted(unknown)} (known: {sorted(TEACHER_EXTRA_KEYS)})")
        if config.dtype not in DTYPES:
            raise TeacherError(f"chatunivi teacher: dtype must be one of {sorted(DTYPES)}, got {config.dtype!r}")
        self.template = CONV_TEMPLATES.get(config.extra.get("conv_mode", "v1"))
        if self.template is None:
            raise TeacherError(f"chatunivi teacher: conv_mode must be one of {sorted(CONV_TEMPLATES)}")
        self.max_frames = int(config.extra.get("max_frames", 64))
        path = Path(config.model)
        checkpoint_config = read_checkpoint_config(path)  # family check before the slow loading
        self.tokenizer = load_tokenizer(path, checkpoint_config)
        device = torch.device(resolve_device(config.device))
        placement = placement_kwargs(config, device, DTYPES[config.dtype])  # device_map, quantization (bitsandbytes)
        self.model = ChatUniViModel.from_pretrained(
            path,
            dtype=DTYPES[config.dtype],
            device=device if "device_map" not in placement else "cpu",
            device_map=placement.get("device_map"),
            quantization_config=placement.get("quantization_config"),
            attn_implementation=config.extra.get("attn_implementation"),
        )
        self.image_processor = load_image_processor(path, self.model.checkpoint_config)
        self.hidden_size = self.model.hidden_size
        self.letter_ids = letter_token_ids(self.tokenizer, f"{self.template.roles[1]}:")
        if max(self.letter_ids) >= self.model.llm.config.vocab_size:
            raise TeacherError(f"tokenizer letter ids {self.letter_ids} exceed the model vocabulary")

    # ---- inputs -----------------------------------------------------------------------------

    def user_message(self, item: TeacherInput, num_frames: int) -> str:
        parts = [IMAGE_PLACEHOLDER * num_frames]
        if item.subtitles:
            parts.append(f"Subtitles: {item.subtitles}")
        parts += [item.question, options_block(item.choices), ANSWER_INSTRUCTION]
        return "\n".join(parts)

    def select_frames(self, frames: np.ndarray) -> np.ndarray:
        if self.config.num_frames is not None:
            from cater.data.frames import uniform_indices

            frames = frames[uniform_indices(len(frames), self.config.num_frames)]
        if len(frames) > self.max_frames:  # the reference loader's integer-linspace subsample
            frames = frames[np.linspace(0, len(frames) - 1, self.max_frames).astype(int)]
        return frames

    def pixel_values(self, frames: np.ndarray) -> torch.Tensor:
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise TeacherError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
        return self.image_processor(images=list(frames), return_tensors="pt")["pixel_values"]

    def encode(self, item: TeacherInput) -> tuple[torch.Tensor, torch.Tensor, str]:
        """(input_ids with placeholders, pixel values [T,3,S,S], prompt text) of one sample."""
        self.check_input(item)
        frames = self.select_frames(item.frames)
        prompt = self.template.prompt(self.user_message(item, len(frames)))
        encode = lambda text: self.tokenizer(text)["input_ids"]  # noqa: E731
        ids = tokenize_with_placeholders(prompt, encode, self.tokenizer.bos_token_id)
        return torch.tensor(ids), self.pixel_values(frames), prompt

    # ---- scoring ----------------------------------------------------------------------------

    def forward(self, batch: list[TeacherInput], logits: str | None = "last") -> ChatUniViOutput:
        encoded = [self.encode(item) for item in batch]
        return self.model([e[0] for e in encoded], [e[1] for e in encoded], logits=logits)

    # ---- fine-tuning ------------------------------------------------------------------------

    def letter_logits(self, batch: list[TeacherInput]) -> torch.Tensor:
        """As `score`, but differentiable (LLaMA, projector, embeddings; the vision tower and the
        clustering are frozen): letter logits [B, max choices], float32, -inf past a sample's
        choices. One pass for the whole batch (`score` splits it into `batch_size` chunks)."""
        for item in batch:
            self.check_input(item)
        encoded = [self.encode(item) for item in batch]
        result = self.model.forward_with_grad([e[0] for e in encoded], [e[1] for e in encoded], logits="last")
        return letter_matrix(batch, self.letter_ids, result.logits.float())

    def trainable_parameters(self) -> list[nn.Parameter]:
        """LLaMA and the projector; the CLIP vision tower stays frozen (as in the Chat-UniVi recipe)."""
        for param in self.model.vision_tower.parameters():
            param.requires_grad_(False)
        trained = []
        for module in (self.model.llm, self.model.mm_projector):
            for _, param in sorted(module.named_parameters(), key=lambda kv: kv[0]):
                param.requires_grad_(True)
                trained.append(param)
        return trained

    @contextmanager
    def caching_frozen_inputs(self):
        """Memoize the frozen part (CLIP features, clustering) per video while the block runs."""
        previous, self.model.visual_memo = self.model.visual_memo, {}
        try:
            yield
        finally:
            self.model.visual_memo = previous

    def save_pretrained(self, path: str | Path) -> None:
        """The official layout (see the module docstring) with the current weights, plus the tokenizer
        and the non-weight files of the source checkpoint (generation and bundled CLIP configs)."""
        from safetensors.torch import save_file

        path, source = Path(path), Path(self.config.model)
        state = official_state(self.model.llm, self.model.vision_tower, self.model.mm_projector,
                               self.model.checkpoint_config)
        save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
        (path / "config.json").write_text(json.dumps(self.model.checkpoint_config, indent=2))
        for name in ("generation_config.json", CLIP_CONFIG_FILE, CLIP_PREPROCESSOR_FILE):
            if (source / name).is_file():
                (path / name).write_bytes((source / name).read_bytes())
        self.tokenizer.save_pretrained(str(path))

    def score(self, batch: list[TeacherInput]) -> list[TeacherOutput]:
        for item in batch:  # fail before any compute
            self.check_input(item)
        outputs = []
        size = max(1, self.config.batch_size)
        for start in range(0, len(batch), size):
            chunk = batch[start:start + size]
            result = self.forward(chunk, logits="last")
            last_logits = result.logits.float().cpu()
            hidden = result.last_hidden_state[:, -1].float().cpu()
            # the shared guard: non-finite letter logits or hidden state make the output missing, never a guess
            outputs.extend(letter_output(item, self.letter_ids, last_logits[row], hidden[row]) for row, item in enumerate(chunk))
        return outputs


# --------------------------------------------------------------------------------------------
# Tiny random checkpoint in the official layout
# --------------------------------------------------------------------------------------------

TINY_LLAMA = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, vocab_size=320, max_position_embeddings=4096, rms_norm_eps=1e-5)
TINY_CLIP = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=4, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=64)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def tiny_tokenizer():
    """(LLaMA's SentencePiece tokenizer, the `tokenizer.model` bytes): Chat-UniVi-7B's family, <unk>=0, <s>=1,
    </s>=2, padding with <unk> as the LLaVA-style training does."""
    from cater.teachers.tiny_tokenizers import llama_sentencepiece

    return llama_sentencepiece(**TINY_TOKENIZER_CONFIG)


TINY_TOKENIZER_CONFIG = {"pad_token": "<unk>", "padding_side": "right", "model_max_length": 2048}


def tiny_checkpoint_config(vocab_size: int) -> dict:
    from transformers import LlamaConfig

    llama = LlamaConfig(**{**TINY_LLAMA, "vocab_size": vocab_size}, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False).to_dict()
    return {
        **{k: llama[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size", "max_position_embeddings", "rms_norm_eps", "hidden_act", "initializer_range", "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings")},
        "architectures": ["ChatUniViLlamaForCausalLM"],
        "model_type": "ChatUniVi",
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "pretraining_tp": 1,
        "use_cache": True,
        "torch_dtype": "float32",
        "mm_vision_tower": "openai/clip-vit-large-patch14",
        "mm_hidden_size": TINY_CLIP["hidden_size"],
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "use_mm_proj": True,
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "mm_use_box_start_end": False,
        "image_aspect_ratio": "square",
        "image_grid_pinpoints": None,
        "tune_mm_mlp_adapter": False,
        "freeze_mm_mlp_adapter": False,
        "config": {
            "use_cluster": True, "freeze": False, "mm_tune": True, "vision_tune": False,
            "spatial_cluster_rate0": 64, "spatial_cluster_rate1": 32, "spatial_cluster_rate2": 16,
            "temporal_cluster_rate": 1 / 16,
        },
    }


def randomise(module: nn.Module, generator: torch.Generator, std: float = 0.05) -> None:
    """Non-trivial random weights: norm gains around 1, every bias non-zero."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "norm" in name and name.endswith("weight"):
                param.copy_(1 + 0.2 * noise)
            elif "embed" in name:
                param.copy_(0.5 * noise)
            else:
                param.copy_(std * noise)


def official_state(llm, clip, projector: nn.Linear, config: dict) -> dict[str, torch.Tensor]:
    """The weights under the official checkpoint names (LLaMA `model.*`/`lm_head.*`, the projector,
    the CLIP tower under `model.vision_tower.vision_tower.vision_model.*`, and the constant
    `rotary_emb.inv_freq` buffers transformers 4.31 wrote)."""
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    theta = float(config.get("rope_theta", 10000.0))
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    state = {name: t.detach().contiguous() for name, t in llm.state_dict().items()}
    for layer in range(config["num_hidden_layers"]):
        state[f"model.layers.{layer}.self_attn.rotary_emb.inv_freq"] = inv_freq.clone()
    for name, tensor in clip.state_dict().items():
        name = name if name.startswith("vision_model.") else "vision_model." + name
        if not name.endswith("position_ids"):
            state[VISION_PREFIX + name] = tensor.detach().contiguous()
    for name, tensor in projector.state_dict().items():
        state[PROJECTOR_PREFIX + name] = tensor.detach().contiguous()
    return state


def write_tiny_chatunivi(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny random Chat-UniVi checkpoint (official layout + tokenizer + CLIP configs)."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaForCausalLM

    from cater.teachers.tiny_tokenizers import llama_tokenizer_config

    path = Path(path)
    generator = torch.Generator().manual_seed(seed)
    tokenizer, sentencepiece_model = tiny_tokenizer()
    config = tiny_checkpoint_config(len(tokenizer))

    llm = LlamaForCausalLM(llama_config(config))
    clip_config = CLIPVisionConfig(**TINY_CLIP)
    clip = CLIPVisionModel(clip_config)
    projector = nn.Linear(TINY_CLIP["hidden_size"], config["hidden_size"])
    for module in (llm, clip, projector):
        randomise(module, generator)

    state = official_state(llm, clip, projector, config)

    with atomic_directory(path) as staging:
        save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
        (staging / "config.json").write_text(json.dumps(config, indent=2))
        (staging / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}, indent=2))
        (staging / CLIP_CONFIG_FILE).write_text(clip_config.to_json_string())
        (staging / CLIP_PREPROCESSOR_FILE).write_text(json.dumps({
            "image_processor_type": "CLIPImageProcessor",
            "crop_size": {"height": TINY_CLIP["image_size"], "width": TINY_CLIP["image_size"]},
            "size": {"shortest_edge": TINY_CLIP["image_size"]},
            "do_resize": True, "do_center_crop": True, "do_rescale": True, "do_normalize": True,
            "do_convert_rgb": True, "resample": 3, "rescale_factor": 1 / 255,
            "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
        }, indent=2))
        # as the released checkpoints: tokenizer.model and its config, no tokenizer.json (loading converts it)
        (staging / "tokenizer.model").write_bytes(sentencepiece_model)
        (staging / "tokenizer_config.json").write_text(json.dumps(llama_tokenizer_config(**TINY_TOKENIZER_CONFIG), indent=2))
    return path
