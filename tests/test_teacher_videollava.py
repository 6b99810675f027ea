"""Video-LLaVA teacher on a tiny random checkpoint written to disk and loaded with from_pretrained."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cater.teachers import videollava
from cater.teachers.base import LETTERS, TeacherConfig, TeacherError, TeacherInput
from cater.teachers.registry import build_teacher
from cater.teachers.videollava import VideoLlavaTeacher
from cater.testing.tiny.videollava import write_tiny_videollava


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> Path:
    return write_tiny_videollava(tmp_path_factory.mktemp("models") / "videollava", seed=0)


@pytest.fixture(scope="module")
def teacher(tiny_path) -> VideoLlavaTeacher:
    return VideoLlavaTeacher(TeacherConfig(family="videollava", model=str(tiny_path), dtype="fp32", device="cpu"))


def make_items(n: int, seed: int = 0, frames: int = 8) -> list[TeacherInput]:
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        video = rng.integers(0, 256, size=(frames, 36, 44, 3), dtype=np.uint8)
        choices = ["a red circle", "a blue square", "a green triangle", "a star", "nothing"][: 2 + i % 4]
        question = "What appears first" + " in the clip" * i + "?"  # different lengths -> left padding
        subtitles = "Someone says hello." if i % 2 else None
        items.append(TeacherInput(f"s{i}", video, question, choices, subtitles))
    return items


def log_softmax(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x - x.max() - np.log(np.exp(x - x.max()).sum())


def test_tiny_checkpoint_loads_through_from_pretrained_and_scores_a_batch(tiny_path, teacher):
    from transformers import VideoLlavaForConditionalGeneration

    files = sorted(p.name for p in tiny_path.iterdir())
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "processor_config.json"):
        assert name in files
    assert json.loads((tiny_path / "config.json").read_text())["model_type"] == "video_llava"
    assert isinstance(teacher.model, VideoLlavaForConditionalGeneration)
    assert teacher.model.name_or_path == str(tiny_path)

    items = make_items(4)
    outputs = teacher.score(items)
    assert [o.id for o in outputs] == [item.id for item in items]
    for item, out in zip(items, outputs):
        assert len(out.choice_logits) == len(item.choices)
        assert out.hard_idx == int(np.argmax(out.choice_logits))
        assert out.hidden.shape == (teacher.hidden_size,) and out.hidden.dtype == np.float32
        assert np.isfinite(out.hidden).all() and out.missing_reason is None
    # the tiny model is not degenerate: letters get clearly different scores
    assert np.ptp(outputs[3].choice_logits) > 0.1


def test_letter_ids_come_from_the_tokenizer_in_context(teacher):
    tokenizer = teacher.tokenizer
    assert len(set(teacher.letter_ids)) == len(LETTERS)
    for letter, token_id in zip(LETTERS, teacher.letter_ids):
        assert tokenizer.convert_ids_to_tokens(token_id) == f"▁{letter}"  # LLaMA SentencePiece, as Video-LLaVA-7B's
    prompt = teacher.prompt(make_items(1)[0])
    assert prompt.startswith("USER: <video>\n") and prompt.endswith("ASSISTANT:")
    encoded = tokenizer(prompt + " C")["input_ids"]
    assert encoded[-1] == teacher.letter_ids[2]


def test_prompt_has_question_options_and_subtitles_but_no_answer(teacher):
    item = TeacherInput("x", np.zeros((2, 8, 8, 3), np.uint8), "Which moved?", ["the cube", "the ball"], "He said: run!")
    prompt = teacher.prompt(item)
    assert "Which moved?" in prompt and "A. the cube\nB. the ball" in prompt and "He said: run!" in prompt
    assert prompt.count("<video>") == 1


def test_one_pass_scores_equal_per_option_scoring(teacher):
    items = make_items(4, seed=1)
    one_pass = teacher.score(items)
    per_option = teacher.score_per_option(items)  # C+1 unbatched passes per sample
    for fast, slow in zip(one_pass, per_option):
        np.testing.assert_allclose(log_softmax(fast.choice_logits), log_softmax(slow.choice_logits), atol=1e-4)
        np.testing.assert_allclose(fast.hidden, slow.hidden, atol=1e-4)
        assert fast.hard_idx == slow.hard_idx


def test_scores_depend_on_the_video_not_on_batch_company(teacher):
    items = make_items(3, seed=2)
    batched = teacher.score(items)
    alone = teacher.score([items[1]])[0]
    np.testing.assert_allclose(batched[1].choice_logits, alone.choice_logits, atol=1e-5)
    other_video = TeacherInput(items[1].id, np.flip(items[1].frames, axis=2).copy(), items[1].question,
                               items[1].choices, items[1].subtitles)
    changed = teacher.score([other_video])[0]
    assert np.abs(np.subtract(changed.choice_logits, alone.choice_logits)).max() > 1e-3


def test_batch_with_different_frame_counts_scores_each_like_alone(teacher):
    short, long = make_items(1, seed=3, frames=6)[0], make_items(2, seed=4, frames=8)[1]
    mixed = teacher.score([short, long])
    for item, out in zip([short, long], mixed):
        np.testing.assert_allclose(out.choice_logits, teacher.score([item])[0].choice_logits, atol=1e-5)


def test_num_frames_subsamples_uniformly(tiny_path):
    teacher4 = VideoLlavaTeacher(TeacherConfig(family="videollava", model=str(tiny_path), num_frames=4))
    item = make_items(1, seed=5, frames=8)[0]
    picked = TeacherInput(item.id, item.frames[[1, 3, 5, 7]], item.question, item.choices)
    np.testing.assert_allclose(teacher4.score([item])[0].choice_logits,
                               teacher4.score([picked])[0].choice_logits, atol=1e-6)


def test_non_finite_logits_give_a_missing_output_not_a_guess(tiny_path):
    broken = VideoLlavaTeacher(TeacherConfig(family="videollava", model=str(tiny_path)))
    with torch.no_grad():
        broken.model.lm_head.weight[broken.letter_ids[1]] = float("nan")
    out = broken.score(make_items(2))
    assert all(o.choice_logits is None and o.hard_idx is None and o.hidden is None for o in out)
    assert out[0].missing_reason == "non-finite option logits"


def test_registry_builds_videollava(tiny_path):
    teacher = build_teacher(TeacherConfig(family="videollava", model=str(tiny_path)))
    assert isinstance(teacher, VideoLlavaTeacher)
    with pytest.raises(TeacherError, match="unknown teacher family 'nope'"):
        build_teacher(TeacherConfig(family="nope", model=str(tiny_path)))


def test_tiny_checkpoint_is_byte_deterministic_per_seed(tmp_path, tiny_path):
    again = write_tiny_videollava(tmp_path / "again", seed=0)
    other = write_tiny_videollava(tmp_path / "other", seed=1)
    names = sorted(p.name for p in tiny_path.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (tiny_path / name).read_bytes() == (again / name).read_bytes(), name
    assert (tiny_path / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()


# ------------------------------------------------------------------------------------------- bad input


def test_missing_checkpoint_is_named(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(TeacherError, match="no-such-model.*checkpoint not found"):
        VideoLlavaTeacher(TeacherConfig(family="videollava", model=str(missing)))


def test_directory_without_config_is_named(tmp_path):
    with pytest.raises(TeacherError, match=f"{tmp_path.name}: not a model checkpoint directory"):
        VideoLlavaTeacher(TeacherConfig(family="videollava", model=str(tmp_path)))


def test_wrong_family_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(TeacherError, match="model_type is 'llama', but family videollava needs 'video_llava'"):
        VideoLlavaTeacher(TeacherConfig(family="videollava", model=str(tmp_path)))


def test_more_options_than_letters(teacher):
    item = TeacherInput("six", np.zeros((8, 32, 32, 3), np.uint8), "Q?", list("uvwxyz"))
    with pytest.raises(TeacherError, match="sample six: 6 choices"):
        teacher.score([item])


def test_no_frames(teacher):
    item = TeacherInput("empty", np.zeros((0, 32, 32, 3), np.uint8), "Q?", ["a", "b"])
    with pytest.raises(TeacherError, match="sample empty: no frames"):
        teacher.score([item])


def test_quantization_on_cpu_is_refused(tiny_path):
    for kind in ("4bit", "8bit"):
        with pytest.raises(TeacherError, match=f"quantization '{kind}' needs a CUDA device"):
            VideoLlavaTeacher(TeacherConfig(family="videollava", model=str(tiny_path), device="cpu", quantization=kind))


def test_bad_dtype_and_unknown_option(tiny_path):
    with pytest.raises(TeacherError, match="dtype 'fp8'"):
        VideoLlavaTeacher(TeacherConfig(family="videollava", model=str(tiny_path), dtype="fp8"))
    with pytest.raises(TeacherError, match=r"unknown option\(s\) \['tempreature'\]"):
        VideoLlavaTeacher(TeacherConfig(family="videollava", model=str(tiny_path), extra={"tempreature": 1}))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_requested_without_cuda(tiny_path):
    with pytest.raises(TeacherError, match="CUDA is not available"):
        VideoLlavaTeacher(TeacherConfig(family="videollava", model=str(tiny_path), device="cuda"))


def test_letters_that_are_not_single_tokens_are_refused(tmp_path, monkeypatch):
    # a tokenizer learned from text without " A".." E" splits each letter into space + letter
    from cater.testing.tiny import tokenizers as tiny_tokenizers

    monkeypatch.setattr(tiny_tokenizers, "training_lines", lambda: ["USER: <video>\nwhat moved first?\nASSISTANT:"])
    monkeypatch.setattr(tiny_tokenizers, "check_letters", lambda tokenizer, space: None)  # the writer's own guard
    path = write_tiny_videollava(tmp_path / "bad-tokenizer", seed=0)
    with pytest.raises(TeacherError, match="option letter 'A' does not encode to exactly one token"):
        VideoLlavaTeacher(TeacherConfig(family="videollava", model=str(path)))


def test_perturbing_only_frame_0_moves_the_letter_logits(teacher):
    [item] = make_items(1)
    frames = item.frames.copy()
    frames[0] = 255 - frames[0]
    before = teacher.score([item])[0]
    after = teacher.score([TeacherInput(item.id, frames, item.question, item.choices, item.subtitles)])[0]
    assert np.abs(np.subtract(before.choice_logits, after.choice_logits)).max() > 1e-4
