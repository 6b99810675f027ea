"""A tiny, randomly initialised HF transformers CLIPModel checkpoint on disk, with a real CLIP BPE tokenizer.

The tokenizer is written in CLIP's own file format (a byte-level vocab.json and merges.txt), so every
string tokenizes (each byte has a token) and the checkpoint loads like a downloaded one.
"""
from __future__ import annotations

import json
from pathlib import Path

IMAGE_SIZE = 32
PATCH_SIZE = 8
CONTEXT = 32
PROJECTION = 16
MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)
MERGES = [("t", "h"), ("th", "e</w>"), ("i", "n"), ("a", "n"), ("o", "n</w>")]


def byte_characters() -> list[str]:
    """The printable character standing for each byte 0..255 in byte-level BPE files (GPT-2 / CLIP convention):
    printable Latin-1 bytes stand for themselves, the others for code points 256 and up, in byte order."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def write_tiny_hf_clip(out_dir: str | Path, seed: int = 0) -> Path:
    import torch
    import transformers

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chars = byte_characters()
    tokens = chars + [c + "</w>" for c in chars] + [a + b for a, b in MERGES] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES), encoding="utf-8")
    tokenizer = transformers.CLIPTokenizer.from_pretrained(out)
    tokenizer.model_max_length = CONTEXT
    tokenizer.save_pretrained(out)
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (bos, eos, eos)

    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=CONTEXT, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
    vision = dict(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2)
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=PROJECTION)
    torch.manual_seed(seed)
    transformers.CLIPModel(config).save_pretrained(out)  # model.safetensors
    processor = {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": IMAGE_SIZE},
                 "resample": 3, "do_center_crop": True, "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                 "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(MEAN),
                 "image_std": list(STD), "do_convert_rgb": True}
    (out / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    return out
