"""Stage `teacher`: score every split with one teacher and write its outputs.

    cater teacher --name videollava [--params params.yaml]   (or python -m cater.stages.teacher ...)

Reads params `teacher.models.<name>` (family, model, dtype, device, device_map, quantization, num_frames,
batch_size; other keys are family options), `data/splits/{train,val,test}.jsonl` and `data/frames/`.
Resumes from `data/.cache/teacher/<name>/` and writes `data/teacher/<name>/outputs.jsonl` (one row per
sample, sorted by id) and `data/teacher/<name>/summary.json`. Run under `accelerate launch` or `torchrun`
to shard the samples across processes.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from cater.config import ConfigError, load_params
from cater.data.frames import FrameStore
from cater.data.schema import SPLITS, Sample, SchemaError, read_samples
from cater.io import atomic_write_json, checkpoint_fingerprint, safe_name, source_digest, write_jsonl
from cater.metrics import bootstrap_ci
from cater.teachers.base import TeacherConfig, TeacherError
from cater.teachers.runner import barrier, check_samples, score_samples

SPLITS_DIR = Path("data/splits")
FRAMES_DIR = Path("data/frames")
CACHE_DIR = Path("data/.cache/teacher")
OUT_DIR = Path("data/teacher")
CONFIG_KEYS = ("family", "model", "dtype", "device", "device_map", "quantization", "num_frames", "batch_size")


def teacher_config(name: str, params: dict[str, Any], source: str) -> TeacherConfig:
    section = params.get("teacher")
    if not isinstance(section, dict) or not isinstance(section.get("models"), dict):
        raise ConfigError(f"{source}: missing section 'teacher.models'")
    models = section["models"]
    if name not in models:
        raise ConfigError(f"{source}: no teacher 'teacher.models.{name}' (defined: {', '.join(sorted(models)) or 'none'})")
    entry = models[name]
    where = f"{source}: teacher.models.{name}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a mapping")
    for key in ("family", "model"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise ConfigError(f"{where}.{key}: required, a non-empty string")
    batch_size = entry.get("batch_size", section.get("batch_size", 4))
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"{where}.batch_size: must be a positive integer, got {batch_size!r}")
    num_frames = entry.get("num_frames")
    if num_frames is not None and (isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1):
        raise ConfigError(f"{where}.num_frames: must be a positive integer or null, got {num_frames!r}")
    known = {k: entry[k] for k in CONFIG_KEYS if k in entry and k != "batch_size"}
    extra = {k: v for k, v in entry.items() if k not in CONFIG_KEYS}
    return TeacherConfig(**known, batch_size=batch_size, extra=extra)


def read_splits() -> dict[str, list[Sample]]:
    splits = {}
    for split in SPLITS:
        path = SPLITS_DIR / f"{split}.jsonl"
        if not path.exists():
            raise FileNotFoundError(f"{path}: split file missing; run the splits stage first")
        splits[split] = read_samples(path)
    return splits


def make_accelerator(config: TeacherConfig):
    """An Accelerator only when launched with several processes (torchrun / accelerate launch)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=config.device == "cpu" or not torch.cuda.is_available())
    if accelerator.device.type == "cuda" and config.device in ("auto", "cuda") and not config.device_map:
        config.device = str(accelerator.device)  # one GPU per process
    return accelerator


def summarize(name: str, config: TeacherConfig, splits: dict[str, list[Sample]], rows: Iterable[dict]) -> dict:
    """Counts per split, missing reasons, and (for information only) the teacher's accuracy on labelled samples.
    `rows` is read once, keeping only each row's choice (memory: a few bytes per sample)."""
    choice: dict[str, int | None] = {}  # sample id -> hard_idx, None when the row has no usable output
    reasons: Counter = Counter()
    for row in rows:
        scored_row = row["choice_logits"] is not None
        choice[row["key"]] = row["hard_idx"] if scored_row else None
        if not scored_row:
            reasons[row["missing_reason"]] += 1
    per_split = {}
    for split, samples in splits.items():
        scored = [s for s in samples if choice[s.id] is not None]
        labelled = [s for s in scored if s.answer_idx is not None]
        hits = np.array([choice[s.id] == s.answer_idx for s in labelled], dtype=bool)
        per_split[split] = {
            "samples": len(samples),
            "scored": len(scored),
            "missing": len(samples) - len(scored),
            "labelled_scored": len(labelled),
            "correct": int(hits.sum()),
            "accuracy": round(float(hits.mean()), 6) if labelled else None,
            "ci95": [round(x, 4) for x in bootstrap_ci(hits, np.array([s.video_id for s in labelled]))] if labelled else None,
        }
    return {
        "teacher": name,
        "family": config.family,
        "model": config.model,
        "samples": len(choice),
        "missing": sum(reasons.values()),
        "missing_reasons": dict(sorted(reasons.items())),
        "splits": per_split,
        "accuracy_note": "hard_idx vs answer_idx over scored, labelled samples; computed after scoring",
    }


