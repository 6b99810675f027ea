"""Tiny random Flamingo checkpoints in each backend's real format (`cater.teachers.flamingo`): IDEFICS
(`from_pretrained` files) and OpenFlamingo (manifest + open_clip local-dir + MPT + checkpoint.pt)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cater.io import atomic_directory
from cater.teachers.base import TeacherError
from cater.teachers.flamingo.idefics import IDEFICS_END_OF_UTTERANCE
from cater.teachers.flamingo.openflamingo import LOCAL_DIR, OPENFLAMINGO_MANIFEST
from cater.teachers.flamingo.teacher import BACKENDS, DEFAULT_BACKEND

TINY_IMAGE = 32
TINY_PATCH = 8
TINY_HIDDEN = 32
TINY_LAYERS = 2
CLIP_DIR = "clip"
LM_DIR = "lm"
CHECKPOINT_FILE = "checkpoint.pt"


GATE_PARAMS = ("attn_gate", "ff_gate", "alpha_cross_attn", "alpha_dense")  # OpenFlamingo, IDEFICS


def _seeded_init(named_params, seed: int) -> None:
    """Fill each (name, parameter) from one seeded generator, in name order, at a scale giving O(1) logits."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(named_params, key=lambda kv: kv[0]):
            if param.ndim == 1 and ("norm" in name or name.endswith("ln_1.weight") or name.endswith("ln_2.weight")
                                    or name.endswith(("ln_pre.weight", "ln_post.weight"))):
                param.fill_(1.0)
            elif name.endswith(GATE_PARAMS):
                param.fill_(1.0)  # open the tanh gates, so the frames reach the language model
            elif param.ndim <= 1 or param.shape[-1] == 1:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)  # biases and other vectors
            else:
                fan_in = int(np.prod(param.shape[1:]))
                embedding = "embed" in name or "wte" in name or "latents" in name or "class_embedding" in name
                param.copy_(torch.randn(param.shape, generator=generator) * (1.0 if embedding else fan_in ** -0.5))


def _write_tiny_idefics(path: Path, seed: int) -> None:
    from transformers import IdeficsConfig, IdeficsForVisionText2Text, IdeficsImageProcessor, IdeficsProcessor

    from cater.testing.tiny.tokenizers import llama_sentencepiece

    # IDEFICS-9B's tokenizer is LLaMA's SentencePiece with <end_of_utterance> and the two image tokens added;
    # the image tokens come last, in the decoupled "additional" embedding
    image_specials = ["<fake_token_around_image>", "<image>"]
    tokenizer, sentencepiece_model = llama_sentencepiece((IDEFICS_END_OF_UTTERANCE, *image_specials), pad_token="<unk>")
    processor = IdeficsProcessor(IdeficsImageProcessor(image_size=TINY_IMAGE), tokenizer)
    config = IdeficsConfig(
        vocab_size=len(tokenizer) - len(image_specials), additional_vocab_size=len(image_specials),
        hidden_size=TINY_HIDDEN, intermediate_size=2 * TINY_HIDDEN, num_hidden_layers=TINY_LAYERS,
        num_attention_heads=2, max_position_embeddings=1024, cross_layer_interval=1,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, use_resampler=True,
        vision_config=dict(embed_dim=TINY_HIDDEN, image_size=TINY_IMAGE, patch_size=TINY_PATCH, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=2 * TINY_HIDDEN),
        perceiver_config=dict(use_resampler=True, resampler_n_latents=4, resampler_depth=1, resampler_n_heads=2,
                              resampler_head_dim=16),
    )
    model = IdeficsForVisionText2Text(config)
    _seeded_init(model.named_parameters(), seed)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    (path / "tokenizer.model").write_bytes(sentencepiece_model)


