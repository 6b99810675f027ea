"""`quantization` (bitsandbytes 4bit/8bit) and `device_map` (accelerate) for every teacher family.

No GPU here: quantization is refused with a clear error on the CPU, and its wiring is checked by catching the
`from_pretrained` call of each family's large part (the keyword arguments a CUDA machine would pass).
`device_map` really runs: a teacher dispatched by accelerate (`device_map: cpu`) scores what the plainly
loaded one scores.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

import cater.teachers.base as base
from cater.teachers.base import TeacherConfig, TeacherError, TeacherInput
from cater.teachers.chatunivi import ChatUniViTeacher
from cater.teachers.flamingo import FlamingoTeacher
from cater.teachers.videollava import VideoLlavaTeacher
from cater.testing.tiny.flamingo import write_tiny_flamingo
from helpers.tiny_teachers import FAMILIES


def build(family: str, path, **settings):
    if family == "idefics":
        return FlamingoTeacher(TeacherConfig("flamingo", str(path), extra={"backend": "idefics"}, **settings))
    cls = VideoLlavaTeacher if family == "videollava" else ChatUniViTeacher
    return cls(TeacherConfig(family, str(path), **settings))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["4bit", "8bit"])
def test_quantization_on_the_cpu_is_a_clear_error(tiny_teacher_checkpoints, family, kind):
    with pytest.raises(TeacherError, match=f"quantization '{kind}' needs a CUDA device"):
        build(family, tiny_teacher_checkpoints[family], device="cpu", quantization=kind)


def test_an_unknown_quantization_is_named(tiny_teacher_checkpoints):
    with pytest.raises(TeacherError, match="quantization '3bit' is not supported"):
        build("idefics", tiny_teacher_checkpoints["idefics"], device="cpu", quantization="3bit")


LARGE_PART = {  # the class whose from_pretrained loads the bulk of each family's weights
    "videollava": ("transformers", "VideoLlavaForConditionalGeneration"),
    "idefics": ("transformers", "IdeficsForVisionText2Text"),
    "chatunivi": ("transformers", "LlamaForCausalLM"),
}


class Caught(Exception):
    pass


@pytest.mark.parametrize("family", FAMILIES)
def test_quantization_reaches_from_pretrained_with_a_device_map(tiny_teacher_checkpoints, family, monkeypatch):
    import importlib

    sentinel = object()
    monkeypatch.setattr(base, "quantization_config", lambda kind, device, dtype: sentinel if kind else None)
    seen = {}

    def fake_from_pretrained(*args, **kwargs):
        seen.update(kwargs)
        raise Caught

    module, name = LARGE_PART[family]
    monkeypatch.setattr(getattr(importlib.import_module(module), name), "from_pretrained", fake_from_pretrained)
    with pytest.raises(Caught):
        build(family, tiny_teacher_checkpoints[family], device="cpu", quantization="4bit")
    assert seen["quantization_config"] is sentinel and seen["device_map"] == {"": 0}
    seen.clear()
    with pytest.raises(Caught):
        build(family, tiny_teacher_checkpoints[family], device="cpu", quantization="4bit", device_map="auto")  # sharded over GPUs
    assert seen["quantization_config"] is sentinel and seen["device_map"] == "auto"


def test_openflamingo_refuses_device_map_and_quantization(tmp_path):
    pytest.importorskip("open_flamingo")
    path = write_tiny_flamingo(tmp_path / "of", backend="openflamingo")
    for settings in ({"device_map": "auto"}, {"quantization": "4bit"}):
        with pytest.raises(TeacherError, match="openflamingo backend supports neither device_map nor quantization"):
            FlamingoTeacher(TeacherConfig("flamingo", str(path), device="cpu", extra={"backend": "openflamingo"}, **settings))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_teacher_dispatched_by_accelerate_scores_as_the_plain_one(tiny_teacher_checkpoints, family):
    rng = np.random.default_rng(0)
    item = TeacherInput("q", rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), "What moved first?",
                        ["a circle", "a square", "a star", "nothing", "two"])
    plain = build(family, tiny_teacher_checkpoints[family], device="cpu").score([item])[0]
    mapped = build(family, tiny_teacher_checkpoints[family], device="cpu", device_map="cpu").score([item])[0]
    np.testing.assert_allclose(mapped.choice_logits, plain.choice_logits, atol=1e-5)
    assert mapped.hard_idx == plain.hard_idx
