"""`cater checkpoint [PATH]`: what a student checkpoint holds besides its weights, as JSON: the resolved train config
(every `train:` param, distillation included), the student config, the selected epoch, its global step and its
validation accuracy. They are stored inside the safetensors file (no pickle), so they never drift from the weights."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cater.stages.train import CHECKPOINT


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="cater checkpoint", description=__doc__)
    parser.add_argument("path", nargs="?", default=str(CHECKPOINT), help=f"a student checkpoint (default: {CHECKPOINT})")
    args = parser.parse_args(argv)
    from cater.train import CHECKPOINT_FIELDS, load_student

    try:
        student, checkpoint = load_student(Path(args.path))
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    info = {key: checkpoint[key] for key in CHECKPOINT_FIELDS}
    info["features"] = checkpoint.get("features")  # the backbone and store shapes it was trained on (None: older file)
    info["parameters"] = sum(t.numel() for t in checkpoint["model"].values())
    print(json.dumps(info, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
