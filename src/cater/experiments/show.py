"""Reading `dvc exp show --json`: each experiment's params, metrics and state; a failed experiment is recognised by
its state (dvc lists it with the baseline's metrics, which are never used)."""
from __future__ import annotations

import json
from dataclasses import dataclass

from cater.experiments.dvc import Runner
from cater.experiments.grid import EVAL_METRICS, AblationError


@dataclass
class ExpRecord:
    name: str
    rev: str
    state: str                 # success | failed | queued | running
    params: dict               # the full params.yaml of the experiment
    test: dict | None          # metrics/eval.json's `test`; None unless the experiment succeeded
    timestamp: str | None = None
    task_id: str | None = None
    error: str | None = None


@dataclass
class Baseline:
    rev: str
    name: str | None
    params: dict
    experiments: list[ExpRecord]


def _params_of(data: dict) -> dict:
    return ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}


def read_show_json(show: list, rev: str | None = None) -> Baseline:
    """The baseline commit (`rev`, else the first one) and its experiments from `dvc exp show --json`
    (DVC 3.x: a list of commits, each with `experiments`: [{name, executor: {state, ...}, revs: [...]}])."""
    if not isinstance(show, list):
        raise AblationError("`dvc exp show --json`: expected a list of commits")
    commits = [c for c in show if c.get("rev") != "workspace"]
    if rev:
        commits = [c for c in commits if c.get("rev", "").startswith(rev) or c.get("name") == rev]
    if not commits:
        raise AblationError(f"`dvc exp show --json` has no baseline commit{' ' + rev if rev else ''}")
    commit = commits[0]
    records = []
    for entry in commit.get("experiments") or []:
        executor = entry.get("executor") or {}
        for item in entry.get("revs") or []:
            data = item.get("data") or {}
            error = item.get("error")
            state = executor.get("state") or ("failed" if error else "success")
            if error and state == "success":
                state = "failed"
            test = None
            if state == "success":  # a failed experiment shows its baseline's metrics: never read them
                test = (((data.get("metrics") or {}).get(EVAL_METRICS) or {}).get("data") or {}).get("test")
            records.append(ExpRecord(
                name=item.get("name") or entry.get("name") or item.get("rev", "")[:7], rev=item.get("rev", ""),
                state=state, params=_params_of(data), test=test, timestamp=data.get("timestamp"),
                task_id=(executor.get("local") or {}).get("task_id"),
                error=(error or {}).get("msg") if isinstance(error, dict) else error))
    return Baseline(commit.get("rev", ""), commit.get("name"), _params_of(commit.get("data") or {}), records)


def fill_eval_from_git(run: Runner, baseline: Baseline) -> None:
    """Experiments whose `test` block has no CI (an eval.json from before `ci95_low`/`ci95_high`: DVC's
    metrics reader drops lists) get the whole `test` block of their committed metrics/eval.json."""
    from cater.metrics import ci_of

    for record in baseline.experiments:
        if record.state != "success" or record.test is None or ci_of(record.test) is not None or not record.rev:
            continue
        shown = run("git", "show", f"{record.rev}:{EVAL_METRICS}", check=False, quiet=True)
        if shown.returncode == 0:
            record.test = (json.loads(shown.stdout).get("test") or record.test)


def exp_show_json(run: Runner, rev: str | None = None) -> list:
    args = ["dvc", "exp", "show", "--json"] + (["--rev", rev] if rev else [])
    try:
        return json.loads(run(*args, quiet=True).stdout)
    except json.JSONDecodeError as exc:
        raise AblationError(f"`{' '.join(args)}` did not print JSON ({exc})") from None


def final_states(baseline: Baseline, tasks: dict[str, str], queue_states: dict[str, str]) -> dict[str, str]:
    """name -> success | failed for the experiments we queued. A success needs `dvc exp show` to say so,
    with metrics, and the queue not to call it failed (a task may have left the queue's list)."""
    by_task = {r.task_id: r for r in baseline.experiments if r.task_id}
    result = {}
    for name, task in tasks.items():
        record = next((r for t, r in by_task.items() if t.startswith(task)), None)
        if record is None:  # no executor record (left the queue): a name is unique among an experiment's successes
            record = next((r for r in baseline.experiments if r.name == name and r.state == "success"), None)
        ok = queue_states.get(name) in ("Success", "Unknown") and record is not None and record.state == "success" \
            and record.test is not None
        result[name] = "success" if ok else "failed"
    return result
