"""The student checkpoint (models/student.safetensors): safetensors + JSON metadata, never a pickle.

`cater eval` loads a checkpoint that arrives by `dvc pull` / `dvc exp pull`; loading must not run code.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_train_ddp import build_cache, config, prepare, run_training


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("checkpoint")
    build_cache(root)
    checkpoint, _ = run_training(root, config(epochs=2))
    return root, checkpoint


class Payload:
    """Unpickling this creates the marker file: the proof that a loader ran code from the checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('code from the checkpoint ran')",)


@pytest.mark.parametrize("name", ["student.safetensors", "student.pt"])
@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_a_pickle_checkpoint_is_refused_and_its_payload_never_runs(tmp_path, writer, name):
    from cater.train import load_student

    marker = tmp_path / "pwned"
    path = tmp_path / "models" / name
    path.parent.mkdir()
    checkpoint = {"model": {}, "student_config": {}, "payload": Payload(marker)}
    if writer == "torch.save":
        torch.save(checkpoint, path)
    else:
        path.write_bytes(pickle.dumps(checkpoint))
    with pytest.raises(Exception) as info:
        load_student(path)
    assert not marker.exists(), "loading the checkpoint ran its pickle payload"
    assert isinstance(info.value, ValueError) and "not a safetensors checkpoint" in str(info.value), info.value
    assert str(path) in str(info.value)


def test_round_trip_gives_identical_predictions_and_metadata(trained, tmp_path):
    from cater.models.student import CaTeRStudent, StudentConfig
    from cater.train import load_student, predict, save_student

    root, checkpoint = trained
    path = tmp_path / "models" / "student.safetensors"
    save_student(checkpoint, path)
    assert [p.name for p in path.parent.iterdir()] == ["student.safetensors"]  # atomic: no temp leftovers
    student, loaded = load_student(path)
    reference = CaTeRStudent(StudentConfig(**checkpoint["student_config"]))
    reference.load_state_dict(checkpoint["model"])
    features, _, val_split, batcher = prepare(root, config(epochs=2))
    torch.testing.assert_close(predict(student, batcher, val_split), predict(reference.eval(), batcher, val_split),
                               atol=0, rtol=0)
    for key in ("best_epoch", "best_global_step", "val_accuracy", "student_config", "train_config"):
        assert loaded[key] == checkpoint[key], key
    assert loaded["model"].keys() == checkpoint["model"].keys()
    assert all(torch.equal(loaded["model"][k], v) for k, v in checkpoint["model"].items())


def test_saved_bytes_do_not_depend_on_the_process(trained, tmp_path):
    """DVC hashes models/student.safetensors: the same checkpoint must give the same bytes in every run."""
    from cater.train import checkpoint_bytes

    _, checkpoint = trained
    path = tmp_path / "checkpoint.pt"
    torch.save(checkpoint, path)  # the test's own file, to hand the dict to fresh interpreters
    script = ("import hashlib, sys, torch; from cater.train import checkpoint_bytes; "
              "print(hashlib.sha256(checkpoint_bytes(torch.load(sys.argv[1], weights_only=True))).hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": str(seed)}).stdout
               for seed in (1, 2, 3)}
    assert digests == {hashlib.sha256(checkpoint_bytes(checkpoint)).hexdigest() + "\n"}


@pytest.mark.parametrize("damage", ["truncated", "empty", "header only", "garbage"])
def test_a_damaged_checkpoint_is_a_clear_error_naming_the_file(trained, tmp_path, damage):
    from cater.train import checkpoint_bytes, load_student

    _, checkpoint = trained
    data = checkpoint_bytes(checkpoint)
    path = tmp_path / "student.safetensors"
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "header only": data[:8],
                      "garbage": b"\xff" * 4096}[damage])
    with pytest.raises(ValueError, match="not a safetensors checkpoint") as info:
        load_student(path)
    assert str(path) in str(info.value)


def test_a_safetensors_file_that_is_not_a_student_checkpoint_is_refused(trained, tmp_path):
    from safetensors.torch import save_file

    from cater.train import checkpoint_bytes, load_student

    _, checkpoint = trained
    path = tmp_path / "student.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))  # e.g. the features file
    with pytest.raises(ValueError, match="no cater student metadata") as info:
        load_student(path)
    assert str(path) in str(info.value)
    # metadata naming a config the student does not know
    from safetensors.torch import load, save

    blob = checkpoint_bytes(checkpoint)
    tensors = load(blob)
    header = json.loads(blob[8: 8 + int.from_bytes(blob[:8], "little")])
    meta = json.loads(header["__metadata__"]["cater_student"])
    meta["student_config"]["bogus"] = 1
    path.write_bytes(save(tensors, metadata={"cater_student": json.dumps(meta)}))
    with pytest.raises(ValueError, match=f"{path}: .*student_config"):
        load_student(path)


def test_missing_checkpoint_names_the_file(tmp_path):
    from cater.train import load_student

    with pytest.raises(FileNotFoundError, match="student.safetensors"):
        load_student(tmp_path / "student.safetensors")


def test_train_stage_writes_the_safetensors_checkpoint():
    from cater.stages import evaluate, train

    assert train.CHECKPOINT == Path("models/student.safetensors")
    assert evaluate.CHECKPOINT == train.CHECKPOINT


def test_cater_checkpoint_prints_the_training_arguments_and_global_step(trained, tmp_path, capsys):
    from cater.commands.checkpoint import main
    from cater.train import save_student

    _, checkpoint = trained
    path = tmp_path / "student.safetensors"
    save_student(checkpoint, path)
    assert main([str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["train_config"] == checkpoint["train_config"] and info["train_config"]["epochs"] == 2
    assert info["best_global_step"] == checkpoint["best_global_step"] > 0
    assert info["best_epoch"] == checkpoint["best_epoch"] and info["val_accuracy"] == checkpoint["val_accuracy"]
    assert info["parameters"] == sum(t.numel() for t in checkpoint["model"].values())
    assert info["features"] == checkpoint["features"] and info["features"]["embed_dim"] > 0  # what it was trained on
    assert main([str(tmp_path / "missing.safetensors")]) == 1
    assert "student checkpoint missing" in capsys.readouterr().err
