"""`cater teacher-memory`: the exact weight memory of each teacher, built from its config files on the meta device.

Without options: every teacher of params.yaml `teacher.models` (OpenFlamingo and seed_jsonl entries are listed as
not covered). With `--model DIR --family F` (repeatable, in pairs): those checkpoint folders; only their
config.json (and Chat-UniVi's CLIP vision config) are read, so a folder holding the configs of a 7B model
without its weights is enough. See cater.teachers.memory for what each figure counts.
"""
from __future__ import annotations

import argparse
import json
import sys

from cater.teachers.base import TeacherError


def params_entries(params_path: str) -> tuple[list[tuple[str, str, str]], list[str]]:
    from cater.config import load_params

    entries, skipped = [], []
    for name, cfg in (load_params(params_path).get("teacher", {}).get("models") or {}).items():
        family = cfg.get("family")
        if family == "flamingo":
            family = cfg.get("backend", "idefics")
        if family in ("videollava", "idefics", "chatunivi"):
            entries.append((family, cfg["model"], cfg.get("dtype", "fp32")))  # TeacherConfig's default dtype
        else:
            skipped.append(f"{name} ({family}: not covered)")
    return entries, skipped


def main(argv=None) -> int:
    from cater.teachers.memory import FAMILIES, footprint, format_table

    parser = argparse.ArgumentParser(prog="cater teacher-memory", description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], help="a checkpoint folder (with --family)")
    parser.add_argument("--family", action="append", default=[], choices=FAMILIES, help="its family, per --model")
    parser.add_argument("--dtype", default="fp16", choices=("fp32", "fp16", "bf16"),
                        help="the dtype of the unquantized weights under 8bit/4bit, for --model (params entries: their own)")
    parser.add_argument("--params", default="params.yaml", help="params file read when no --model is given")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a markdown table")
    args = parser.parse_args(argv)
    if len(args.model) != len(args.family):
        parser.error("give --model and --family in pairs")
    entries, skipped = ([(f, m, args.dtype) for f, m in zip(args.family, args.model)], []) if args.model \
        else params_entries(args.params)
    try:
        footprints = [footprint(family, model, dtype) for family, model, dtype in entries]
    except TeacherError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([{"family": f.family, "model": f.model, "parameters": f.parameters, "dtype": f.dtype,
                           "bytes": {p: f.bytes(p) for p in ("fp32", "fp16", "8bit", "4bit")},
                           "components": {c.name: c.parameters for c in f.components}} for f in footprints], indent=2))
    else:
        print(format_table(footprints))
        for line in skipped:
            print(f"not covered: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
