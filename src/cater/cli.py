"""`cater <command>`: one command per pipeline stage, plus helpers around the experiments."""
from __future__ import annotations

import importlib
import sys

STAGES = {
    "dataset": "cater.stages.dataset",
    "frames": "cater.stages.frames",
    "splits": "cater.stages.splits",
    "prompts": "cater.stages.prompts",
    "teacher": "cater.stages.teacher",
    "features": "cater.stages.features",
    "train": "cater.stages.train",
    "eval": "cater.stages.evaluate",
}
COMMANDS = {
    "show-metrics": "cater.commands.show_metrics",
    "ablations": "cater.commands.ablations",
    "report": "cater.commands.report",
    "compare": "cater.commands.compare",
    "verify": "cater.commands.verify",
    "checkpoint": "cater.commands.checkpoint",
    "plots": "cater.commands.plots",
    "teacher-memory": "cater.commands.teacher_memory",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    table = {**STAGES, **COMMANDS}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in table:
        print("usage: cater <command> [options]\n\npipeline stages (dvc.yaml runs them in this order):")
        print("  " + "  ".join(STAGES))
        print("other commands:\n  " + "  ".join(COMMANDS))
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(table[argv[0]])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
