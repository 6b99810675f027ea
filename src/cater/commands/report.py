"""`cater report`: reports/ablations.md (+ one PNG bar chart per group) from `dvc exp show --json`.

Per group: mean ± std of test accuracy over seeds, its 95% CI (the mean of the seeds' bootstrap CI
bounds from metrics/eval.json), the seed range, Δ from the reference row, whether the CI separates
from the reference row's, the number of test samples, and per-question-type accuracy with CIs;
once per report, the trivial baselines (majority letter, majority answer per type) with their CIs.
Differences are stated only where CIs separate. Only experiments that succeeded are counted. Plain
markdown and PNG files (matplotlib, Agg): the report renders offline.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cater.experiments import (AblationError, Runner, build_grid, build_report, compare_command, exp_show_json, fill_eval_from_git,
                             parse_group_specs, read_settings, read_show_json)

DEFAULT_OUT = Path("reports/ablations.md")


def write_report(out: Path = DEFAULT_OUT, rev: str | None = None, show_json: Path | None = None,
                 groups: dict | None = None, root: Path = Path(".")) -> Path:
    """Read the experiments (from `show_json`, else `dvc exp show --json`) and write the report."""
    run = Runner(root, echo=lambda _: None)
    show = json.loads(Path(show_json).read_text()) if show_json is not None else exp_show_json(run, rev)
    baseline = read_show_json(show, rev)
    if show_json is None:
        fill_eval_from_git(run, baseline)
    if not baseline.params:
        raise AblationError(f"baseline {baseline.rev[:7]} has no params.yaml in `dvc exp show --json`")
    if groups is None:
        groups = read_settings(baseline.params).groups
    grid = build_grid(baseline.params, 1, groups)
    build_report(grid, baseline, Path(root) / out, compare_command())
    return Path(root) / out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="cater report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"markdown file (default: {DEFAULT_OUT})")
    parser.add_argument("--rev", help="baseline commit of the experiments (default: HEAD)")
    parser.add_argument("--json", type=Path, dest="show_json", help="a saved `dvc exp show --json` output to read instead")
    parser.add_argument("--groups", nargs="+", metavar="GROUP[=v1,v2]", help="groups to show (default: ablation.groups, else all)")
    args = parser.parse_args(argv)
    try:
        groups = parse_group_specs(args.groups) if args.groups else None
        out = write_report(args.out, args.rev, args.show_json, groups)
    except (AblationError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(out.read_text(encoding="utf-8"))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
