"""`cater verify`: reproduce the committed pipeline in a fresh clone and compare it with the commit.

The clone (`git clone` of HEAD into a temporary directory) gets its own empty DVC cache, so every
stage really runs (`dvc repro --force`). Then:

- data stages (dataset, frames, splits, prompts) must be byte-identical to the committed dvc.lock;
- float stages (tiny_models, teacher, features, train, eval) may differ in their bytes (the reason
  is printed), but the reproduced test accuracy in metrics/eval.json must fall inside the committed
  metrics/eval.json's 95% CI (the validation split's when the test split has no labels); the
  difference and the tolerance are printed;
- a stage whose committed dvc.lock entry does not match the committed code, params or command (what
  `dvc status` in the fresh clone reports as changed), and every stage fed by such a stage, is
  "stale in dvc.lock": reported, not counted as a difference. Commit `dvc repro`'s dvc.lock to fix it.

LLM requests are not sent again: the prompt generators' response caches (`data/.cache/prompts/<generator>/responses`,
every request's answer) are copied into the clone, so the prompts stages rebuild their rows from the same answers and
must match byte for byte. `--resend-prompts` asks every request again (an API model's answers can then differ); the
prompts stages' cost estimates and request counts are printed.

Exit status 1 if a data stage differs or the accuracy falls outside the CI, 2 if the reproduction
itself fails.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cater.experiments import EVAL_METRICS, AblationError, Runner
from cater.metrics import ci_of

DATA_STAGES = ("dataset", "frames", "splits", "prompts")
EVAL_STAGE = "eval"
# Why a stage's outputs can differ although its inputs are identical: the known reason classes.
KNOWN_REASONS = {
    "tiny_models": "random initialisation: torch's float kernels and RNG streams can differ across CPUs and versions",
    "teacher": "floating-point outputs of the teacher model differ across CPUs/GPUs and kernel choices",
    "features": "floating-point outputs of the backbone differ across CPUs (BLAS kernels, thread count)",
    "train": "floating-point training: reductions and BLAS kernels differ across CPUs, and the errors grow over epochs",
    "eval": "floating-point evaluation of the student: scores within rounding can flip a prediction",
}
DATA_REASON = "a data stage must be byte-identical: a nondeterministic step or a different decoder/encoder version"
STALE = "stale in dvc.lock"


@dataclass
class StageResult:
    stage: str
    identical: bool
    differing_outs: list[str] = field(default_factory=list)
    reason: str = ""
    stale: bool = False  # its committed dvc.lock entry is out of date (itself or upstream): not a difference

    @property
    def data_stage(self) -> bool:
        return self.stage.split("@")[0] in DATA_STAGES

    @property
    def counted(self) -> bool:
        """A difference that fails verification by itself: a data stage that differs and is not stale."""
        return not self.identical and not self.stale and self.data_stage


def _hashes(entries: list[dict] | None) -> dict[str, str | None]:
    return {e["path"]: e.get("md5") or e.get("hash") for e in entries or []}


def _own_staleness(old: dict, new: dict, produced_by: dict[str, str]) -> list[str]:
    """What makes the committed entry out of date by itself: changed source deps, params, command, outs."""
    old_deps, new_deps = _hashes(old.get("deps")), _hashes(new.get("deps"))
    why = [f"{p} changed" if p in old_deps and p in new_deps else f"{p} {'added to' if p in new_deps else 'removed from'} its deps"
           for p in sorted(set(old_deps) | set(new_deps))
           if p not in produced_by and old_deps.get(p) != new_deps.get(p)]
    old_params, new_params = old.get("params") or {}, new.get("params") or {}
    why += [f"param {file}:{key}" for file in sorted(set(old_params) | set(new_params))
            for key in sorted(set(old_params.get(file) or {}) | set(new_params.get(file) or {}))
            if (old_params.get(file) or {}).get(key) != (new_params.get(file) or {}).get(key)]
    if old.get("cmd") != new.get("cmd"):
        why.append("its command")
    if set(_hashes(old.get("outs"))) != set(_hashes(new.get("outs"))):
        why.append("its declared outputs")
    return why


def compare_locks(committed: dict, reproduced: dict) -> list[StageResult]:
    """Per stage of the reproduced lock: outputs identical to the committed lock, or why not; and
    whether the committed entry is stale (its inputs other than stage outputs changed, or a stage
    that feeds it is stale)."""
    old_stages = committed.get("stages") or {}
    new_stages = reproduced.get("stages") or {}
    produced_by = {path: name for name, st in new_stages.items() for path in _hashes(st.get("outs"))}
    own = {name: (["it is not in the committed dvc.lock"] if name not in old_stages
                  else _own_staleness(old_stages[name], new, produced_by)) for name, new in new_stages.items()}
    changed_deps = {}
    for name, new in new_stages.items():
        old_deps, new_deps = _hashes((old_stages.get(name) or {}).get("deps")), _hashes(new.get("deps"))
        changed_deps[name] = sorted(p for p in set(old_deps) | set(new_deps) if old_deps.get(p) != new_deps.get(p))
    stale_from: dict[str, list[str]] = {}  # stage -> the stale stages upstream that feed it changed inputs
    grew = True
    while grew:  # propagate downstream until nothing changes (the lock's order need not be the pipeline's)
        grew = False
        for name in new_stages:
            sources = sorted({produced_by[p] for p in changed_deps[name] if p in produced_by
                              and (own[produced_by[p]] or produced_by[p] in stale_from)} - {name})
            if sources and stale_from.get(name) != sources:
                stale_from[name], grew = sources, True
    results = []
    for name, new in new_stages.items():
        stale_reasons = own[name] + [f"upstream stage {s} is stale" for s in stale_from.get(name, [])]
        stale_text = f"{STALE}: " + "; ".join(stale_reasons) if stale_reasons else ""
        old = old_stages.get(name)
        if old is None:
            results.append(StageResult(name, False, [], f"{STALE}: not in the committed dvc.lock (commit dvc.lock after `dvc repro`)",
                                       stale=True))
            continue
        old_outs, new_outs = _hashes(old.get("outs")), _hashes(new.get("outs"))
        differing = sorted(p for p in set(old_outs) | set(new_outs) if old_outs.get(p) != new_outs.get(p))
        if not differing:
            results.append(StageResult(name, True, [], stale_text, stale=bool(stale_reasons)))
            continue
        if stale_reasons:
            reason = stale_text
        elif changed_deps[name]:
            reason = "a dependency changed: " + ", ".join(f"{p} (from stage {produced_by[p]})" for p in changed_deps[name])
        else:
            base = name.split("@")[0]
            reason = DATA_REASON if base in DATA_STAGES else KNOWN_REASONS.get(base, "unknown: same inputs, different outputs")
        results.append(StageResult(name, False, differing, reason, stale=bool(stale_reasons)))
    return results


# ---------------------------------------------------------------- the numbers

@dataclass
class MetricCheck:
    """The reproduced accuracy against the committed one and its 95% CI (the tolerance)."""

    split: str | None                      # test, or val when the test split has no labels
    committed: float | None = None
    ci95: tuple[float, float] | None = None
    reproduced: float | None = None
    problem: str = ""                      # why the numbers could not be compared
    stale: bool = False                    # the eval stage is stale in dvc.lock: shown, not counted

    @property
    def difference(self) -> float | None:
        return None if self.committed is None or self.reproduced is None else self.reproduced - self.committed

    @property
    def within(self) -> bool | None:
        if self.reproduced is not None and self.reproduced == self.committed:
            return True  # the same number needs no tolerance
        if self.ci95 is None or self.reproduced is None:
            return None
        return self.ci95[0] <= self.reproduced <= self.ci95[1]

    @property
    def failed(self) -> bool:
        """A numerical regression (or committed numbers that cannot be checked), unless stale."""
        return not self.stale and (bool(self.problem) or self.within is False)


def _labelled_split(metrics: dict) -> str | None:
    return next((s for s in ("test", "val") if (metrics.get(s) or {}).get("accuracy") is not None), None)


def compare_metrics(committed: dict | None, reproduced: dict | None, stale: bool = False) -> MetricCheck:
    """Reproduced vs committed metrics/eval.json: the test accuracy (val's if the test split has no
    labels) must lie inside the committed 95% CI."""
    if committed is None:
        return MetricCheck(None, problem=f"the commit has no {EVAL_METRICS}", stale=stale)
    split = _labelled_split(committed)
    if split is None:
        return MetricCheck(None, problem=f"the committed {EVAL_METRICS} has no accuracy on a labelled split", stale=stale)
    block = committed[split]
    check = MetricCheck(split, float(block["accuracy"]), ci_of(block), stale=stale)
    value = ((reproduced or {}).get(split) or {}).get("accuracy")
    check.reproduced = None if value is None else float(value)
    if check.reproduced is None:
        check.problem = f"the reproduced {EVAL_METRICS} has no {split} accuracy"
    elif check.ci95 is None and check.reproduced != check.committed:
        check.problem = f"the committed {EVAL_METRICS} has no {split}.ci95 (written before CIs: `dvc repro` and commit it)"
    return check


def format_metric_check(check: MetricCheck) -> str:
    head = f"  {EVAL_STAGE + ' ' + (check.split or '') + ' accuracy':<24} "
    if check.split is None or check.committed is None:
        text = head + f"not compared: {check.problem}"
    else:
        lo, hi = check.ci95 or (None, None)
        reproduced = "missing" if check.reproduced is None else f"{check.reproduced:.4f}"
        diff = "" if check.difference is None else f", difference {check.difference:+.4f}"
        tolerance = ("" if check.ci95 is None else
                     f"; tolerance: the committed 95% CI [{lo:.4f}, {hi:.4f}] "
                     f"(-{check.committed - lo:.4f} / +{hi - check.committed:.4f})")
        verdict = ("identical" if check.reproduced == check.committed else "within the CI" if check.within else "OUTSIDE the committed 95% CI" if check.within is False
                   else f"not compared: {check.problem}")
        text = head + f"committed {check.committed:.4f}, reproduced {reproduced}{diff}{tolerance}: {verdict}"
    if check.stale:
        text += f"\n  {'':<24} {STALE}: the committed metrics are not those of the committed code; not counted"
    return text


@dataclass
class Verification:
    results: list[StageResult]
    metrics: MetricCheck | None = None  # None when the eval stage was not reproduced

    @property
    def exit_code(self) -> int:
        return 1 if any(r.counted for r in self.results) or (self.metrics is not None and self.metrics.failed) else 0


def check_metrics(results: list[StageResult], committed: dict | None, reproduced: dict | None) -> MetricCheck | None:
    """The numerical check, when the eval stage was reproduced; stale when its lock entry is."""
    eval_result = next((r for r in results if r.stage == EVAL_STAGE), None)
    if eval_result is None:
        return None
    return compare_metrics(committed, reproduced, stale=eval_result.stale)


def format_results(results: list[StageResult]) -> str:
    lines = []
    for r in results:
        kind = "data" if r.data_stage else "model"
        if r.identical:
            lines.append(f"  {r.stage:<24} identical" + (f" ({r.reason})" if r.stale else ""))
        else:
            outs = f" [{', '.join(r.differing_outs)}]" if r.differing_outs else ""
            label = STALE.upper() if r.stale else "DIFFERENT"
            lines.append(f"  {r.stage:<24} {label} ({kind} stage){outs}\n  {'':<24} reason: {r.reason}")
    return "\n".join(lines)


def format_verification(verification: Verification) -> str:
    results = verification.results
    lines = [format_results(results)]
    if verification.metrics is not None:
        lines.append(format_metric_check(verification.metrics))
    else:
        lines.append(f"  (the {EVAL_STAGE} stage was not reproduced: no numerical check)")
    identical = sum(r.identical for r in results)
    stale = [r.stage for r in results if r.stale]
    lines.append(f"{identical} of {len(results)} stage(s) identical to the committed dvc.lock")
    if stale:
        lines.append(f"{len(stale)} stage(s) {STALE}, not counted: {', '.join(stale)} "
                     "(commit the dvc.lock and metrics that `dvc repro` writes)")
    return "\n".join(lines)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


PROMPT_CACHE = Path("data/.cache/prompts")


def copy_response_caches(repo: Path, clone: Path, echo=print) -> int:
    """Every prompt generator's response cache from `repo` into `clone`; returns the number of cached answers."""
    answers = 0
    for responses in sorted((repo / PROMPT_CACHE).glob("*/responses")):
        target = clone / responses.relative_to(repo)
        shutil.copytree(responses, target, dirs_exist_ok=True)
        answers += sum(1 for path in target.rglob("*") if path.is_file())
    echo(f"reusing {answers} cached prompt response file(s) from {PROMPT_CACHE}: no LLM request is sent again "
         "(--resend-prompts to ask again)")
    return answers


