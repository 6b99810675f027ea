"""`cater show-metrics`: print the test accuracy with its 95% CI beside chance and the trivial
baselines, overall and per question type (from metrics/eval.json)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from cater.stages.evaluate import METRICS, format_accuracy, format_metrics


def main(argv=None) -> int:
    if not METRICS.exists():
        print(f"error: {METRICS} not found; run `dvc repro` first", file=sys.stderr)
        return 1
    metrics = json.loads(METRICS.read_text())
    print(format_metrics(metrics))
    train = Path("metrics/train/metrics.json")
    if train.exists():
        summary = json.loads(train.read_text())
        # the validation accuracy of the selected epoch, with its CI, from eval.json (the same checkpoint)
        val = metrics.get("val") or {"accuracy": summary.get("best_val_accuracy")}
        print(f"best epoch {summary.get('best_epoch')}, validation accuracy {format_accuracy(val)}")
    return 0
