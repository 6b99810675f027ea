"""The DVC queue: queueing experiments, following `dvc queue status` (restarting workers that stop while work is
queued), their logs, and how often each stage ran."""
from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Iterable

from cater.experiments.dvc import Runner
from cater.experiments.grid import AblationError, Experiment


STATUS_ROW = re.compile(r"^(?P<task>[0-9a-f]{7,40})\s+(?P<middle>.*?)\s+(?P<status>Queued|Running|Success|Failed|Unknown)\s*$")
WORKERS = re.compile(r"Worker status:\s*(\d+) active,\s*(\d+) idle")


@dataclass
class QueueStatus:
    tasks: dict[str, tuple[str, str]]  # task id -> (name, status)
    active: int
    idle: int


def parse_queue_status(text: str) -> QueueStatus:
    """Parse `dvc queue status` (it has no --json): task, name, created, status; then the worker line."""
    tasks = {}
    for line in text.splitlines():
        match = STATUS_ROW.match(line.strip())
        if match:
            parts = re.split(r"\s{2,}", match["middle"].strip())
            name = parts[0] if len(parts) >= 2 else ""
            tasks[match["task"]] = (name, match["status"])
    workers = WORKERS.search(text)
    active, idle = (int(workers[1]), int(workers[2])) if workers else (0, 0)
    return QueueStatus(tasks, active, idle)


def queue_status(run: Runner) -> QueueStatus:
    return parse_queue_status(run("dvc", "queue", "status", quiet=True).stdout)


def queue_experiments(run: Runner, experiments: list[Experiment]) -> dict[str, str]:
    """`dvc exp run --queue -n NAME -S ...` for each; returns name -> task id (new tasks only)."""
    before = set(queue_status(run).tasks)
    for exp in experiments:
        args = ["dvc", "exp", "run", "--queue", "-n", exp.name]
        for assignment in exp.set_params():
            args += ["-S", assignment]
        run(*args)
    new = {name: task for task, (name, _) in queue_status(run).tasks.items() if task not in before}
    missing = [e.name for e in experiments if e.name not in new]
    if missing:
        raise AblationError(f"queued experiments missing from `dvc queue status`: {', '.join(missing)}")
    return {e.name: new[e.name] for e in experiments}


def wait_for_queue(run: Runner, tasks: dict[str, str], jobs: int, poll: float = 5.0, stall_polls: int = 3,
                   timeout: float | None = None) -> tuple[dict[str, str], int]:
    """Start `jobs` workers and wait until none of `tasks` is queued or running. Workers that all stop
    while our tasks are still queued (a known DVC queue problem) are started again.
    Returns (name -> final queue status, number of restarts)."""
    run("dvc", "queue", "start", "-j", str(max(1, min(jobs, len(tasks)))), detached=True)
    start, stalled, restarts, last = time.monotonic(), 0, 0, None
    missing: Counter = Counter()  # polls in a row a task was absent from the status (briefly, between states)
    while True:
        time.sleep(poll)
        status = queue_status(run)
        states = {name: status.tasks.get(task, ("", "Unknown"))[1] for name, task in tasks.items()}
        for name, state in states.items():
            missing[name] = missing[name] + 1 if state == "Unknown" else 0
        counts = Counter(states.values())
        summary = ", ".join(f"{counts[s]} {s.lower()}" for s in ("Queued", "Running", "Success", "Failed", "Unknown") if counts[s])
        if summary != last:
            run.echo(f"[{time.monotonic() - start:6.0f} s] {summary} (workers: {status.active} active)")
            last = summary
        vanished = all(missing[n] >= 2 * stall_polls for n, s in states.items() if s == "Unknown")
        if not counts["Queued"] and not counts["Running"] and vanished:
            return states, restarts
        stalled = stalled + 1 if counts["Queued"] and not counts["Running"] and status.active == 0 else 0
        if stalled >= stall_polls:
            restarts += 1
            run.echo(f"queue workers stopped with {counts['Queued']} experiment(s) still queued: starting them again")
            run("dvc", "queue", "start", "-j", str(max(1, min(jobs, counts["Queued"]))), detached=True)
            stalled = 0
        if timeout is not None and time.monotonic() - start > timeout:
            raise AblationError(f"experiments still unfinished after {timeout:.0f} s: {summary}")


def queue_logs(run: Runner, task: str) -> str:
    result = run("dvc", "queue", "logs", task, check=False, quiet=True)
    return result.stdout + result.stderr


RUNNING = re.compile(r"^Running stage '(?P<stage>[^']+)':", re.M)
RESTORED = re.compile(r"^Stage '(?P<stage>[^']+)' is cached - skipping run", re.M)
SKIPPED = re.compile(r"^Stage '(?P<stage>[^']+)' didn't change, skipping", re.M)


@dataclass
class StageCount:
    ran: int = 0        # the stage's command ran
    restored: int = 0   # restored from the run cache, command not run
    skipped: int = 0    # unchanged, nothing done


def count_stage_runs(logs: Iterable[str]) -> dict[str, StageCount]:
    """How often each stage actually ran across experiment logs (`dvc queue logs`)."""
    counts: dict[str, StageCount] = {}
    for text in logs:
        for pattern, attr in ((RUNNING, "ran"), (RESTORED, "restored"), (SKIPPED, "skipped")):
            for match in pattern.finditer(text):
                count = counts.setdefault(match["stage"], StageCount())
                setattr(count, attr, getattr(count, attr) + 1)
    return counts


def format_stage_counts(counts: dict[str, StageCount], experiments: int) -> str:
    lines = [f"stage runs inside {experiments} experiment(s) (ran / restored from run cache / unchanged):"]
    for stage, c in counts.items():
        lines.append(f"  {stage:<24} {c.ran:>3} / {c.restored:>3} / {c.skipped:>3}")
    return "\n".join(lines)
