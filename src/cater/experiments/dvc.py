"""Running dvc and git for the experiments: the environment, a recording runner, the baseline commit, and the
curated `dvc exp show` command (`cater compare`)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from cater.experiments.grid import AblationError, EVAL_METRICS


def tool_env() -> dict[str, str]:
    """This interpreter's bin directory first on PATH, so `dvc` and the stages' `cater` are ours."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


class Runner:
    """Runs `dvc`/`git` in one repository; a failing command raises AblationError with its output."""

    def __init__(self, root: Path, echo: Callable[[str], None] = print):
        self.root = Path(root)
        self.echo = echo
        self.env = tool_env()

    def __call__(self, *args: str, check: bool = True, quiet: bool = False, detached: bool = False) -> subprocess.CompletedProcess:
        if not quiet:
            self.echo("$ " + " ".join(_quote(a) for a in args))
        if detached:  # a file, not a pipe: background workers keep it open, and waiting on a pipe would wait for them
            with tempfile.TemporaryFile("w+") as log:
                code = subprocess.run(list(args), cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT).returncode
                log.seek(0)
                result = subprocess.CompletedProcess(list(args), code, log.read(), "")
        else:
            result = subprocess.run(list(args), cwd=self.root, env=self.env, capture_output=True, text=True)
        if check and result.returncode != 0:
            raise AblationError(f"`{' '.join(args)}` failed ({result.returncode}):\n{(result.stdout + result.stderr).strip()[-3000:]}")
        return result


def _quote(arg: str) -> str:
    return arg if re.fullmatch(r"[\w@%+=:,./-]+", arg) else "'" + arg.replace("'", "'\\''") + "'"


def git_changes(run: Runner) -> list[str]:
    """Paths (files) with uncommitted changes, untracked ones included."""
    out = run("git", "status", "--porcelain", "-uall", quiet=True).stdout
    return [line[3:].split(" -> ")[-1].strip('"') for line in out.splitlines() if line.strip()]


def pipeline_files(root: Path) -> list[str]:
    """dvc.lock and the pipeline outputs git tracks (cache: false metrics and plots), relative paths."""
    from dvc.repo import Repo

    paths = ["dvc.lock"]
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            for out in stage.outs:
                if not out.use_cache:
                    paths.append(os.path.relpath(out.fs_path, root))
    return paths


def _is_pipeline_file(path: str, allowed: list[str]) -> bool:
    return Path(path).name == ".gitignore" or any(path == p or path.startswith(p.rstrip("/") + "/") for p in allowed)


def prepare_baseline(run: Runner) -> str:
    """`dvc repro` so every upstream output is current and cached, then commit dvc.lock (and the
    git-tracked metrics) if the tree was otherwise clean. Returns the baseline commit."""
    allowed = pipeline_files(run.root)
    foreign = [p for p in git_changes(run) if not _is_pipeline_file(p, allowed)]
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise AblationError(f"uncommitted changes besides dvc.lock ({shown}): commit or stash them first; "
                            "experiments are queued from the last commit")
    run("dvc", "repro")
    changed = git_changes(run)
    stray = [p for p in changed if not _is_pipeline_file(p, allowed)]
    if stray:
        raise AblationError(f"`dvc repro` changed files outside the pipeline outputs ({', '.join(stray[:5])}); commit them first")
    if changed:
        run("git", "add", "--", *changed)
        run("git", "commit", "-q", "-m", "dvc repro: pipeline outputs before ablations", "--", *changed)
    return run("git", "rev-parse", "HEAD", quiet=True).stdout.strip()



COMPARE_ARGS = [
    "dvc", "exp", "show", "--only-changed", "--hide-failed", "--hide-queued", "--hide-workspace",
    # dvc matches these from the start of the full column name (`metrics/eval.json:test.accuracy`)
    "--drop", r".*(loss|(^|[:.])val\.|best_val|step$|best_epoch|chance|per_type|ci95|baselines|test\.n$|[:.]lr$|models/student\.safetensors)|Created|State|Executor",
    "--keep", r".*test\.(accuracy|ci95_low|ci95_high)$",  # the accuracy with its 95% CI
    "--sort-by", f"{EVAL_METRICS}:test.accuracy", "--sort-order", "desc",  # no --precision: DVC 3.67 ignores it for these values
]


def compare_command() -> str:
    return " ".join(_quote(a) for a in COMPARE_ARGS)
