"""`cater teacher-memory`: parameter counts built on the meta device from config files only, equal to the loaded
models' own counts, and the bytes each precision takes by its storage rule."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import shutil

import pytest

from cater.teachers.memory import Component, Footprint, footprint

FAMILIES = ("videollava", "idefics", "chatunivi")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from cater.teachers.chatunivi import write_tiny_chatunivi
    from cater.teachers.flamingo import write_tiny_flamingo
    from cater.teachers.videollava import write_tiny_videollava

    root = tmp_path_factory.mktemp("memory")
    return {"videollava": write_tiny_videollava(root / "vl"), "idefics": write_tiny_flamingo(root / "id", backend="idefics"),
            "chatunivi": write_tiny_chatunivi(root / "cu")}


def loaded_parameters(family: str, path) -> int:
    if family == "videollava":
        from transformers import VideoLlavaForConditionalGeneration as cls
    elif family == "idefics":
        from transformers import IdeficsForVisionText2Text as cls
    else:
        from cater.teachers.chatunivi import ChatUniViModel as cls
    return sum(p.numel() for p in cls.from_pretrained(str(path)).parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_counts_from_the_configs_alone_equal_the_loaded_model(checkpoints, family, tmp_path):
    configs_only = tmp_path / "configs"
    configs_only.mkdir()
    for file in checkpoints[family].glob("*.json"):  # every config, no weights
        shutil.copy(file, configs_only / file.name)
    result = footprint(family, configs_only)
    assert result.parameters == loaded_parameters(family, checkpoints[family]) > 0
    assert result.parameters == sum(c.parameters for c in result.components)
    assert result.bytes("fp32") == 4 * result.parameters and result.bytes("bf16") == 2 * result.parameters
    assert result.bytes("4bit") < result.bytes("8bit") < result.bytes("fp16")


def test_quantized_bytes_follow_the_bitsandbytes_storage_rule():
    fp = Footprint("x", "m", [Component("a", parameters=1000, linear_weights=640, linear_rows=10)])
    assert fp.bytes("8bit") == 640 + 4 * 10 + 2 * 360  # int8 weights, an fp32 scale per row, the rest fp16
    assert fp.bytes("4bit") == 320 + 4 * 10 + 2 * 360  # two weights per byte, an fp32 absmax per 64, the rest fp16
    with pytest.raises(ValueError, match="unknown precision"):
        fp.bytes("int3")


def test_the_command_prints_the_table_and_names_a_missing_config(checkpoints, tmp_path, capsys):
    from cater.commands.teacher_memory import main

    assert main(["--model", str(checkpoints["videollava"]), "--family", "videollava"]) == 0
    out = capsys.readouterr().out
    assert "| videollava |" in out and "video tower" in out and "KiB" in out
    assert main(["--model", str(tmp_path), "--family", "chatunivi"]) == 1
    assert "config.json not found" in capsys.readouterr().err