def _write_tiny_openflamingo(path: Path, seed: int) -> None:
    import open_clip
    import torch
    from open_flamingo import create_model_and_transforms
    from safetensors.torch import save_file
    from transformers import MptConfig, MptForCausalLM

    from cater.testing.tiny.tokenizers import gpt_neox_bpe

    # vision encoder: an open_clip model in a local-dir (config + weights)
    clip_cfg = {"embed_dim": TINY_HIDDEN,
                "vision_cfg": {"image_size": TINY_IMAGE, "patch_size": TINY_PATCH, "width": TINY_HIDDEN,
                               "layers": 1, "head_width": 16},
                "text_cfg": {"context_length": 8, "vocab_size": 64, "width": TINY_HIDDEN, "heads": 2, "layers": 1}}
    (path / CLIP_DIR).mkdir()
    (path / CLIP_DIR / "open_clip_config.json").write_text(json.dumps({"model_cfg": clip_cfg}, indent=2))
    clip = open_clip.CLIP(**clip_cfg)
    _seeded_init(clip.named_parameters(), seed)
    save_file(clip.state_dict(), path / CLIP_DIR / "open_clip_model.safetensors")

    # language model: MPT (as in OpenFlamingo-9B-vitl-mpt7b) with GPT-NeoX's tokenizer class (byte-level BPE);
    # the loader adds <|endofchunk|>, <image> and <PAD> and resizes the embeddings, as for the real model
    tokenizer = gpt_neox_bpe()
    lm_config = MptConfig(vocab_size=len(tokenizer), d_model=TINY_HIDDEN, n_heads=2, n_layers=TINY_LAYERS,
                          expansion_ratio=2, max_seq_len=1024, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id)
    lm = MptForCausalLM(lm_config)
    _seeded_init(lm.named_parameters(), seed + 1)
    lm.save_pretrained(path / LM_DIR)
    tokenizer.save_pretrained(path / LM_DIR)

    manifest = {"clip_vision_encoder_path": f"{LOCAL_DIR}{CLIP_DIR}", "clip_vision_encoder_pretrained": None,
                "lang_encoder_path": LM_DIR, "tokenizer_path": LM_DIR, "cross_attn_every_n_layers": 1,
                "checkpoint": CHECKPOINT_FILE}
    resolved = dict(manifest, clip_vision_encoder_path=f"{LOCAL_DIR}{path / CLIP_DIR}",
                    lang_encoder_path=str(path / LM_DIR), tokenizer_path=str(path / LM_DIR))
    resolved.pop("checkpoint")
    model, _, _ = create_model_and_transforms(**resolved)
    # the checkpoint holds what OpenFlamingo trains: perceiver, gated cross-attention, input embeddings
    trained = {name: param for name, param in model.named_parameters() if param.requires_grad}
    _seeded_init(trained.items(), seed + 2)
    torch.save({name: param.detach().clone() for name, param in trained.items()}, path / CHECKPOINT_FILE)
    (path / OPENFLAMINGO_MANIFEST).write_text(json.dumps(manifest, indent=2))


def write_tiny_flamingo(path: str | Path, seed: int = 0, backend: str | None = DEFAULT_BACKEND) -> Path:
    """Write a tiny random checkpoint of `backend` (idefics | openflamingo) to `path`, deterministic in `seed`.

    idefics: config.json + model.safetensors + processor/tokenizer files (load with from_pretrained).
    openflamingo: openflamingo.json + clip/ (open_clip local-dir) + lm/ (MPT + tokenizer) + checkpoint.pt.
    The directory appears complete or not at all (it is written under a temporary name, then renamed).
    """
    backend = backend or DEFAULT_BACKEND
    if backend not in BACKENDS:
        raise TeacherError(f"unknown flamingo backend {backend!r} (use one of {', '.join(BACKENDS)})")
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(path) as staging, torch.random.fork_rng(devices=[]):  # keep callers' RNG state
        torch.manual_seed(seed)
        if backend == "idefics":
            _write_tiny_idefics(staging, seed)
        else:
            _write_tiny_openflamingo(staging, seed)
    return path
