"""Fine-tuning the tiny teachers: the differentiable path equals `score`, training lowers the loss, the saved
checkpoint loads through `build_teacher` unchanged, runs are deterministic, labels never reach the prompt."""
from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from cater.teachers.base import TeacherConfig, TeacherError, TeacherInput
from cater.testing.tiny.finetune import accuracy, finetune, permuted, save_finetuned
from cater.teachers.registry import build_teacher
from cater.testing.tiny import write_tiny

# name -> (family, backend); the three families the demo uses
FAMILIES = {"videollava": ("videollava", None), "idefics": ("flamingo", "idefics"), "chatunivi": ("chatunivi", None)}
NAMES = list(FAMILIES)
ANSWER_CUES = {"videollava": "ASSISTANT:", "idefics": "Answer:", "chatunivi": "ASSISTANT:"}


def config(name: str, path) -> TeacherConfig:
    family, backend = FAMILIES[name]
    extra = {"backend": backend} if backend else {}
    return TeacherConfig(family=family, model=str(path), device="cpu", batch_size=2, extra=extra)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("finetune")
    return {name: write_tiny(family, root / name, seed=0, backend=backend) for name, (family, backend) in FAMILIES.items()}


def load(name: str, tiny: dict, path=None):
    return build_teacher(config(name, path or tiny[name]))


def items() -> list[TeacherInput]:
    """Four samples: 8 frames each, 3-5 choices, one with subtitles."""
    rng = np.random.default_rng(0)
    names = ["red circle", "blue square", "green triangle", "yellow circle", "red square"]
    out = []
    for i, count in enumerate([5, 3, 4, 5]):
        frames = rng.integers(0, 256, (8, 40, 48, 3), dtype=np.uint8)
        choices = (names[i:] + names[:i])[:count]
        out.append(TeacherInput(f"s{i}", frames, f"Which shape appeared first in clip {i}?", choices,
                                "someone talks" if i == 2 else None))
    return out


LABELS = [2, 0, 3, 4]


def model_of(teacher):
    return teacher.backend.model if hasattr(teacher, "backend") else teacher.model


def training_loss(teacher, batch, labels) -> float:
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(teacher.letter_logits(batch), torch.tensor(labels)))


@pytest.mark.parametrize("name", NAMES)
def test_letter_logits_equal_score_and_carry_gradients(name, tiny):
    teacher = load(name, tiny)
    batch = items()
    scored = teacher.score(batch)
    logits = teacher.letter_logits(batch)
    assert logits.shape == (len(batch), 5) and logits.requires_grad
    for row, (item, out) in enumerate(zip(batch, scored)):
        np.testing.assert_allclose(logits[row, : len(item.choices)].detach().numpy(), out.choice_logits, atol=1e-5, rtol=0)
        assert torch.isinf(logits[row, len(item.choices):]).all()  # columns past a sample's choices
    logits[torch.isfinite(logits)].sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in teacher.trainable_parameters())