def accuracy_line(summary: dict) -> str:
    """One line for stdout: the teacher's accuracy (hard choice vs the answer) per labelled split, with 95% CIs."""
    parts = [f"{split} {v['accuracy']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]"
             for split, v in summary["splits"].items() if v["accuracy"] is not None]
    return f"teacher {summary['teacher']}: accuracy " + ("; ".join(parts) if parts else "n/a (no labelled samples)")


def missing_line(summary: dict) -> str:
    """One line for stdout: `teacher NAME: M/N samples missing (reason: count, ...)`."""
    reasons = ", ".join(f"{reason}: {count}" for reason, count in summary["missing_reasons"].items())
    return f"teacher {summary['teacher']}: {summary['missing']}/{summary['samples']} samples missing" + (f" ({reasons})" if reasons else "")


def run(name: str, params_path: str, progress: bool = True) -> None:
    try:  # the name becomes data/teacher/<name>/ and data/.cache/teacher/<name>/
        safe_name(name, "teacher name")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    params = load_params(params_path, required=("teacher",))
    config = teacher_config(name, params, params_path)
    if config.family == "seed_jsonl" and "splits" not in config.extra and (params.get("dataset") or {}).get("splits"):
        config.extra["splits"] = params["dataset"]["splits"]  # the dataset's own files, under the same names
    splits = read_splits()
    frame_store = FrameStore(FRAMES_DIR)
    for split, samples in splits.items():
        check_samples(samples, frame_store, source=str(SPLITS_DIR / f"{split}.jsonl"))
    samples = [s for split in SPLITS for s in splits[split]]
    check_samples(samples, frame_store, source=str(SPLITS_DIR))  # ids unique across splits

    accelerator = make_accelerator(config)
    from cater.teachers.registry import build_teacher

    teacher = build_teacher(config)
    config_for_hash = {  # the family's code too: a fix to how a teacher scores is never hidden by cached rows
        "code": source_digest("cater.teachers.base", f"cater.teachers.{config.family}"),
        "family": config.family, "model": config.model, "dtype": config.dtype, "quantization": config.quantization,
        "num_frames": config.num_frames, "extra": config.extra, "batch_size": config.batch_size,
        "checkpoint": checkpoint_fingerprint(config.model),
    }
    rows = score_samples(teacher, samples, frame_store, CACHE_DIR / name, config_for_hash, config.batch_size,
                         accelerator=accelerator, progress=progress)
    if accelerator is None or accelerator.is_main_process:
        out_dir = OUT_DIR / name
        choices: list[dict] = []  # what the summary needs of each row, kept while the rows stream to the file

        def recorded(rows):
            for row in rows:
                choices.append({key: row[key] for key in ("key", "choice_logits", "hard_idx", "missing_reason")})
                yield row

        write_jsonl(out_dir / "outputs.jsonl", recorded(rows))  # streamed from the store, one row in memory
        summary = summarize(name, config, splits, choices)
        atomic_write_json(out_dir / "summary.json", summary)
        print(missing_line(summary), flush=True)
        print(accuracy_line(summary), flush=True)
    if accelerator is not None:
        barrier(accelerator)
        accelerator.end_training()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cater teacher", description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="teacher name under teacher.models in params.yaml")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        run(args.name, args.params, progress=not args.no_progress)
    except (TeacherError, ConfigError, SchemaError, FileNotFoundError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"teacher stage failed: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
