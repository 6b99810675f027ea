"""Real teachers under real `dvc`: one teacher's outputs travel alone through remote storage.

The workflow this protects: a GPU machine runs `teacher@<name>` and pushes it; another clone pulls
exactly that teacher and `dvc repro` does not run it again (no model is loaded). Remotes: a local
directory, and S3 served by moto_server on 127.0.0.1 (credentials only in environment variables).
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml

from helpers.dvc_workspace import make_workspace, run
from helpers.moto import moto_server

pytestmark = pytest.mark.slow

TEACHER, OTHER = "chatunivi", "videollava"
STAGE = f"teacher@{TEACHER}"
OVERRIDES = {"dataset.shapes.videos": {"train": 3, "val": 1, "test": 1}, "teacher.models.flamingo": None}
MD5_KEY = re.compile(r"files/md5/([0-9a-f]{2})/([0-9a-f]{30}(?:\.dir)?)$")
BUCKET = "cater-teachers"
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "NO_PROXY": "127.0.0.1,localhost"}


def dvc(root: Path, *args: str, check: bool = True):
    return run(["dvc", *args], root, check=check)


def running_stages(output: str) -> list[str]:
    return re.findall(r"^Running stage '([^']+)':", output, flags=re.MULTILINE)


def stage_md5s(root: Path, stage: str) -> set[str]:
    """Every object a stage's outputs consist of: each out's md5 and, for a directory, its files'."""
    outs = yaml.safe_load((root / "dvc.lock").read_text())["stages"][stage]["outs"]
    md5s = set()
    for out in outs:
        md5s.add(out["md5"])
        if out["md5"].endswith(".dir"):
            manifest = root / ".dvc/cache/files/md5" / out["md5"][:2] / out["md5"][2:]
            md5s.update(entry["md5"] for entry in json.loads(manifest.read_text()))
    return md5s


def md5s_in(keys) -> set[str]:
    """md5s of the objects among remote paths or keys (dvc 3 layout: files/md5/ab/cdef...)."""
    found = set()
    for key in keys:
        match = MD5_KEY.search(str(key).replace(os.sep, "/"))
        if match:
            found.add(match.group(1) + match.group(2))
    return found


def tree_md5s(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> Path:
    """Two teachers computed with `dvc repro`, dvc.lock committed."""
    root = make_workspace(tmp_path_factory.mktemp("teachers"), OVERRIDES)
    result = dvc(root, "repro", f"teacher@{OTHER}", STAGE)
    assert {STAGE, f"teacher@{OTHER}"} <= set(running_stages(result.stdout))
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "teachers computed"], root)
    return root


# --- remotes -----------------------------------------------------------------------------------


@dataclass
class Remote:
    url: Callable[[str], str]        # prefix -> remote url
    listing: Callable[[str], list]   # prefix -> the remote's object paths
    endpoint: str | None = None


@pytest.fixture(scope="module")
def moto_s3():
    """moto_server on a free local port with an empty bucket; stopped at the end."""
    with moto_server() as endpoint, pytest.MonkeyPatch.context() as patch:
        for key, value in S3_ENV.items():
            patch.setenv(key, value)
        import boto3

        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=BUCKET)

        def listing(prefix: str) -> list[str]:
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
            return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

        yield Remote(lambda prefix: f"s3://{BUCKET}/{prefix}", listing, endpoint)


@pytest.fixture(scope="module", params=["local", "s3"])
def remote(request, tmp_path_factory) -> Remote:
    if request.param == "s3":
        return request.getfixturevalue("moto_s3")
    base = tmp_path_factory.mktemp("remote")
    return Remote(lambda prefix: str(base / prefix), lambda prefix: list((base / prefix).rglob("*")))


def add_remote(root: Path, name: str, remote: Remote) -> None:
    """A named remote in .dvc/config, committed so that clones have it. No credentials in it."""
    dvc(root, "remote", "add", name, remote.url(name))
    if remote.endpoint:
        dvc(root, "remote", "modify", name, "endpointurl", remote.endpoint)
    config = (root / ".dvc/config").read_text()
    assert "secret" not in config.lower() and "testing" not in config
    run(["git", "add", ".dvc/config"], root)
    run(["git", "commit", "-qm", f"remote {name}"], root)


# --- tests -------------------------------------------------------------------------------------


def test_push_of_one_teacher_stage_sends_only_its_outputs(teachers, remote, request):
    name = f"solo-{request.node.callspec.params['remote']}"
    add_remote(teachers, name, remote)
    dvc(teachers, "push", "-r", name, STAGE)
    pushed = md5s_in(remote.listing(name))
    mine, other = stage_md5s(teachers, STAGE), stage_md5s(teachers, f"teacher@{OTHER}")
    assert len(mine) >= 3  # the directory manifest, outputs.jsonl, summary.json
    assert pushed == mine
    assert not (other - mine) & pushed
    assert not stage_md5s(teachers, "splits") & pushed  # upstream data stays home


def test_a_clone_pulls_one_teacher_and_repro_does_not_run_it(teachers, remote, request, tmp_path):
    name = f"full-{request.node.callspec.params['remote']}"
    add_remote(teachers, name, remote)
    dvc(teachers, "push", "-r", name, "--with-deps", STAGE)
    others_only = stage_md5s(teachers, f"teacher@{OTHER}") - stage_md5s(teachers, STAGE)
    assert not others_only & md5s_in(remote.listing(name))

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(teachers), str(clone)], tmp_path)
    assert not (clone / "data/teacher").exists()
    dvc(clone, "pull", "-r", name, "--with-deps", STAGE)
    assert tree_md5s(clone / f"data/teacher/{TEACHER}") == tree_md5s(teachers / f"data/teacher/{TEACHER}")
    assert not (clone / f"data/teacher/{OTHER}").exists()

    status = dvc(clone, "status", STAGE)
    assert "Data and pipelines are up to date" in status.stdout, status.stdout
    again = dvc(clone, "repro", STAGE)
    assert running_stages(again.stdout) == [], again.stdout
    assert f"Stage '{STAGE}' didn't change, skipping" in again.stdout
    assert tree_md5s(clone / f"data/teacher/{TEACHER}") == tree_md5s(teachers / f"data/teacher/{TEACHER}")
