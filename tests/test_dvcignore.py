"""A write killed midway leaves a `.<name>.<random>.tmp` beside its target; DVC must not see it."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cater.io import atomic_directory, atomic_path

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def repo(tmp_path) -> Path:
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=tmp_path, check=True)
    shutil.copy(ROOT / ".dvcignore", tmp_path / ".dvcignore")
    return tmp_path


def leftover_names(folder: Path) -> list[str]:
    """The temp names atomic_path / atomic_directory really use, recreated as a SIGKILL would have left them
    (an interrupted write that Python sees cleans up after itself)."""
    names = []
    for writer, target in ((atomic_path, "annotations.jsonl"), (atomic_directory, "videollava")):
        try:
            with writer(folder / target) as tmp:
                names.append(tmp.name)
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            pass
    (folder / names[0]).write_text("half a file")
    (folder / names[1]).mkdir()
    return names


def test_temp_files_of_a_killed_write_are_ignored_by_dvc(repo):
    folder = repo / "data" / "prompts"
    folder.mkdir(parents=True)
    names = leftover_names(folder)
    assert all(name.startswith(".") and name.endswith(".tmp") for name in names)
    for name in names:
        result = subprocess.run(["dvc", "check-ignore", f"data/prompts/{name}"], cwd=repo, capture_output=True, text=True)
        assert result.returncode == 0, (name, result.stdout, result.stderr)
    kept = subprocess.run(["dvc", "check-ignore", "data/prompts/annotations.jsonl"], cwd=repo, capture_output=True, text=True)
    assert kept.returncode == 1  # real outputs are not ignored
