"""Reading (and writing) Chat-UniVi checkpoints in the official layout.

`config.json` (a LLaMA config with `model_type: "ChatUniVi"`, the `mm_*` keys and a nested `config` with the
clustering rates) and the weights under `model.*`/`lm_head.*` (LLaMA), `model.mm_projector.*` and
`model.vision_tower.vision_tower.vision_model.*` (CLIP). `...rotary_emb.inv_freq` keys (written by
transformers 4.31) are constants and are ignored on loading. The CLIP config and preprocessor config are
looked up as the package docstring says.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from cater.teachers.base import TeacherError
from cater.teachers.chatunivi.clustering import ClusterSettings

VISION_PREFIX = "model.vision_tower.vision_tower."
PROJECTOR_PREFIX = "model.mm_projector."
CLIP_CONFIG_FILE = "clip_vision_config.json"
CLIP_PREPROCESSOR_FILE = "clip_preprocessor_config.json"


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
