"""Non-finite teacher outputs: every family goes through base.letter_output, and the stage prints the count."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from cater.data.schema import write_samples
from cater.stages import teacher as stage
from cater.teachers.base import TeacherConfig, TeacherInput
from cater.teachers.chatunivi import ChatUniViTeacher
from cater.testing.tiny.chatunivi import write_tiny_chatunivi
from test_teacher_runner import make_samples, write_frames


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> Path:
    return write_tiny_chatunivi(tmp_path_factory.mktemp("chatunivi") / "tiny", seed=0)


@pytest.fixture(scope="module")
def teacher(tiny_path):
    return ChatUniViTeacher(TeacherConfig(family="chatunivi", model=str(tiny_path), device="cpu", batch_size=2))


def item(sample_id: str, seed: int, num_choices: int = 3) -> TeacherInput:
    frames = np.random.default_rng(seed).integers(0, 256, size=(4, 40, 48, 3), dtype=np.uint8)
    return TeacherInput(sample_id, frames, f"What happens in clip {seed}?", [f"option {c}" for c in "vwxyz"[:num_choices]])


def poison_first_row(teacher, monkeypatch, field: str = "logits", value: float = float("nan")) -> None:
    """The model's forward returns `value` in the first sample's `field` of every call."""
    original = teacher.model.forward

    def forward(*args, **kwargs):
        out = original(*args, **kwargs)
        poisoned = getattr(out, field).clone()
        poisoned[0] = value
        return dataclasses.replace(out, **{field: poisoned})

    monkeypatch.setattr(teacher.model, "forward", forward)


@pytest.mark.parametrize("field,value,reason", [
    ("logits", float("nan"), "non-finite option logits"),
    ("logits", float("inf"), "non-finite option logits"),
    ("last_hidden_state", float("nan"), "non-finite hidden state"),
])
def test_chatunivi_non_finite_outputs_become_missing_rows(teacher, monkeypatch, field, value, reason):
    batch = [item("a", 1), item("b", 2, num_choices=4)]
    clean = teacher.score(batch)
    poison_first_row(teacher, monkeypatch, field, value)
    outputs = teacher.score(batch)
    assert [o.id for o in outputs] == ["a", "b"]
    first, second = outputs
    assert first.missing and first.missing_reason == reason
    assert first.choice_logits is None and first.hard_idx is None and first.hidden is None
    assert not second.missing and second.missing_reason is None
    np.testing.assert_allclose(second.choice_logits, clean[1].choice_logits, atol=1e-5)
    assert second.hard_idx == int(np.argmax(second.choice_logits))
    assert second.hidden.dtype == np.float32 and second.hidden.shape == (teacher.hidden_size,)


def test_teacher_stage_prints_missing_rows_by_reason(tmp_path, tiny_path, teacher, monkeypatch, capsys):
    import cater.teachers.registry as registry

    samples = make_samples(12, 4)
    for split in ("train", "val", "test"):
        write_samples(tmp_path / "data/splits" / f"{split}.jsonl", [s for s in samples if s.split == split])
    write_frames(tmp_path / "data/frames", [f"vid{i}" for i in range(4)])
    params = {"teacher": {"batch_size": 2, "models": {
        "chatunivi": {"family": "chatunivi", "model": str(tiny_path), "dtype": "fp32", "device": "cpu"}}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    poison_first_row(teacher, monkeypatch)  # batches of 2: q000, q002, ... come back NaN
    monkeypatch.setattr(registry, "build_teacher", lambda config: teacher)
    monkeypatch.chdir(tmp_path)
    assert stage.main(["--name", "chatunivi", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "teacher chatunivi: 6/12 samples missing (non-finite option logits: 6)" in out, out
    rows = [json.loads(line) for line in (tmp_path / "data/teacher/chatunivi/outputs.jsonl").read_text().splitlines()]
    missing = sorted(r["key"] for r in rows if r["choice_logits"] is None)
    assert missing == [f"q{i:03d}" for i in range(0, 12, 2)]
    assert all(r["missing_reason"] == "non-finite option logits" and r["hidden"] is None for r in rows if r["key"] in missing)
    summary = json.loads((tmp_path / "data/teacher/chatunivi/summary.json").read_text())
    assert summary["missing"] == 6 and summary["missing_reasons"] == {"non-finite option logits": 6}


def test_teacher_stage_prints_zero_missing(tmp_path, tiny_path, teacher, monkeypatch, capsys):
    import cater.teachers.registry as registry

    samples = make_samples(4, 2)
    for split in ("train", "val", "test"):
        write_samples(tmp_path / "data/splits" / f"{split}.jsonl", [s for s in samples if s.split == split])
    write_frames(tmp_path / "data/frames", ["vid0", "vid1"])
    params = {"teacher": {"models": {"chatunivi": {"family": "chatunivi", "model": str(tiny_path), "device": "cpu"}}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setattr(registry, "build_teacher", lambda config: teacher)
    monkeypatch.chdir(tmp_path)
    assert stage.main(["--name", "chatunivi", "--no-progress"]) == 0
    assert "teacher chatunivi: 0/4 samples missing" in capsys.readouterr().out
