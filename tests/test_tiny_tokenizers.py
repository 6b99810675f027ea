"""The tiny teachers tokenize as their real checkpoints do.

Video-LLaVA-7B, Chat-UniVi-7B and IDEFICS-9B are LLaMA models with LLaMA's SentencePiece tokenizer (option
letters are `▁A` pieces); OpenFlamingo's MPT uses GPT-NeoX's byte-level BPE (`ĠA`). The tiny checkpoints ship
the same files (tokenizer.model; Chat-UniVi without tokenizer.json, so loading converts it), and each
teacher's prompt encodes to exactly what SentencePiece itself gives: the engine behind the slow LlamaTokenizer
that Chat-UniVi's reference code loads (`use_fast=False`).
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import re

import numpy as np
import pytest
import sentencepiece as spm

from cater.teachers.base import LETTERS, TeacherConfig, TeacherError, TeacherInput, letter_token_ids
from cater.teachers.chatunivi import IMAGE_PLACEHOLDER, IMAGE_TOKEN_INDEX, ChatUniViTeacher
from cater.teachers.flamingo import FlamingoTeacher
from cater.teachers.videollava import VideoLlavaTeacher
from cater.testing.tiny.chatunivi import write_tiny_chatunivi
from cater.testing.tiny.flamingo import write_tiny_flamingo
from cater.testing.tiny.tokenizers import gpt_neox_bpe, llama_sentencepiece, sentencepiece_model
from cater.testing.tiny.videollava import write_tiny_videollava

try:
    import open_flamingo  # noqa: F401
    HAS_OPEN_FLAMINGO = True
except ImportError:
    HAS_OPEN_FLAMINGO = False

ITEM = TeacherInput("q1", np.zeros((2, 8, 8, 3), np.uint8), "What moved first, and where did it go?",
                    ["a red circle, left", "the blue square", "nothing", "two stars", "Café au lait"],
                    "(Penny:) It went  over there.\n(Leonard:) Really?")


@pytest.fixture(scope="module")
def llama_teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    return {
        "videollava": VideoLlavaTeacher(TeacherConfig(family="videollava", model=str(write_tiny_videollava(root / "vl")),
                                                      device="cpu")),
        "idefics": FlamingoTeacher(TeacherConfig(family="flamingo", device="cpu", extra={"backend": "idefics"},
                                                 model=str(write_tiny_flamingo(root / "idefics", backend="idefics")))),
        "chatunivi": ChatUniViTeacher(TeacherConfig(family="chatunivi", model=str(write_tiny_chatunivi(root / "cu")),
                                                    device="cpu")),
    }


def checkpoint_dir(teacher):
    from pathlib import Path
    return Path(teacher.config.model)


def sentencepiece_of(teacher) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(checkpoint_dir(teacher) / "tokenizer.model"))


def test_the_sentencepiece_model_is_deterministic_and_llama_shaped():
    model = sentencepiece_model()
    assert model == sentencepiece_model()
    sp = spm.SentencePieceProcessor(model_proto=model)
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert sp.encode("ASSISTANT: A", out_type=str)[-1] == "\u2581A"
    assert sp.encode("\u2603", out_type=str) == ["\u2581", "<0xE2>", "<0x98>", "<0x83>"]  # byte fallback


@pytest.mark.parametrize("family", ["videollava", "idefics", "chatunivi"])
def test_llama_family_teachers_read_sentencepiece_letters(llama_teachers, family):
    teacher = llama_teachers[family]
    tokenizer = teacher.tokenizer if family != "idefics" else teacher.backend.tokenizer
    assert type(tokenizer).__name__ == "LlamaTokenizer"
    assert (checkpoint_dir(teacher) / "tokenizer.model").is_file()
    assert tokenizer.convert_ids_to_tokens(list(teacher.letter_ids)) == [f"\u2581{letter}" for letter in LETTERS]
    assert tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id == 1  # LLaMA adds <s>


def test_chatunivi_ships_only_the_sentencepiece_model_and_encodes_as_the_reference(llama_teachers):
    teacher = llama_teachers["chatunivi"]
    assert not (checkpoint_dir(teacher) / "tokenizer.json").exists()  # as the released checkpoints: converted on load
    sp = sentencepiece_of(teacher)
    ids, _, prompt = teacher.encode(ITEM)
    # the reference's tokenizer_image_token with the slow (SentencePiece) tokenizer: each piece between the
    # image placeholders is encoded with a leading <s>; only the first piece keeps it
    pieces = [[sp.bos_id(), *sp.encode(piece)] for piece in prompt.split(IMAGE_PLACEHOLDER)]
    expected = pieces[0] + [x for piece in pieces[1:] for x in (IMAGE_TOKEN_INDEX, *piece[1:])]
    assert ids.tolist() == expected
    assert prompt.count(IMAGE_PLACEHOLDER) == 2 and "Café" in prompt


@pytest.mark.parametrize("family", ["videollava", "idefics"])
def test_prompts_encode_as_sentencepiece_does_between_the_special_tokens(llama_teachers, family):
    teacher = llama_teachers[family]
    tokenizer = teacher.tokenizer if family != "idefics" else teacher.backend.tokenizer
    prompt = teacher.prompt(ITEM)
    specials = sorted((t.content for t in tokenizer.added_tokens_decoder.values() if t.special), key=len, reverse=True)
    sp = sentencepiece_of(teacher)
    segments = list(filter(None, re.split("|".join(map(re.escape, specials)), prompt)))
    assert not any(text.startswith(" ") for text in segments)  # our templates; the leading-space case is made below
    for text in segments + [" " + text for text in segments] + ["  " + segments[-1]]:
        ours = tokenizer(text, add_special_tokens=False)["input_ids"]
        if text.startswith(" "):
            # A segment that starts with a space (as after a special token): SentencePiece itself encodes it with one
            # more "▁" than transformers, because its dummy prefix is always added ("▁" + "▁Answer"), while the
            # converted LLaMA tokenizer takes a leading space as that prefix (the real checkpoints' tokenizers differ
            # the same way: transformers' legacy=False). So the exact relation is checked: transformers' ids are
            # SentencePiece's ids of the text after its first space.
            assert ours == sp.encode(text[1:]) != sp.encode(text), text
        else:
            assert ours == sp.encode(text), text


@pytest.mark.skipif(not HAS_OPEN_FLAMINGO, reason="open_flamingo is not installed")
def test_openflamingo_reads_gpt_neox_bpe_letters(tmp_path):
    teacher = FlamingoTeacher(TeacherConfig(family="flamingo", device="cpu", extra={"backend": "openflamingo"},
                                            model=str(write_tiny_flamingo(tmp_path / "of", backend="openflamingo"))))
    tokenizer = teacher.backend.tokenizer
    assert type(tokenizer).__name__ == "GPTNeoXTokenizer"
    assert tokenizer.convert_ids_to_tokens(list(teacher.letter_ids)) == [f"\u0120{letter}" for letter in LETTERS]


def tiny_tokenizer(style: str):
    return llama_sentencepiece()[0] if style == "sentencepiece" else gpt_neox_bpe()


@pytest.mark.parametrize("style", ["sentencepiece", "byte-level"])
def test_letter_ids_follow_the_tokenizer_style(style, monkeypatch):
    marker = "\u2581" if style == "sentencepiece" else "\u0120"
    tokenizer = tiny_tokenizer(style)
    ids = letter_token_ids(tokenizer, "USER: Which one? ASSISTANT:", "tiny")
    assert tokenizer.convert_ids_to_tokens(list(ids)) == [marker + letter for letter in LETTERS]

    # learned from text without " A".." E": each letter is the space marker + the letter, two pieces
    from cater.testing.tiny import tokenizers as tiny_tokenizers
    monkeypatch.setattr(tiny_tokenizers, "training_lines", lambda: ["USER: what moved first? ASSISTANT:"])
    monkeypatch.setattr(tiny_tokenizers, "check_letters", lambda tokenizer, space: None)
    with pytest.raises(TeacherError, match="option letter '[A-E]' does not encode to exactly one token"):
        letter_token_ids(tiny_tokenizer(style), "USER: Which one? ASSISTANT:", "tiny")


def test_chatunivi_names_protobuf_when_it_cannot_convert_the_tokenizer(llama_teachers, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "google.protobuf" else real(name, *a))
    with pytest.raises(TeacherError, match="tokenizer.model only.*protobuf"):
        ChatUniViTeacher(TeacherConfig(family="chatunivi", model=str(checkpoint_dir(llama_teachers["chatunivi"])),
                                       device="cpu"))
