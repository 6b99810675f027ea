"""`cater verify`: reproduce the committed pipeline in a fresh clone and compare every output hash
with the committed dvc.lock.

The clone (`git clone` of HEAD into a temporary directory) gets its own empty DVC cache, so every
stage really runs (`dvc repro --force`). Each stage is reported identical or different, with the
reason where known. Exit status 1 if a data stage (dataset, frames, splits, prompts) differs,
2 if the reproduction itself fails.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cater.ablations import AblationError, Runner

DATA_STAGES = ("dataset", "frames", "splits", "prompts")
# Why a stage's outputs can differ although its inputs are identical: the known reason classes.
KNOWN_REASONS = {
    "tiny_models": "random initialisation: torch's float kernels and RNG streams can differ across CPUs and versions",
    "teacher": "floating-point outputs of the teacher model differ across CPUs/GPUs and kernel choices",
    "features": "floating-point outputs of the backbone differ across CPUs (BLAS kernels, thread count)",
    "train": "floating-point training: reductions and BLAS kernels differ across CPUs, and the errors grow over epochs",
    "eval": "floating-point evaluation of the student: scores within rounding can flip a prediction",
}
DATA_REASON = "a data stage must be byte-identical: a nondeterministic step or a different decoder/encoder version"


@dataclass
class StageResult:
    stage: str
    identical: bool
    differing_outs: list[str] = field(default_factory=list)
    reason: str = ""

    @property
    def data_stage(self) -> bool:
        return self.stage.split("@")[0] in DATA_STAGES


def _hashes(entries: list[dict] | None) -> dict[str, str | None]:
    return {e["path"]: e.get("md5") or e.get("hash") for e in entries or []}


def compare_locks(committed: dict, reproduced: dict) -> list[StageResult]:
    """Per stage of the reproduced lock: outputs identical to the committed lock, or why not."""
    old_stages = committed.get("stages") or {}
    produced_by = {path: name for name, st in (reproduced.get("stages") or {}).items() for path in _hashes(st.get("outs"))}
    results = []
    for name, new in (reproduced.get("stages") or {}).items():
        old = old_stages.get(name)
        if old is None:
            results.append(StageResult(name, False, [], "not in the committed dvc.lock (commit dvc.lock after `dvc repro`)"))
            continue
        old_outs, new_outs = _hashes(old.get("outs")), _hashes(new.get("outs"))
        differing = sorted(p for p in set(old_outs) | set(new_outs) if old_outs.get(p) != new_outs.get(p))
        if not differing:
            results.append(StageResult(name, True))
            continue
        old_deps, new_deps = _hashes(old.get("deps")), _hashes(new.get("deps"))
        changed_deps = sorted(p for p in set(old_deps) | set(new_deps) if old_deps.get(p) != new_deps.get(p))
        changed_params = sorted(f"{file}:{key}" for file, values in (new.get("params") or {}).items()
                                for key in set(values) | set((old.get("params") or {}).get(file, {}))
                                if values.get(key) != (old.get("params") or {}).get(file, {}).get(key))
        if changed_deps or changed_params:
            upstream = [f"{p} (from stage {produced_by[p]})" if p in produced_by else f"{p} (source; the committed dvc.lock is out of date)"
                        for p in changed_deps]
            reason = "a dependency changed: " + ", ".join(upstream + [f"param {p}" for p in changed_params])
        else:
            base = name.split("@")[0]
            reason = DATA_REASON if base in DATA_STAGES else KNOWN_REASONS.get(base, "unknown: same inputs, different outputs")
        results.append(StageResult(name, False, differing, reason))
    return results


def format_results(results: list[StageResult]) -> str:
    lines = []
    for r in results:
        kind = "data" if r.data_stage else "model"
        if r.identical:
            lines.append(f"  {r.stage:<24} identical")
        else:
            outs = f" [{', '.join(r.differing_outs)}]" if r.differing_outs else ""
            lines.append(f"  {r.stage:<24} DIFFERENT ({kind} stage){outs}\n  {'':<24} reason: {r.reason}")
    return "\n".join(lines)


def verify(repo: Path, targets: list[str] | None = None, keep: bool = False, echo=print) -> list[StageResult]:
    """Clone HEAD of `repo`, reproduce it with an empty cache, and compare with its dvc.lock."""
    repo = Path(repo).resolve()
    head = Runner(repo, echo)("git", "rev-parse", "HEAD", quiet=True).stdout.strip()
    if Runner(repo, echo)("git", "status", "--porcelain", "--untracked-files=no", quiet=True).stdout.strip():
        echo("note: uncommitted changes are not verified; the clone holds the last commit only")
    scratch = Path(tempfile.mkdtemp(prefix="cater-verify-"))
    try:
        clone = scratch / "repo"
        Runner(scratch, echo)("git", "clone", "-q", str(repo), str(clone))
        run = Runner(clone, echo)
        lock = clone / "dvc.lock"
        if not lock.exists():
            raise AblationError(f"commit {head[:7]} has no dvc.lock: run `dvc repro` and commit dvc.lock first")
        committed = yaml.safe_load(lock.read_text()) or {}
        run("dvc", "config", "--local", "cache.dir", str(scratch / "cache"), quiet=True)
        echo(f"reproducing {head[:7]} in {clone} (fresh cache)")
        result = run("dvc", "repro", "--force", *(targets or []), check=False)
        if result.returncode != 0:
            raise AblationError(f"`dvc repro` failed in the clone:\n{(result.stdout + result.stderr).strip()[-3000:]}")
        reproduced = yaml.safe_load(lock.read_text()) or {}
        if targets:  # stages outside the targets kept their committed entries: compare only those that ran
            ran = {line.split("'")[1] for line in result.stdout.splitlines() if line.startswith("Running stage '")}
            reproduced = {"stages": {k: v for k, v in (reproduced.get("stages") or {}).items() if k in ran}}
        return compare_locks(committed, reproduced)
    finally:
        if keep:
            echo(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="cater verify", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", help="stages to reproduce (with their upstream); default: all")
    parser.add_argument("--repo", type=Path, default=Path("."), help="the repository (default: .)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary clone for inspection")
    args = parser.parse_args(argv)
    try:
        results = verify(args.repo, args.targets, args.keep)
    except AblationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_results(results))
    different = [r for r in results if not r.identical]
    data = [r.stage for r in different if r.data_stage]
    print(f"{len(results) - len(different)} of {len(results)} stage(s) identical to the committed dvc.lock")
    if data:
        print(f"error: data stage(s) differ: {', '.join(data)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
