"""The audit hook behind test_pipeline_dvc's deps-and-outs check sees a stage's reads, writes and listings, and
the check names an undeclared input (the negative control for that slow test)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from test_pipeline_dvc import OPEN_AUDIT, audited, undeclared

STAGE_CODE = """
import os, shutil, tempfile
from pathlib import Path
Path("data/a.txt").read_text()
Path("data/secret.txt").read_text()          # read, but not a dep
os.listdir("data")
fd, tmp = tempfile.mkstemp(prefix=".result.json.", suffix=".tmp", dir="data/out")
os.close(fd)
os.replace(tmp, "data/out/result.json")       # cater.io's atomic write
Path("data/out.tmp/part").parent.mkdir()
Path("data/out.tmp/part").write_text("x")      # a stage's own scratch folder
shutil.rmtree("data/out.tmp")
Path("/tmp").exists()                         # outside the workspace: not recorded
"""


def run_stage(root: Path, log: Path, stage: str | None) -> None:
    env = {**os.environ, "PYTHONPATH": str(OPEN_AUDIT), "CATER_OPEN_LOG": str(log)}
    env.pop("DVC_STAGE", None)
    if stage:
        env["DVC_STAGE"] = stage
    subprocess.run([sys.executable, "-c", STAGE_CODE], cwd=root, env=env, check=True)


def test_the_hook_records_a_stage_and_the_check_names_the_undeclared_read(tmp_path):
    root, log = tmp_path / "repo", tmp_path / "log"
    (root / "data/out").mkdir(parents=True)
    log.mkdir()
    (root / "data/a.txt").write_text("a")
    (root / "data/secret.txt").write_text("s")
    run_stage(root, log, "train")
    run_stage(root, log, None)  # a process outside any stage (dvc itself) is not recorded
    events = audited(log)
    assert set(events) == {"train"}
    assert {("data/a.txt", "r"), ("data/secret.txt", "r"), ("data", "list"), ("data/out/result.json", "w"),
            ("data/out/part", "w")} <= events["train"]
    assert not any(path.startswith(("/", "..")) for path, _ in events["train"])
    assert undeclared(events["train"], ["data/a.txt"], ["data/out"], root) == {"undeclared": ["data/secret.txt (r)"]}
    assert undeclared(events["train"], ["data/a.txt", "data/secret.txt"], ["data/out"], root) == {}
    assert undeclared(events["train"], ["data/a.txt", "data/secret.txt"], [], root)["written outside the outs"] == [
        "data/out/part", "data/out/result.json"]
