"""Stage `eval`: the student on the test split -> metrics/eval.json and plots/ (per type, confusion)."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

from cater.io import atomic_path, atomic_write_json
from cater.stages.train import CHECKPOINT, prepare
from cater.teachers.base import LETTERS
from cater.train import accuracy, load_student, predict

METRICS = Path("metrics/eval.json")
PLOTS = Path("plots")


def per_type(logits, split) -> dict[str, dict]:
    result = {}
    chosen = logits.argmax(1)
    for qtype in sorted(set(split.question_types)):
        rows = [i for i, t in enumerate(split.question_types) if t == qtype and split.labels[i] >= 0]
        correct = sum(int(chosen[i] == split.labels[i]) for i in rows)
        result[qtype] = {"accuracy": round(correct / len(rows), 4) if rows else None, "n": len(rows)}
    return result


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)


def run(params, args) -> None:
    cfg, features, tensors, batcher = prepare(params)
    student, checkpoint = load_student(CHECKPOINT)
    metrics = {"best_epoch": checkpoint["best_epoch"]}
    for name in ("val", "test"):
        split = tensors[name]
        logits = predict(student, batcher, split)
        labelled = int((split.labels >= 0).sum())
        metrics[name] = {"accuracy": round(accuracy(logits, split.labels), 4), "n": labelled, "per_type": per_type(logits, split)}
        if name == "test":
            test_logits, test_split = logits, split
    chance = sum(1 / int(m.sum()) for m in test_split.choice_mask) / len(test_split)
    metrics["test"]["chance"] = round(chance, 4)
    atomic_write_json(METRICS, metrics)
    PLOTS.mkdir(exist_ok=True)
    _write_csv(PLOTS / "per_type_accuracy.csv", ["question_type", "accuracy", "n"],
               [[t, v["accuracy"], v["n"]] for t, v in metrics["test"]["per_type"].items()])
    chosen = test_logits.argmax(1)
    _write_csv(PLOTS / "confusion.csv", ["actual", "predicted"],
               [[LETTERS[int(y)], LETTERS[int(p)]] for y, p in zip(test_split.labels, chosen) if y >= 0])
    print(format_metrics(metrics))


def format_metrics(metrics: dict) -> str:
    test = metrics["test"]
    lines = [f"test accuracy {test['accuracy']:.3f} on {test['n']} samples (chance {test['chance']:.3f})"]
    for qtype, v in test["per_type"].items():
        lines.append(f"  {qtype:<12} {v['accuracy']:.3f}  (n={v['n']})")
    return "\n".join(lines)


def main(argv=None) -> int:
    from cater.stages.common import stage_main

    return stage_main(__doc__, run, argv=argv, sections=('train', 'teacher', 'prompts'))


if __name__ == "__main__":
    sys.exit(main())
