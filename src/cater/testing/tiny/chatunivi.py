"""A tiny random Chat-UniVi checkpoint in the official layout (`cater.teachers.chatunivi`): LLaMA, CLIP tower and
projector weights under the official names, tokenizer.model, and the CLIP configs the checkpoint bundles."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from cater.io import atomic_directory
from cater.teachers.chatunivi.checkpoint import CLIP_CONFIG_FILE, CLIP_PREPROCESSOR_FILE, llama_config, official_state

TINY_LLAMA = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, vocab_size=320, max_position_embeddings=4096, rms_norm_eps=1e-5)
TINY_CLIP = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=4, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=64)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def tiny_tokenizer():
    """(LLaMA's SentencePiece tokenizer, the `tokenizer.model` bytes): Chat-UniVi-7B's family, <unk>=0, <s>=1,
    </s>=2, padding with <unk> as the LLaVA-style training does."""
    from cater.testing.tiny.tokenizers import llama_sentencepiece

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


def write_tiny_chatunivi(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny random Chat-UniVi checkpoint (official layout + tokenizer + CLIP configs)."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaForCausalLM

    from cater.testing.tiny.tokenizers import llama_tokenizer_config

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
