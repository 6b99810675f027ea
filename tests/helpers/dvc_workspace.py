"""A throwaway copy of this repository as its own git + DVC repo, for end-to-end tests with real `dvc`.

`make_workspace(tmp_path, **overrides)` copies the tracked files (not data, models or dvc.lock),
shrinks the demo in params.yaml, applies `overrides` (dotted keys -> values), and commits, so
`dvc repro`, `dvc exp run`, `dvc push`/`pull` behave as in a user's clone.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SMALL = {
    "dataset.shapes.videos": {"train": 8, "val": 3, "test": 3},
    "frames.workers": 1,
    "train.epochs": 2,
}


def env() -> dict[str, str]:
    """The environment for dvc and cater subprocesses: this venv's bin first, offline, quiet."""
    e = dict(os.environ)
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"
    e.update(HF_HUB_OFFLINE="1", DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t.invalid",
             GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t.invalid", TQDM_DISABLE="1")
    return e


def run(cmd: list[str] | str, cwd: Path, check: bool = True, timeout: int = 600,
        extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env={**env(), **(extra_env or {})}, capture_output=True, text=True, timeout=timeout, shell=isinstance(cmd, str))
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def set_params(path: Path, overrides: dict) -> None:
    params = yaml.safe_load(path.read_text())
    for dotted, value in overrides.items():
        node = params
        keys = dotted.split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        if value is None and keys[-1] in node and dotted.startswith("teacher.models."):
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def make_workspace(tmp_path: Path, overrides: dict | None = None, small: bool = True) -> Path:
    root = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\0")
    skip = ("dvc.lock", "metrics/", "plots/", "reports/")
    for rel in filter(None, files):
        if rel.startswith(skip) or not (REPO / rel).exists():
            continue
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    set_params(root / "params.yaml", {**(SMALL if small else {}), **(overrides or {})})
    run(["git", "init", "-q", "-b", "main"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "workspace"], root)
    return root


def link_dataset(root: Path, cfg: dict, release: Path) -> dict:
    """Link the official layout written under `release` into the workspace as data/raw/<name> (as a user
    links a downloaded release) and return `cfg` with its paths rewritten relative to the repository."""
    link = root / "data" / "raw" / cfg["name"]
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        link.unlink()
    link.symlink_to(Path(release).resolve(), target_is_directory=True)

    def moved(value):
        if isinstance(value, list):
            return [moved(v) for v in value]
        if isinstance(value, str) and Path(value).is_absolute():
            return str(Path("data/raw", cfg["name"], Path(value).resolve().relative_to(Path(release).resolve())))
        return value

    return {key: moved(value) if key in ("annotations", "videos", "frames_dir", "subtitles", "video_mapping", "frames_root") else value
            for key, value in cfg.items()}
