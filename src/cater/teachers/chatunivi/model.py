"""The Chat-UniVi model: CLIP tower + token clustering + projector + LLaMA, loaded from the official layout."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from cater.teachers.base import TeacherError
from cater.teachers.chatunivi.checkpoint import (
    PROJECTOR_PREFIX, VISION_PREFIX, _llama_class, cluster_settings, llama_config, load_exact, load_vision_config,
    read_checkpoint_config, read_tensors, strip_prefix, weight_files,
)
from cater.teachers.chatunivi.clustering import cluster_image, cluster_video

IMAGE_TOKEN_INDEX = -200  # placeholder id of one frame in input_ids (the reference's constant)


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