def verify(repo: Path, targets: list[str] | None = None, keep: bool = False, echo=print,
           resend_prompts: bool = False) -> Verification:
    """Clone HEAD of `repo`, reproduce it with an empty cache, and compare with its dvc.lock and metrics."""
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
        committed_metrics = _read_json(clone / EVAL_METRICS)  # git-tracked; `dvc repro` overwrites it
        run("dvc", "config", "--local", "cache.dir", str(scratch / "cache"), quiet=True)
        if resend_prompts:
            echo("--resend-prompts: every prompt request is sent again; the stages' cost estimates follow the run")
        else:
            copy_response_caches(repo, clone, echo)
        echo(f"reproducing {head[:7]} in {clone} (fresh cache)")
        result = run("dvc", "repro", "--force", *(targets or []), check=False)
        for line in result.stdout.splitlines():  # the prompts stages' estimate and `requests sent` lines
            if line.startswith("prompts["):
                echo("  " + line)
        if result.returncode != 0:
            raise AblationError(f"`dvc repro` failed in the clone:\n{(result.stdout + result.stderr).strip()[-3000:]}")
        reproduced = yaml.safe_load(lock.read_text()) or {}
        if targets:  # stages outside the targets kept their committed entries: compare only those that ran
            ran = {line.split("'")[1] for line in result.stdout.splitlines() if line.startswith("Running stage '")}
            reproduced = {"stages": {k: v for k, v in (reproduced.get("stages") or {}).items() if k in ran}}
        results = compare_locks(committed, reproduced)
        return Verification(results, check_metrics(results, committed_metrics, _read_json(clone / EVAL_METRICS)))
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
    parser.add_argument("--resend-prompts", action="store_true",
                        help="send every LLM prompt request again instead of reusing the response caches")
    args = parser.parse_args(argv)
    try:
        verification = verify(args.repo, args.targets, args.keep, resend_prompts=args.resend_prompts)
    except AblationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_verification(verification))
    data = [r.stage for r in verification.results if r.counted]
    if data:
        print(f"error: data stage(s) differ: {', '.join(data)}", file=sys.stderr)
    check = verification.metrics
    if check is not None and check.failed:
        if check.within is False:
            print(f"error: numerical regression: the reproduced {check.split} accuracy {check.reproduced:.4f} is outside "
                  f"the committed 95% CI [{check.ci95[0]:.4f}, {check.ci95[1]:.4f}] (difference {check.difference:+.4f})",
                  file=sys.stderr)
        else:
            print(f"error: the numbers could not be checked: {check.problem}", file=sys.stderr)
    return verification.exit_code


if __name__ == "__main__":
    sys.exit(main())
