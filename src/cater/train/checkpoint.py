"""The student checkpoint file: safetensors + JSON metadata, never a pickle; and what a checkpoint was trained on."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cater.features import CachedFeatures
from cater.models.student import CaTeRStudent, StudentConfig


def features_identity(features: CachedFeatures) -> dict[str, Any]:
    """What a checkpoint was trained on: the backbone spec and the shapes of its feature store."""
    return {"backbone": features.index.get("backbone"), "embed_dim": features.embed_dim, "num_frames": features.num_frames}


CHECKPOINT_METADATA_KEY = "cater_student"  # the one safetensors metadata entry: the JSON of CHECKPOINT_FIELDS
CHECKPOINT_FORMAT = 1
CHECKPOINT_FIELDS = ("best_epoch", "best_global_step", "val_accuracy", "student_config", "train_config")
OPTIONAL_CHECKPOINT_FIELDS = ("features",)  # absent from checkpoints written before it existed
RUNTIME_FIELDS = ("loader_workers",)  # how training ran, not what it computed: kept out of the checkpoint


def checkpoint_bytes(checkpoint: dict[str, Any]) -> bytes:
    """The checkpoint `train` returns, as safetensors bytes: the student's state dict as tensors, the rest as
    JSON in a single metadata entry (safetensors writes several entries in a per-process random order; one
    entry with sorted keys gives the same bytes in every run)."""
    from safetensors.torch import save

    meta = {key: checkpoint[key] for key in (*CHECKPOINT_FIELDS, *OPTIONAL_CHECKPOINT_FIELDS) if key in checkpoint}
    meta["format"] = CHECKPOINT_FORMAT
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in checkpoint["model"].items()}
    return save(tensors, metadata={CHECKPOINT_METADATA_KEY: json.dumps(meta, sort_keys=True, separators=(",", ":"))})


def save_student(checkpoint: dict[str, Any], path: str | Path) -> None:
    """Write the checkpoint to `path` atomically (a killed run leaves the old file or none)."""
    from cater.io import atomic_path

    data = checkpoint_bytes(checkpoint)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _not_a_checkpoint(path: Path, data: bytes, detail: str) -> ValueError:
    hint = ""
    if data[:2] == b"PK" or data[:1] == b"\x80":
        hint = "; it looks like a pickle (an old models/student.pt or a crafted file), which is never loaded"
    return ValueError(f"{path}: not a safetensors checkpoint ({detail}){hint}; re-run or re-pull the train stage")


def load_student(checkpoint_path: str | Path) -> tuple[CaTeRStudent, dict]:
    """The student and its checkpoint dict from a file `save_student` wrote. Nothing in the file is unpickled
    or executed: the tensors are read by safetensors and the metadata is JSON."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(checkpoint_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: student checkpoint missing (run or pull the train stage)")
    data = path.read_bytes()
    try:
        tensors = load(data)
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8: 8 + header_len]).get("__metadata__") or {}
    except (SafetensorError, ValueError, UnicodeDecodeError, AttributeError) as exc:
        raise _not_a_checkpoint(path, data, f"{type(exc).__name__}: {str(exc)[:200]}") from None
    if CHECKPOINT_METADATA_KEY not in meta:
        raise ValueError(f"{path}: a safetensors file with no cater student metadata ('{CHECKPOINT_METADATA_KEY}'); "
                         "not a student checkpoint")
    try:
        info = json.loads(meta[CHECKPOINT_METADATA_KEY])
        if not isinstance(info, dict) or info.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"format {info.get('format') if isinstance(info, dict) else info!r}, "
                             f"expected {CHECKPOINT_FORMAT}")
        missing = [key for key in CHECKPOINT_FIELDS if key not in info]
        if missing:
            raise ValueError(f"missing {missing}")
        if not isinstance(info["student_config"], dict):
            raise ValueError("student_config is not a mapping")
        student = CaTeRStudent(StudentConfig(**info["student_config"]))
        student.load_state_dict(tensors)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ValueError(f"{path}: student checkpoint metadata / weights do not fit (student_config: "
                         f"{type(exc).__name__}: {str(exc)[:300]})") from None
    checkpoint = {key: info[key] for key in (*CHECKPOINT_FIELDS, *OPTIONAL_CHECKPOINT_FIELDS) if key in info}
    checkpoint["model"] = tensors
    return student.eval(), checkpoint