@pytest.mark.parametrize("name", NAMES)
def test_finetuning_lowers_the_training_loss_and_the_checkpoint_reloads(name, tiny, tmp_path):
    teacher = load(name, tiny)
    batch = items()
    before = training_loss(teacher, batch, LABELS)
    result = finetune(teacher, batch, LABELS, epochs=4, lr=1e-2, batch_size=4, seed=0, shuffle_options=False,
                      progress=False, log=None)
    after = training_loss(teacher, batch, LABELS)
    assert len(result.epoch_loss) == 4 and result.steps == 4
    assert after < before - 0.05, (before, after)
    assert result.train_accuracy == accuracy(teacher, batch, LABELS)

    saved = save_finetuned(teacher, tmp_path / name)
    assert (saved / "config.json").is_file() and (saved / "model.safetensors").is_file()
    reloaded = build_teacher(config(name, saved))  # the real loading code, unchanged
    for mine, theirs in zip(teacher.score(batch), reloaded.score(batch)):
        np.testing.assert_allclose(theirs.choice_logits, mine.choice_logits, atol=1e-5, rtol=0)
        np.testing.assert_allclose(theirs.hidden, mine.hidden, atol=1e-5, rtol=0)
    # the random checkpoint differs from the fine-tuned one
    original = load(name, tiny).score(batch)
    assert not np.allclose(original[0].choice_logits, reloaded.score(batch)[0].choice_logits, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_gives_identical_weights(name, tiny):
    def run(seed):
        teacher = load(name, tiny)
        finetune(teacher, items(), LABELS, epochs=1, lr=3e-3, batch_size=2, seed=seed, progress=False, log=None)
        return {k: v.clone() for k, v in model_of(teacher).state_dict().items()}

    first, second, other = run(0), run(0), run(1)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


@pytest.mark.parametrize("name", NAMES)
def test_labels_never_reach_the_prompt(name, tiny, monkeypatch):
    teacher = load(name, tiny)
    seen: list[str] = []
    if name == "chatunivi":
        original = teacher.encode

        def spy(item):
            ids, pixels, prompt = original(item)
            seen.append(prompt)
            return ids, pixels, prompt

        monkeypatch.setattr(teacher, "encode", spy)
    else:
        original = teacher.prompt

        def spy(item):
            seen.append(original(item))
            return seen[-1]

        monkeypatch.setattr(teacher, "prompt", spy)

    def prompts(labels):
        seen.clear()
        finetune(teacher, items(), labels, epochs=2, lr=1e-9, batch_size=2, seed=0, progress=False, log=None)
        return list(seen)

    first, second = prompts(LABELS), prompts([0, 1, 0, 1])
    assert first and first == second  # the prompts do not depend on the labels
    for prompt in first:
        assert prompt.rstrip().endswith(ANSWER_CUES[name])  # nothing after the answer cue


def test_shuffled_options_carry_their_label():
    item = TeacherInput("x", np.zeros((1, 2, 2, 3), np.uint8), "q?", ["a", "b", "c", "d"])
    moved, label = permuted(item, 1, [3, 1, 0, 2])
    assert moved.choices == ["d", "b", "a", "c"] and moved.choices[label] == "b"
    assert item.choices == ["a", "b", "c", "d"]  # the original is not changed


def test_bad_labels_are_errors(tiny):
    teacher = load("videollava", tiny)
    with pytest.raises(TeacherError, match="2 samples but 1 labels"):
        finetune(teacher, items()[:2], [0], progress=False, log=None)
    with pytest.raises(TeacherError, match="label 3 is not an option index"):
        finetune(teacher, items()[1:2], [3], progress=False, log=None)


def test_progress_and_log_lines(tiny):
    lines: list[str] = []
    finetune(load("videollava", tiny), items(), LABELS, epochs=2, batch_size=4, progress=False, log=lines.append)
    assert [line.split(":")[1].split()[1] for line in lines[:2]] == ["1/2", "2/2"]
    assert "train loss" in lines[0] and lines[-1].startswith("videollava: train accuracy")


def test_make_tiny_models_fine_tunes_in_the_real_format(tmp_path, capsys):
    """The script: random checkpoint -> fine-tuned on the train split -> loads through build_teacher; val reported."""
    import importlib.util
    from pathlib import Path

    from cater.data.schema import Sample, write_samples

    rng = np.random.default_rng(1)
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    index, samples = {}, []
    for v, split in enumerate(["train", "train", "train", "val"]):
        video_id = f"vid{v}"
        np.save(frames_dir / f"{video_id}.npy", rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8))
        index[video_id] = {"file": f"{video_id}.npy", "times": [i / 2 for i in range(8)], "num_frames": 8}
        for q, qtype in enumerate(["first", "count"]):
            samples.append(Sample(id=f"{video_id}-{qtype}", dataset="toy", split=split, video=f"{video_id}.mp4",
                                  question=f"Question {qtype}?", choices=["one", "two", "three", "four", "five"],
                                  answer_idx=(v + q) % 5, question_type=qtype, video_id=video_id))
    (frames_dir / "index.json").write_text(json.dumps(index))
    write_samples(tmp_path / "train.jsonl", [s for s in samples if s.split == "train"])
    write_samples(tmp_path / "val.jsonl", [s for s in samples if s.split == "val"])

    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("make_tiny_models", repo / "scripts" / "make_tiny_models.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "tiny"
    argv = ["--out", str(out), "--only", "videollava", "--finetune-split", str(tmp_path / "train.jsonl"),
            "--frames", str(frames_dir), "--val-split", str(tmp_path / "val.jsonl"), "--epochs", "1", "--no-progress"]
    assert script.main(argv) == 0
    printed = capsys.readouterr().out
    assert "videollava: train accuracy" in printed and "val first" in printed and "(val majority letter)" in printed
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no staging or random folders left behind
    teacher = load("videollava", {}, out / "videollava")
    assert len(teacher.score(items()[:1])[0].choice_logits) == 5
    random = load("videollava", {}, write_tiny("videollava", tmp_path / "random", seed=0))
    assert not np.allclose(random.score(items()[:1])[0].choice_logits, teacher.score(items()[:1])[0].choice_logits)

    with pytest.raises(SystemExit, match="train samples only"):
        script.main(argv[:5] + [str(tmp_path / "val.jsonl")] + argv[6:])
