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
        labelled = split.labels >= 0
        acc = round(accuracy(logits, split.labels), 4) if labelled.any() else None  # e.g. TVQA test_public
        metrics[name] = {"accuracy": acc, "n": int(labelled.sum()), "per_type": per_type(logits, split)}
        if name == "test":
            test_logits, test_split = logits, split
    labelled_masks = [m for m, y in zip(test_split.choice_mask, test_split.labels) if y >= 0]
    metrics["test"]["chance"] = round(sum(1 / int(m.sum()) for m in labelled_masks) / len(labelled_masks), 4) if labelled_masks else None
    PLOTS.mkdir(exist_ok=True)
    _write_csv(PLOTS / "per_type_accuracy.csv", ["question_type", "accuracy", "n"],
               [[t, v["accuracy"], v["n"]] for t, v in metrics["test"]["per_type"].items()])
    chosen = test_logits.argmax(1)
    _write_csv(PLOTS / "confusion.csv", ["actual", "predicted"],
               [[LETTERS[int(y)], LETTERS[int(p)]] for y, p in zip(test_split.labels, chosen) if y >= 0])
    atomic_write_json(METRICS, metrics)  # last, so a failure above leaves no metrics that look valid
    print(format_metrics(metrics))


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def format_metrics(metrics: dict) -> str:
    test = metrics["test"]
    lines = [f"test accuracy {_fmt(test['accuracy'])} on {test['n']} labelled samples (chance {_fmt(test['chance'])})"]
    for qtype, v in test["per_type"].items():
        lines.append(f"  {qtype:<12} {_fmt(v['accuracy'])}  (n={v['n']})")
    if test["accuracy"] is None:
        lines.append(f"  the test split has no labels; validation accuracy {_fmt(metrics['val']['accuracy'])}")
    return "\n".join(lines)


def main(argv=None) -> int:
    from cater.stages.common import stage_main

    return stage_main(__doc__, run, argv=argv, sections=('train', 'teacher', 'prompts'))


if __name__ == "__main__":
    sys.exit(main())
