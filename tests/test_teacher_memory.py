"""`cater teacher-memory`: parameter counts built on the meta device from config files only, equal to the loaded
models' own counts, and the bytes each precision takes by its storage rule."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import shutil

import pytest

from cater.teachers.memory import Component, Footprint, build_empty, footprint
from helpers.tiny_teachers import FAMILIES


def configs_only(checkpoint, folder):
    """A folder with the checkpoint's config files and no weights (all that `footprint` reads)."""
    folder.mkdir()
    for file in checkpoint.glob("*.json"):
        shutil.copy(file, folder / file.name)
    return folder


def loaded_parameters(family: str, path) -> int:
    if family == "videollava":
        from transformers import VideoLlavaForConditionalGeneration as cls
    elif family == "idefics":
        from transformers import IdeficsForVisionText2Text as cls
    else:
        from cater.teachers.chatunivi import ChatUniViModel as cls
    return sum(p.numel() for p in cls.from_pretrained(str(path)).parameters())


def quantized_model(family: str, path):
    """On the meta device, the model that `from_pretrained` loads with the quantization config."""
    if family == "videollava":
        from transformers import VideoLlavaConfig, VideoLlavaForConditionalGeneration

        return build_empty(lambda: VideoLlavaForConditionalGeneration(VideoLlavaConfig.from_pretrained(str(path))))
    if family == "idefics":
        from transformers import IdeficsConfig, IdeficsForVisionText2Text

        return build_empty(lambda: IdeficsForVisionText2Text(IdeficsConfig.from_pretrained(str(path))))
    from cater.teachers.chatunivi.checkpoint import _llama_class, llama_config, read_checkpoint_config

    # the LLaMA only: the vision tower and the projector load in the plain dtype
    return build_empty(lambda: _llama_class()(llama_config(read_checkpoint_config(path))))


@pytest.mark.parametrize("family", FAMILIES)
def test_counts_from_the_configs_alone_equal_the_loaded_model(tiny_teacher_checkpoints, family, tmp_path):
    result = footprint(family, configs_only(tiny_teacher_checkpoints[family], tmp_path / "configs"))
    assert result.parameters == loaded_parameters(family, tiny_teacher_checkpoints[family]) > 0
    assert result.parameters == sum(c.parameters for c in result.components)
    assert result.bytes("fp32") == 4 * result.parameters and result.bytes("bf16") == 2 * result.parameters
    assert result.bytes("4bit") < result.bytes("8bit") < result.bytes("fp16")


@pytest.mark.parametrize("family", FAMILIES)
def test_the_quantized_weights_are_the_layers_bitsandbytes_replaces(tiny_teacher_checkpoints, family):
    """transformers' own rule (its default skip list, `replace_with_bnb_linear`'s `type(m) is nn.Linear`) on the
    model loaded with the quantization config gives the same weights; heads, Chat-UniVi's tower and projector none."""
    import torch.nn as nn
    from transformers.quantizers.base import get_keys_to_not_convert
    from transformers.quantizers.quantizers_utils import should_convert_module

    path = tiny_teacher_checkpoints[family]
    model = quantized_model(family, path)
    skip = get_keys_to_not_convert(model)
    replaced = [m for n, m in model.named_modules() if type(m) is nn.Linear and should_convert_module(n, skip)]
    result = footprint(family, path)
    assert sum(c.linear_weights for c in result.components) == sum(m.weight.numel() for m in replaced) > 0
    assert sum(c.linear_rows for c in result.components) == sum(m.out_features for m in replaced)
    by_name = {c.name: c for c in result.components}
    assert by_name["lm_head"].linear_weights == 0  # IDEFICS: its decoupled head's additional_fc too
    if family == "chatunivi":
        assert by_name["vision tower"].linear_weights == by_name["projector"].linear_weights == 0  # loaded in dtype


def test_quantized_bytes_follow_the_bitsandbytes_storage_rule():
    # 8 rows, 10 blocks of 64: a scale per row (8bit) and an absmax per block (4bit) give different figures
    fp = Footprint("x", "m", [Component("a", parameters=1000, linear_weights=640, linear_rows=8)])
    assert fp.bytes("8bit") == 640 + 4 * 8 + 2 * 360  # int8 weights, an fp32 scale per row, the rest fp16
    assert fp.bytes("4bit") == 320 + 4 * 10 + 2 * 360  # two weights per byte, an fp32 absmax per 64, the rest fp16
    fp.dtype = "fp32"  # the teacher's dtype: the unquantized rest takes 4 bytes
    assert fp.bytes("8bit") == 640 + 4 * 8 + 4 * 360 and fp.bytes("4bit") == 320 + 4 * 10 + 4 * 360
    assert fp.bytes("fp16") == 2000
    with pytest.raises(ValueError, match="unknown precision"):
        fp.bytes("int3")


@pytest.mark.parametrize("family", ["videollava", "chatunivi"])
def test_a_tied_output_head_is_counted_once_with_the_embeddings(tiny_teacher_checkpoints, family, tmp_path):
    untied = footprint(family, configs_only(tiny_teacher_checkpoints[family], tmp_path / "untied"))
    folder = configs_only(tiny_teacher_checkpoints[family], tmp_path / "tied")
    config = json.loads((folder / "config.json").read_text())
    config["tie_word_embeddings"] = True
    if "text_config" in config:
        config["text_config"]["tie_word_embeddings"] = True
    (folder / "config.json").write_text(json.dumps(config))
    tied = footprint(family, folder)
    head = {c.name: c for c in untied.components}["lm_head"]
    assert head.parameters > 0 and {c.name: c for c in tied.components}["lm_head"].parameters == 0
    assert tied.parameters == untied.parameters - head.parameters
    model = quantized_model(family, folder)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # the edited config ties them
    assert [c.linear_weights for c in tied.components] == [c.linear_weights for c in untied.components]


def test_the_command_prints_the_table_with_the_real_dtype_and_names_a_missing_config(tiny_teacher_checkpoints, tmp_path,
                                                                                      capsys):
    from cater.commands.teacher_memory import main

    assert main(["--model", str(tiny_teacher_checkpoints["videollava"]), "--family", "videollava"]) == 0
    out = capsys.readouterr().out
    assert "| videollava |" in out and "video tower" in out and "KiB" in out and "(rest fp16)" in out
    assert main(["--model", str(tiny_teacher_checkpoints["videollava"]), "--family", "videollava", "--dtype", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "(rest fp32)" in out and "fp16)" not in out
    assert main(["--model", str(tmp_path), "--family", "chatunivi"]) == 1
    assert "config.json not found" in capsys.readouterr().err
