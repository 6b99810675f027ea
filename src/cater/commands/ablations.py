"""`cater ablations`: queue the recipe's ablation grid as DVC experiments, run it, report failures.

Groups (each over `ablation.seeds` seeds, the seed being `train.seed`), around the reference row
event prompts + hybrid distillation + the default teacher and prompt generator:
  prompt     train.prompt_variant: none, random, frame, event
  distill    train.distill.mode: none, hard, soft, hybrid
  teacher    train.teacher: every entry of teacher.models
  generator  train.prompt_generator: every entry of prompts.generators (when there are several)
Restrict groups and values with `--groups prompt distill=none,hybrid`. Exit status 1 if any
experiment failed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cater.experiments import (EXPERIMENT_STAGES, AblationError, build_grid, compare_command, format_stage_counts,
                             log_tail, parse_group_specs, plan_waves, read_settings, upstream_axes)
from cater.config import load_params


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="cater ablations", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, help="seeds per configuration (default: ablation.seeds, else 3)")
    parser.add_argument("--jobs", type=int, help="parallel queue workers (default: ablation.jobs, else 2)")
    parser.add_argument("--groups", nargs="+", metavar="GROUP[=v1,v2]", help="groups to run, optionally with their values")
    parser.add_argument("--dry-run", action="store_true", help="print the grid and the dvc commands; run nothing")
    parser.add_argument("--no-report", action="store_true", help="do not write reports/ablations.md afterwards")
    parser.add_argument("--params", default="params.yaml")
    return parser.parse_args(argv)


def print_plan(grid, waves) -> None:
    print(f"{len(grid.experiments)} experiment(s), {grid.seeds} seed(s) each configuration, {len(waves)} wave(s)")
    for exp in grid.experiments:
        rows = ", ".join(f"{g}:{v}" for g, v in exp.rows)
        print(f"  {exp.name:<28} [{rows}]")
    print("commands:\n  dvc repro  (then commit dvc.lock if it changed)")
    for number, wave in enumerate(waves, start=1):
        for exp in wave:
            print("  dvc exp run --queue -n " + exp.name + "".join(f" -S {a}" for a in exp.set_params()))
        print(f"  dvc queue start -j N   # wave {number}; wait, restarting workers that stop early")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        params = load_params(args.params)
        settings = read_settings(params, args.params)
        seeds = args.seeds if args.seeds is not None else settings.seeds
        jobs = args.jobs if args.jobs is not None else settings.jobs
        if jobs < 1:
            raise AblationError(f"--jobs must be at least 1, got {jobs}")
        groups = parse_group_specs(args.groups) if args.groups else settings.groups
        grid = build_grid(params, seeds, groups)
        import yaml

        dvc_yaml = yaml.safe_load(Path("dvc.yaml").read_text()) if Path("dvc.yaml").exists() else None
        if dvc_yaml is None:
            raise AblationError("dvc.yaml not found: run from the repository root")
        upstream = upstream_axes(dvc_yaml)
        if upstream:
            print(f"note: {', '.join(sorted(upstream))} feed upstream stages; those run once per value, first")
        if args.dry_run:
            print_plan(grid, plan_waves(grid.experiments, upstream))
            return 0
        from cater.experiments import run_ablations

        result = run_ablations(Path.cwd(), grid, jobs)
    except (AblationError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ran = sum(1 for s in result.states.values() if s != "reused")
    print(format_stage_counts(result.stage_counts, ran))
    extra = [s for s, c in result.stage_counts.items() if c.ran and s.split("@")[0] not in EXPERIMENT_STAGES]
    if extra:
        print(f"warning: upstream stage(s) ran inside experiments: {', '.join(extra)}")
    if result.restarts:
        print(f"queue workers were restarted {result.restarts} time(s)")
    for name, log in result.failure_logs.items():
        print(f"\nFAILED {name}; last lines of `dvc queue logs {name}`:\n{log_tail(log)}")
    counts = {s: sum(1 for v in result.states.values() if v == s) for s in ("success", "reused", "failed")}
    print(f"\n{counts['success']} succeeded, {counts['reused']} reused, {counts['failed']} failed "
          f"in {result.seconds:.0f} s (baseline {result.baseline[:7]})")
    if not args.no_report:
        from cater.commands.report import write_report

        try:
            out = write_report(groups=groups)
            print(f"report: {out}")
        except AblationError as exc:
            print(f"report not written: {exc}", file=sys.stderr)
    print(f"compare: {compare_command()}")
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
