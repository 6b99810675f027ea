"""A tiny random Video-LLaVA checkpoint in the real format (config, safetensors, fast tokenizer, processor), so
tests and the demo exercise the same loading code as the 7B model (`cater.teachers.videollava`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cater.io import atomic_directory

TINY_FRAME_SIZE = 32
TINY_PATCH = 8
TINY_FRAMES = 8
TINY_HIDDEN = 32
_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | upper }}: "
    "{% for item in message['content'] if item['type'] == 'image' %}<image>\n{% endfor %}"
    "{% for item in message['content'] if item['type'] == 'video' %}<video>\n{% endfor %}"
    "{% for item in message['content'] if item['type'] == 'text' %}{{ item['text'] }} {% endfor %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def _tiny_tokenizer():
    """LLaMA's SentencePiece tokenizer family (as Video-LLaVA-7B's), with `<image>`, `<video>`, `<pad>` added."""
    from cater.testing.tiny.tokenizers import llama_sentencepiece

    return llama_sentencepiece(("<image>", "<video>"), pad_token="<pad>", padding_side="left",
                               extra_special_tokens={"image_token": "<image>", "video_token": "<video>"})


def _init_weights_deterministically(model, seed: int) -> None:
    """Fill every parameter from one seeded generator, in name order (independent of torch's init)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if param.ndim == 1 and ("norm" in name or name.endswith("layer_norm1.weight")
                                    or name.endswith("layer_norm2.weight")):
                param.fill_(1.0)
            elif param.ndim == 1:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
            else:
                fan_in = int(np.prod(param.shape[1:]))
                std = 1.0 if "embed_tokens" in name or "embedding" in name else fan_in ** -0.5
                param.copy_(torch.randn(param.shape, generator=generator) * std)


def write_tiny_videollava(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny random Video-LLaVA checkpoint (config, safetensors, fast tokenizer, processor) to `path`."""
    from transformers import (VideoLlavaConfig, VideoLlavaForConditionalGeneration, VideoLlavaImageProcessor,
                              VideoLlavaProcessor, VideoLlavaVideoProcessor)

    path = Path(path)
    tokenizer, sentencepiece_model = _tiny_tokenizer()
    size = {"shortest_edge": TINY_FRAME_SIZE}
    crop = {"height": TINY_FRAME_SIZE, "width": TINY_FRAME_SIZE}
    processor = VideoLlavaProcessor(
        image_processor=VideoLlavaImageProcessor(size=size, crop_size=crop),
        video_processor=VideoLlavaVideoProcessor(size=size, crop_size=crop),
        tokenizer=tokenizer,
        patch_size=TINY_PATCH,
        chat_template=_CHAT_TEMPLATE,
    )
    tokens_per_frame = (TINY_FRAME_SIZE // TINY_PATCH) ** 2 + 1  # patches + CLS
    config = VideoLlavaConfig(
        vision_config=dict(
            model_type="clip_vision_model", hidden_size=TINY_HIDDEN, intermediate_size=2 * TINY_HIDDEN,
            num_hidden_layers=2, num_attention_heads=2, image_size=TINY_FRAME_SIZE, patch_size=TINY_PATCH,
            projection_dim=TINY_HIDDEN,
        ),
        text_config=dict(
            model_type="llama", hidden_size=TINY_HIDDEN, intermediate_size=2 * TINY_HIDDEN, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=2048,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        image_seq_length=tokens_per_frame - 1,
        video_seq_length=tokens_per_frame * TINY_FRAMES,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = VideoLlavaForConditionalGeneration(config)
    _init_weights_deterministically(model, seed)

    with atomic_directory(path) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        (staging / "tokenizer.model").write_bytes(sentencepiece_model)  # shipped beside tokenizer.json, as by the 7B
    return path
