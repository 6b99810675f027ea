"""The whole ablation run: prepare the baseline, queue the grid (in waves), wait, and read back the results."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cater.experiments.dvc import Runner, prepare_baseline
from cater.experiments.grid import Experiment, Grid, plan_waves, upstream_axes
from cater.experiments.queue import StageCount, count_stage_runs, queue_experiments, queue_logs, wait_for_queue
from cater.experiments.show import exp_show_json, final_states, read_show_json


@dataclass
class AblationResult:
    baseline: str
    states: dict[str, str]                 # name -> success | failed | reused
    stage_counts: dict[str, StageCount]
    failure_logs: dict[str, str]
    restarts: int
    seconds: float

    @property
    def failed(self) -> list[str]:
        return [n for n, s in self.states.items() if s == "failed"]


def run_ablations(root: Path, grid: Grid, jobs: int, echo: Callable[[str], None] = print,
                  prepare: bool = True, poll: float = 5.0, extra: list[Experiment] | None = None) -> AblationResult:
    """Reproduce and commit the baseline, queue the grid's experiments (reusing ones that already
    succeeded at this baseline), run them, and collect states, stage counts and failure logs.
    `extra` queues further experiments as they are (tests use it for a deliberately bad one)."""
    import yaml

    start = time.monotonic()
    run = Runner(root, echo)
    # parallel workers share the cores: one torch thread pool each would oversubscribe them
    run.env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, jobs))))
    baseline = prepare_baseline(run) if prepare else run("git", "rev-parse", "HEAD", quiet=True).stdout.strip()
    experiments = list(grid.experiments) + list(extra or [])
    done = {r.name for r in read_show_json(exp_show_json(run), baseline).experiments if r.state == "success"}
    reused = [e for e in experiments if e.name in done]
    todo = [e for e in experiments if e.name not in done]
    if reused:
        echo(f"reusing {len(reused)} experiment(s) that already succeeded at this baseline: {', '.join(e.name for e in reused)}")
    dvc_yaml = yaml.safe_load((Path(root) / "dvc.yaml").read_text()) or {}
    states: dict[str, str] = {e.name: "reused" for e in reused}
    tasks: dict[str, str] = {}
    restarts = 0
    for number, wave in enumerate(plan_waves(todo, upstream_axes(dvc_yaml)) if todo else [], start=1):
        echo(f"wave {number}: queueing {len(wave)} experiment(s)")
        wave_tasks = queue_experiments(run, wave)
        queue_states, wave_restarts = wait_for_queue(run, wave_tasks, jobs, poll=poll)
        restarts += wave_restarts
        show = read_show_json(exp_show_json(run), baseline)
        states.update(final_states(show, wave_tasks, queue_states))
        tasks.update(wave_tasks)
    logs = {name: queue_logs(run, task) for name, task in tasks.items()}
    failure_logs = {name: logs[name] for name, state in states.items() if state == "failed"}
    return AblationResult(baseline, states, count_stage_runs(logs.values()), failure_logs, restarts,
                          time.monotonic() - start)


def log_tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])
