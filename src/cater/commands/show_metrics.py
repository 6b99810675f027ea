"""`cater show-metrics`: print the demo's test accuracy overall and per question type."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from cater.stages.evaluate import METRICS, format_metrics


def main(argv=None) -> int:
    if not METRICS.exists():
        print(f"error: {METRICS} not found; run `dvc repro` first", file=sys.stderr)
        return 1
    metrics = json.loads(METRICS.read_text())
    print(format_metrics(metrics))
    train = Path("metrics/train/metrics.json")
    if train.exists():
        summary = json.loads(train.read_text())
        print(f"best epoch {summary.get('best_epoch')}, validation accuracy {summary.get('best_val_accuracy', float('nan')):.3f}")
    return 0
