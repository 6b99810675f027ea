"""Write one tiny teacher checkpoint per family/backend, in the real format; optionally fine-tune it.

    python scripts/make_tiny_models.py --out models/tiny [--only videollava ...] [--seed 0]
    python scripts/make_tiny_models.py --out models/tiny --finetune-split data/splits/train.jsonl \\
        --frames data/frames [--val-split data/splits/val.jsonl] [--epochs N] [--lr X] [--batch-size B]

Without --finetune-split every checkpoint is randomly initialised (deterministic in --seed). With it, the
demo's teachers (videollava, flamingo with the idefics backend, chatunivi) are then fine-tuned on that
split's samples (train samples only; `cater.testing.tiny.finetune`: cross-entropy of the option letters at
the answer position, the labels reach the loss only), deterministically on the CPU, and saved in their
real format; each folder appears complete or not at all. The random checkpoint exists only in a
temporary folder. OpenFlamingo is not used by the demo and stays random. At the end a table gives each
fine-tuned teacher's train accuracy and, with --val-split, its val accuracy overall and per question type.

Families whose module does not import (not written yet, or a missing dependency) are skipped with a
message; the exit status is non-zero only if a requested family fails while writing or fine-tuning.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cater.testing.tiny import TINY_MODELS, write_tiny  # noqa: E402

# The demo's teachers and their fine-tuning recipe (CLI options override a field for all of them). Epochs
# are sized so writing + fine-tuning + val scoring take ~2 minutes of CPU on 600 train questions with 1
# thread (one epoch: videollava ~4 s, idefics ~7.5 s, chatunivi ~15 s; the time grows with the split).
# Measured on the demo: this does NOT make the tiny teachers competent (see cater.testing.tiny.finetune).
FINETUNE = {
    ("videollava", None): dict(epochs=7, lr=3e-3, batch_size=16),
    ("flamingo", "idefics"): dict(epochs=4, lr=3e-3, batch_size=16),
    ("chatunivi", None): dict(epochs=3, lr=3e-3, batch_size=16),
}


def parse_args(argv: list[str] | None):
    families = sorted({family for family, _, _ in TINY_MODELS})
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="models/tiny", help="folder that receives one subfolder per model")
    parser.add_argument("--only", nargs="+", choices=families, help="families to write (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisation and of fine-tuning")
    tune = parser.add_argument_group("fine-tuning (only with --finetune-split)")
    tune.add_argument("--finetune-split", type=Path, help="samples (jsonl) to fine-tune on, e.g. data/splits/train.jsonl")
    tune.add_argument("--frames", type=Path, help="the frame store of those samples, e.g. data/frames")
    tune.add_argument("--val-split", type=Path, help="samples (jsonl) to report each teacher's accuracy on")
    tune.add_argument("--epochs", type=int, help="epochs (default: per family, see FINETUNE)")
    tune.add_argument("--lr", type=float, help="peak learning rate (default: per family)")
    tune.add_argument("--batch-size", type=int, help="samples per step (default: per family)")
    tune.add_argument("--threads", type=int, default=1,
                      help="CPU threads, fixed for determinism (default 1: a second thread saves ~20%% wall time "
                           "for twice the CPU, and spin-waits badly on a busy machine)")
    tune.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.finetune_split is None:
        given = [flag for flag, value in (("--frames", args.frames), ("--val-split", args.val_split), ("--epochs", args.epochs),
                                          ("--lr", args.lr), ("--batch-size", args.batch_size)) if value is not None]
        if given:
            parser.error(f"{', '.join(given)} need(s) --finetune-split")
    elif args.frames is None:
        parser.error("--finetune-split needs --frames")
    return args


def load_split(path: Path, frames, train_only: bool):
    from cater.data.schema import read_samples
    from cater.testing.tiny.finetune import labelled_inputs

    samples = read_samples(path)
    if train_only:
        other = sorted({s.split for s in samples} - {"train"})
        if other:
            raise SystemExit(f"{path}: fine-tuning uses train samples only, but this file holds {', '.join(other)} samples")
    items, labels = labelled_inputs(samples, frames)
    return samples, items, labels


def per_type_accuracy(samples, chosen) -> dict[str, float]:
    hits: dict[str, list[bool]] = defaultdict(list)
    for sample, choice in zip(samples, chosen):
        hits["all"].append(choice == sample.answer_idx)
        hits[sample.question_type or "-"].append(choice == sample.answer_idx)
    return {key: sum(values) / len(values) for key, values in hits.items()}


def finetune_one(family: str, backend: str | None, target: Path, args, data: dict) -> dict:
    """Random checkpoint in a temporary folder -> fine-tune -> `target` (atomic); returns the report row."""
    from cater.teachers.base import TeacherConfig
    from cater.testing.tiny.finetune import finetune, save_finetuned
    from cater.teachers.registry import build_teacher

    recipe = dict(FINETUNE[(family, backend)])
    for key in ("epochs", "lr", "batch_size"):
        if getattr(args, key) is not None:
            recipe[key] = getattr(args, key)
    extra = {"backend": backend} if backend else {}
    label = family if backend is None else f"{family} ({backend})"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.random-", dir=target.parent) as scratch:
        random_dir = write_tiny(family, Path(scratch) / target.name, seed=args.seed, backend=backend)
        teacher = build_teacher(TeacherConfig(family=family, model=str(random_dir), dtype="fp32", device="cpu", extra=extra))
        result = finetune(teacher, data["train_items"], data["train_labels"], seed=args.seed, threads=args.threads,
                          progress=not args.no_progress, name=label, **recipe)
        save_finetuned(teacher, target)
    row = {"teacher": label, "train": result.train_accuracy, "seconds": result.seconds}
    if data.get("val_items") is not None:
        import torch

        # the saved checkpoint, through the real loading and scoring code
        reloaded = build_teacher(TeacherConfig(family=family, model=str(target), dtype="fp32", device="cpu", extra=extra))
        chosen = []
        torch.set_num_threads(args.threads)
        for start in range(0, len(data["val_items"]), 32):
            chosen += [out.hard_idx for out in reloaded.score(data["val_items"][start:start + 32])]
        row["val"] = per_type_accuracy(data["val_samples"], chosen)
    return row


def report(rows: list[dict], data: dict) -> None:
    if not rows:
        return
    types = sorted({key for row in rows for key in row.get("val", {})} - {"all"})
    header = ["teacher", "train acc", "seconds"] + (["val acc"] + [f"val {t}" for t in types] if types else [])
    lines = [header]
    for row in rows:
        cells = [row["teacher"], f"{row['train']:.3f}", f"{row['seconds']:.1f}"]
        if types:
            cells += [f"{row['val']['all']:.3f}"] + [f"{row['val'].get(t, float('nan')):.3f}" for t in types]
        lines.append(cells)
    if data.get("val_samples"):
        counts: dict[int, int] = defaultdict(int)
        for sample in data["val_samples"]:
            counts[sample.answer_idx] += 1
        majority = max(counts.values()) / len(data["val_samples"])
        lines.append(["(val majority letter)", "", "", f"{majority:.3f}"] + [""] * len(types))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data: dict = {}
    if args.finetune_split is not None:
        from cater.data.frames import FrameStore

        frames = FrameStore(args.frames)
        _, data["train_items"], data["train_labels"] = load_split(args.finetune_split, frames, train_only=True)
        if args.val_split is not None:
            data["val_samples"], data["val_items"], _ = load_split(args.val_split, frames, train_only=False)

    failed = False
    rows = []
    started = time.perf_counter()
    for family, backend, folder in TINY_MODELS:
        if args.only and family not in args.only:
            continue
        target = Path(args.out) / folder
        label = family if backend is None else f"{family} ({backend})"
        tune = args.finetune_split is not None and (family, backend) in FINETUNE
        try:
            if tune:
                rows.append(finetune_one(family, backend, target, args, data))
            else:
                write_tiny(family, target, seed=args.seed, backend=backend)
        except ImportError as exc:
            print(f"skipped {label}: its module does not import yet ({exc})", file=sys.stderr)
            continue
        except Exception as exc:  # report every family, then fail
            print(f"FAILED {label}: {type(exc).__name__}: {exc}", file=sys.stderr)
            failed = True
            continue
        note = " (fine-tuned)" if tune else (" (random; not fine-tuned)" if args.finetune_split is not None else "")
        print(f"wrote {label} -> {target}{note}")
    if rows:
        print(f"fine-tuned {len(rows)} teacher(s) in {time.perf_counter() - started:.1f} s")
        report(rows, data)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
