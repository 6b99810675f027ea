"""Teacher outputs through DVC remote storage: a local directory and S3 (moto_server on 127.0.0.1).

The "GPU machine" reproduces `teacher@videollava` and pushes its outputs; another clone pulls them,
and `dvc repro` then skips the teacher stage without running any stage command: `cater` and
`python` are replaced on PATH by a tripwire that records any call and fails.
"""
from __future__ import annotations

import os
import secrets

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import stat
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import yaml

from helpers.dvc_workspace import env, make_workspace, run
from helpers.moto import moto_server

TEACHER = "data/teacher/videollava"
# made at run time, so the literal is in no committed file (this one included) and `git grep` means something
KEY_ID, SECRET = "AKIACATERTEST", f"cater-test-secret-{secrets.token_hex(8)}"
BUCKET = "cater-dvc"


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def gpu_repo(tmp_path_factory):
    """The machine that ran the teacher: `dvc repro teacher@videollava`, dvc.lock committed."""
    root = make_workspace(tmp_path_factory.mktemp("gpu"), {"teacher.models.flamingo": None, "teacher.models.chatunivi": None})
    run(["dvc", "repro", "teacher@videollava"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "teacher outputs"], root)
    return root


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto_server on a free local port, with one bucket created through boto3."""
    import boto3

    with moto_server() as url:
        client = boto3.client("s3", endpoint_url=url, aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET,
                              region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield url, client


def tripwire(directory: Path) -> Path:
    """`cater` and `python` that log their call and fail: any stage command that runs is caught."""
    directory.mkdir()
    calls = directory / "calls.log"
    for name in ("cater", "python", "python3"):
        script = directory / name
        script.write_text(f"#!/bin/sh\necho \"{name} $*\" >> {calls}\nexit 1\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return calls


def teacher_files(gpu: Path) -> int:
    """Objects a push of the teacher stage's outputs stores: its files plus the directory listing."""
    lock = yaml.safe_load((gpu / "dvc.lock").read_text())
    [out] = lock["stages"]["teacher@videollava"]["outs"]
    return out["nfiles"] + 1


def push_from_gpu(gpu: Path, remote: str, stored: Callable[[], int]) -> None:
    run(["dvc", "push", "-r", remote, "teacher@videollava"], gpu)
    assert stored() == teacher_files(gpu)  # the teacher's outputs and nothing else
    run(["dvc", "push", "-r", remote, "teacher@videollava", "--with-deps"], gpu)  # its inputs too, for a full pull
    assert stored() > teacher_files(gpu)


def pull_and_skip_teacher(gpu: Path, clone: Path, remote: str) -> None:
    """Pull the teacher outputs into `clone`; `dvc repro` must then skip the teacher stage."""
    run(["dvc", "pull", "-r", remote, "teacher@videollava"], clone)
    assert files_under(clone / TEACHER) == files_under(gpu / TEACHER)
    assert not (clone / "data/frames").exists() and not (clone / "models/tiny").exists()  # only what was asked for
    status = run(["dvc", "status", "teacher@videollava"], clone, check=False).stdout
    assert "changed deps" in status and "deleted:" in status  # its inputs are not here yet

    run(["dvc", "pull", "-r", remote, "teacher@videollava", "--with-deps"], clone)
    calls = tripwire(clone.parent / "tripwire")
    result = run_tripwired(["dvc", "repro", "teacher@videollava"], clone, calls.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Stage 'teacher@videollava' didn't change, skipping" in result.stdout
    assert "Running stage" not in result.stdout
    assert not calls.exists()  # no stage command ran, so no model was loaded
    assert "Data and pipelines are up to date" in run(["dvc", "status", "teacher@videollava"], clone).stdout
    forced = run_tripwired(["dvc", "repro", "--force", "--single-item", "teacher@videollava"], clone, calls.parent)
    assert forced.returncode != 0 and calls.read_text() == "cater teacher --name videollava\n"  # the tripwire works


def run_tripwired(cmd: list[str], cwd: Path, wire: Path) -> subprocess.CompletedProcess:
    """Run with the tripwire first on PATH (dvc itself is called by its absolute path)."""
    environment = env()
    environment["PATH"] = f"{wire}{os.pathsep}{environment['PATH']}"
    dvc = str(Path(sys.executable).parent / cmd[0])
    return subprocess.run([dvc, *cmd[1:]], cwd=cwd, env=environment, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_local_directory_remote(gpu_repo, tmp_path):
    storage = tmp_path / "storage"
    run(["dvc", "remote", "add", "localstore", str(storage)], gpu_repo)
    run(["git", "commit", "-qam", "local remote"], gpu_repo)
    push_from_gpu(gpu_repo, "localstore", lambda: sum(1 for p in storage.rglob("*") if p.is_file()))
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(gpu_repo), str(clone)], tmp_path)
    pull_and_skip_teacher(gpu_repo, clone, "localstore")


@pytest.mark.slow
def test_s3_remote_on_moto(gpu_repo, s3_endpoint, tmp_path, monkeypatch):
    url, client = s3_endpoint
    # the GPU machine takes its credentials from the environment
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    run(["dvc", "remote", "add", "s3store", f"s3://{BUCKET}/cater"], gpu_repo)
    run(["dvc", "remote", "modify", "s3store", "endpointurl", url], gpu_repo)
    run(["git", "commit", "-qam", "s3 remote"], gpu_repo)

    def stored() -> int:
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
        assert all(k.startswith("cater/files/md5/") for k in keys)
        return len(keys)

    push_from_gpu(gpu_repo, "s3store", stored)
    # the other clone keeps them in .dvc/config.local, which git ignores
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(gpu_repo), str(clone)], tmp_path)
    run(["dvc", "remote", "modify", "--local", "s3store", "access_key_id", KEY_ID], clone)
    run(["dvc", "remote", "modify", "--local", "s3store", "secret_access_key", SECRET], clone)
    assert SECRET in (clone / ".dvc/config.local").read_text()
    assert run(["git", "status", "--porcelain"], clone).stdout == ""  # config.local is not for git
    pull_and_skip_teacher(gpu_repo, clone, "s3store")

    assert run(["git", "grep", "-l", SECRET], gpu_repo, check=False).stdout == ""  # never in committed files
    assert SECRET not in (gpu_repo / ".dvc/config").read_text()
