"""Exact weight memory of a teacher, from its config files alone (no weights are read or allocated).

Each family's architecture is built from the checkpoint folder's config on the meta device
(`accelerate.init_empty_weights`), exactly as `from_pretrained` would build it, and its parameters are
counted per component. Bytes follow from the counts:

- fp32 / fp16 / bf16: parameters x 4 / 2 / 2 bytes (exact).
- 8bit (bitsandbytes LLM.int8) and 4bit (NF4, block size 64, no double quantization, as `quantization: 4bit`
  configures it) replace exactly the layers transformers' `replace_with_bnb_linear` replaces: modules whose type
  is `nn.Linear` itself (not a subclass such as IDEFICS's decoupled head) inside the model that
  `from_pretrained` loads with the quantization config, minus the modules it skips. No
  `llm_int8_skip_modules` is passed (`cater.teachers.base.quantization_config`), so transformers skips its
  defaults: the output embeddings (`lm_head`, with IDEFICS's `lm_head.additional_fc`), the weights tied to them
  (embeddings, not Linear) and the last parameter's module (the head again); hence the rule "plain nn.Linear
  under `model.`" (`QUANTIZED`).
  Chat-UniVi quantizes its LLaMA only: the vision tower and the projector load in the plain dtype.
  8bit: those weights in int8 plus one fp32 scale per output row; 4bit: packed two per byte plus one fp32
  absmax per block of 64. Everything else stays in the teacher's `dtype` (`rest`, fp16 unless told).
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


QUANTIZED = ("model.",)  # module-name prefixes (of the model loaded with the quantization config) bnb replaces
REST_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


@dataclass
class Component:
    name: str
    parameters: int = 0
    linear_weights: int = 0  # elements of the nn.Linear weights bitsandbytes quantizes (see the module docstring)
    linear_rows: int = 0  # their output rows (LLM.int8 keeps one scale per row)


@dataclass
class Footprint:
    family: str
    model: str
    components: list[Component] = field(default_factory=list)
    dtype: str = "fp16"  # the teacher's dtype: what the unquantized weights take under 8bit/4bit

    @property
    def parameters(self) -> int:
        return sum(c.parameters for c in self.components)

    def bytes(self, precision: str) -> int:
        total = self.parameters
        quantized = sum(c.linear_weights for c in self.components)
        rows = sum(c.linear_rows for c in self.components)
        rest = REST_BYTES[self.dtype] * (total - quantized)
        if precision == "fp32":
            return 4 * total
        if precision in ("fp16", "bf16"):
            return 2 * total
        if precision == "8bit":
            return quantized + 4 * rows + rest
        if precision == "4bit":
            return (quantized + 1) // 2 + 4 * -(-quantized // BLOCK_4BIT) + rest
        raise ValueError(f"unknown precision {precision!r} (fp32, fp16, bf16, 8bit, 4bit)")


def split(model, parts: list[tuple[str, str | None]], quantized: tuple[str, ...] = QUANTIZED) -> list[Component]:
    """`model`'s parameters (tied ones once, under their first name) per component, in the order of `parts`:
    (component name, module-name prefix; None: everything no other prefix covers), and the weights bitsandbytes
    quantizes: modules of type exactly nn.Linear whose names start with one of `quantized` (() = none)."""
    import torch.nn as nn

    components = [Component(name) for name, _ in parts]

    def owner(name: str) -> Component:
        for component, (_, prefix) in zip(components, parts):
            if prefix is not None and (name == prefix or name.startswith(prefix + ".")):
                return component
        return next(component for component, (_, prefix) in zip(components, parts) if prefix is None)

    for name, param in model.named_parameters():
        owner(name).parameters += param.numel()
    for name, module in model.named_modules():
        if type(module) is nn.Linear and name.startswith(quantized):
            component = owner(name)
            component.linear_weights += module.weight.numel()
            component.linear_rows += module.out_features
    return components


def build_empty(build):
    """`build()` on the meta device, its weights then tied as `from_pretrained` ties them (under `init_empty_weights`
    they are not, and `tie_weights` has no effect inside it), so a tied head counts once, with the embeddings."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = build()
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model


def footprint(family: str, model_dir: str | Path, dtype: str = "fp16") -> Footprint:
    path = Path(model_dir)
    if family not in FAMILIES:
        raise TeacherError(f"teacher memory: family {family!r} is not covered (one of {', '.join(FAMILIES)})")
    if dtype not in REST_BYTES:
        raise TeacherError(f"teacher memory: dtype {dtype!r} is not one of {', '.join(REST_BYTES)}")
    if not (path / "config.json").is_file():
        raise TeacherError(f"teacher memory: {path}/config.json not found (the checkpoint's config is all it needs)")
    result = Footprint(family, str(model_dir), dtype=dtype)
    if family == "videollava":
        from transformers import VideoLlavaConfig, VideoLlavaForConditionalGeneration

        model = build_empty(lambda: VideoLlavaForConditionalGeneration(VideoLlavaConfig.from_pretrained(str(path))))
        result.components = split(model, [("language model", None), ("lm_head", "lm_head"),
                                          ("image tower", "model.image_tower"), ("video tower", "model.video_tower"),
                                          ("projector", "model.multi_modal_projector")])
    elif family == "idefics":
        from transformers import IdeficsConfig, IdeficsForVisionText2Text

        model = build_empty(lambda: IdeficsForVisionText2Text(IdeficsConfig.from_pretrained(str(path))))
        perceiver = [("perceiver", "model.perceiver_resampler")] if model.model.perceiver_resampler is not None else []
        result.components = split(model, [("language model", None), ("lm_head", "lm_head"),
                                          ("vision encoder", "model.vision_model"), *perceiver,
                                          ("gated cross-attention", "model.gated_cross_attn_layers")])
    else:
        import torch.nn as nn
        from transformers import CLIPVisionModel

        from cater.teachers.chatunivi.checkpoint import _llama_class, llama_config, load_vision_config, read_checkpoint_config

        config = read_checkpoint_config(path)
        llm = build_empty(lambda: _llama_class()(llama_config(config)))  # the part from_pretrained loads (and quantizes)
        tower = build_empty(lambda: CLIPVisionModel(load_vision_config(path, config)))
        projector = build_empty(lambda: nn.Linear(int(config["mm_hidden_size"]), int(config["hidden_size"])))
        result.components = [*split(llm, [("language model", None), ("lm_head", "lm_head")]),
                             *split(tower, [("vision tower", None)], quantized=()),
                             *split(projector, [("projector", None)], quantized=())]
    return result


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    raise AssertionError


def format_table(footprints: list[Footprint], precisions=("fp32", "fp16", "8bit", "4bit")) -> str:
    """A markdown table; the quantized figures name the dtype the unquantized weights take (`Footprint.dtype`)."""
    lines = [f"| teacher | checkpoint | parameters | {' | '.join(precisions)} |", "|---|---|---|" + "---|" * len(precisions)]
    for fp in footprints:
        sizes = " | ".join(human_bytes(fp.bytes(p)) + (f" (rest {fp.dtype})" if p in ("8bit", "4bit") else "")
                           for p in precisions)
        lines.append(f"| {fp.family} | `{fp.model}` | {fp.parameters:,} | {sizes} |")
        for c in fp.components:
            lines.append(f"|  | {c.name} | {c.parameters:,} | " + " | ".join("" for _ in precisions) + " |")
    return "\n".join(lines)
