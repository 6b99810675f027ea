"""Exact weight memory of a teacher, from its config files alone (no weights are read or allocated).

Each family's architecture is built from the checkpoint folder's config on the meta device
(`accelerate.init_empty_weights`), exactly as `from_pretrained` would build it, and its parameters are
counted per component. Bytes follow from the counts:

- fp32 / fp16 / bf16: parameters x 4 / 2 / 2 bytes (exact).
- 8bit (bitsandbytes LLM.int8): every nn.Linear weight except the output head (transformers keeps the
  `lm_head` unquantized) in int8 plus one fp32 scale per output row; everything else in fp16.
- 4bit (bitsandbytes NF4, block size 64, no double quantization, as `quantization: 4bit` configures it):
  those weights packed two per byte plus one fp32 absmax per block of 64; everything else in fp16.
The quantized figures apply bitsandbytes' storage rule to the exact counts; they are not measurements.
Activations, the KV cache and the CUDA context come on top.

Only config files are needed, so the table for the real 7B/9B teachers can be printed on any machine that
has their config.json (a few KB each, no weights): `cater teacher-memory --model <dir> --family <family>`.
OpenFlamingo is not covered: open_flamingo builds its model by loading the language model's weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cater.teachers.base import TeacherError

FAMILIES = ("videollava", "idefics", "chatunivi")
BLOCK_4BIT = 64


@dataclass
class Component:
    name: str
    parameters: int = 0
    linear_weights: int = 0  # elements of quantizable nn.Linear weights (not the output head)
    linear_rows: int = 0  # their output rows (LLM.int8 keeps one scale per row)


@dataclass
class Footprint:
    family: str
    model: str
    components: list[Component] = field(default_factory=list)

    @property
    def parameters(self) -> int:
        return sum(c.parameters for c in self.components)

    def bytes(self, precision: str) -> int:
        total = self.parameters
        quantized = sum(c.linear_weights for c in self.components)
        rows = sum(c.linear_rows for c in self.components)
        if precision == "fp32":
            return 4 * total
        if precision in ("fp16", "bf16"):
            return 2 * total
        if precision == "8bit":
            return quantized + 4 * rows + 2 * (total - quantized)
        if precision == "4bit":
            return (quantized + 1) // 2 + 4 * -(-quantized // BLOCK_4BIT) + 2 * (total - quantized)
        raise ValueError(f"unknown precision {precision!r} (fp32, fp16, bf16, 8bit, 4bit)")


def count(module, name: str, head: str | None = None) -> Component:
    """Parameters of `module` (tied ones once) and its quantizable Linear weights (all but `head`)."""
    import torch.nn as nn

    component = Component(name, sum(p.numel() for p in module.parameters()))
    for module_name, child in module.named_modules():
        if isinstance(child, nn.Linear) and module_name != head:
            component.linear_weights += child.weight.numel()
            component.linear_rows += child.out_features
    return component


def footprint(family: str, model_dir: str | Path) -> Footprint:
    from accelerate import init_empty_weights

    path = Path(model_dir)
    if family not in FAMILIES:
        raise TeacherError(f"teacher memory: family {family!r} is not covered (one of {', '.join(FAMILIES)})")
    if not (path / "config.json").is_file():
        raise TeacherError(f"teacher memory: {path}/config.json not found (the checkpoint's config is all it needs)")
    result = Footprint(family, str(model_dir))
    with init_empty_weights():
        if family == "videollava":
            from transformers import VideoLlavaConfig, VideoLlavaForConditionalGeneration

            model = VideoLlavaForConditionalGeneration(VideoLlavaConfig.from_pretrained(str(path)))
            inner = model.model
            result.components = [count(inner.language_model, "language model"), count(model.lm_head, "lm_head", head=""),
                                 count(inner.image_tower, "image tower"), count(inner.video_tower, "video tower"),
                                 count(inner.multi_modal_projector, "projector")]
        elif family == "idefics":
            from transformers import IdeficsConfig, IdeficsForVisionText2Text

            model = IdeficsForVisionText2Text(IdeficsConfig.from_pretrained(str(path)))
            inner = model.model
            vision = count(inner.vision_model, "vision encoder")
            perceiver = count(inner.perceiver_resampler, "perceiver") if inner.perceiver_resampler is not None else None
            cross = count(inner.gated_cross_attn_layers, "gated cross-attention")
            everything = count(inner, "all")
            language = Component("language model", everything.parameters - vision.parameters - cross.parameters
                                 - (perceiver.parameters if perceiver else 0),
                                 everything.linear_weights - vision.linear_weights - cross.linear_weights
                                 - (perceiver.linear_weights if perceiver else 0),
                                 everything.linear_rows - vision.linear_rows - cross.linear_rows
                                 - (perceiver.linear_rows if perceiver else 0))
            result.components = [language, count(model.lm_head, "lm_head", head=""), vision,
                                 *([perceiver] if perceiver else []), cross]
        else:
            import torch.nn as nn
            from transformers import CLIPVisionModel

            from cater.teachers.chatunivi import _llama_class, llama_config, load_vision_config, read_checkpoint_config

            config = read_checkpoint_config(path)
            llm = _llama_class()(llama_config(config))
            result.components = [count(llm.model, "language model"), count(llm.lm_head, "lm_head", head=""),
                                 count(CLIPVisionModel(load_vision_config(path, config)), "vision tower"),
                                 count(nn.Linear(int(config["mm_hidden_size"]), int(config["hidden_size"])), "projector")]
    head = model.lm_head if family != "chatunivi" else llm.lm_head
    embeddings = (model if family != "chatunivi" else llm).get_input_embeddings()
    if head.weight is embeddings.weight:  # tied: counted once, with the embeddings
        lm_head = next(c for c in result.components if c.name == "lm_head")
        lm_head.parameters = 0
    return result


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    raise AssertionError


def format_table(footprints: list[Footprint], precisions=("fp32", "fp16", "8bit", "4bit")) -> str:
    lines = [f"| teacher | checkpoint | parameters | {' | '.join(precisions)} |", "|---|---|---|" + "---|" * len(precisions)]
    for fp in footprints:
        sizes = " | ".join(human_bytes(fp.bytes(p)) for p in precisions)
        lines.append(f"| {fp.family} | `{fp.model}` | {fp.parameters:,} | {sizes} |")
        for c in fp.components:
            lines.append(f"|  | {c.name} | {c.parameters:,} | " + " | ".join("" for _ in precisions) + " |")
    return "\n".join(lines)
