"""Worker processes die with their parent: a SIGKILLed stage leaves no orphans (issue #11)."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dataclasses
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cater.data.schema import write_samples

psutil = pytest.importorskip("psutil")

ROOT = Path(__file__).resolve().parents[1]
GONE_WITHIN = 5.0  # seconds after the kill; the polling fallback needs about POLL_SECONDS


def child_env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


def alive(proc) -> bool:
    try:  # an orphan that died but is not reaped (no init in a container) is a zombie: gone
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def command(proc) -> str:
    """The command line of `proc`, or "" once it has exited (a zombie has none)."""
    try:
        return " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return ""


def kill_and_watch(proc: subprocess.Popen, descendants: list) -> list[str]:
    """SIGKILL `proc`; return the descendants still alive GONE_WITHIN seconds later (then kill those)."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + GONE_WITHIN
    while any(alive(p) for p in descendants) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = [p for p in descendants if alive(p)]
    described = [f"{p.pid}: {command(p)[-100:]}" for p in survivors]
    for p in survivors:  # never leave orphans behind, whatever the outcome
        p.kill()
    return described


def pipe_closed(stream, timeout: float) -> bool:
    """Whether every writer of `stream` (a pipe, as dvc's stdout is) has closed it within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], max(0.0, deadline - time.monotonic()))
        if ready and not os.read(stream.fileno(), 1 << 16):
            return True
    return False


def test_sigkill_of_the_frames_stage_leaves_no_orphans(shapes_set, tmp_path):
    """`cater frames` killed mid-decode: its decode workers and resource tracker exit at once, closing stdout."""
    n = 240  # videos: a few seconds of decoding for 2 workers, so they are busy when the stage is killed
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "shapes-set").symlink_to(shapes_set.root, target_is_directory=True)
    samples = []
    for i in range(n):  # distinct video ids, so each is decoded on its own
        s = shapes_set.samples[i % len(shapes_set.samples)]
        video = Path("data/raw/shapes-set") / Path(s.video).relative_to(shapes_set.root)
        samples.append(dataclasses.replace(s, id=f"q{i:03d}", video_id=f"clip{i:03d}", video=str(video)))
    write_samples(tmp_path / "data" / "samples.jsonl", samples)
    (tmp_path / "params.yaml").write_text("frames:\n  num_frames: 8\n  size: 64\n  workers: 2\n  skip_bad: false\n")
    cache = tmp_path / "data" / ".cache" / "frames"

    proc = subprocess.Popen([sys.executable, "-m", "cater.cli", "frames"], cwd=tmp_path, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        stage = psutil.Process(proc.pid)
        deadline = time.monotonic() + 90
        descendants: list = []
        while time.monotonic() < deadline and proc.poll() is None:  # until both workers are decoding
            descendants = stage.children(recursive=True)
            workers = [p for p in descendants if "--multiprocessing-fork" in command(p)]
            if len(workers) == 2 and any(cache.glob("*/*.np[yz]")):
                break
            time.sleep(0.02)
        else:
            rc = proc.poll()
            kill_and_watch(proc, stage.children(recursive=True) if rc is None else [])
            pytest.fail(f"the stage ended (rc {rc}) or never started decoding:\n{proc.stdout.read().decode()[-3000:]}")
        assert any("resource_tracker" in command(p) for p in descendants), descendants
        assert len(list(cache.glob("*/*.np[yz]"))) < n  # killed midway
        survivors = kill_and_watch(proc, descendants)
        assert not survivors, f"orphans {GONE_WITHIN} s after SIGKILL of the stage: {survivors}"
        assert pipe_closed(proc.stdout, 2.0), "the stage's stdout is still held open"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()


POOL_PARENT = """
import sys, time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import cater.processes as processes


def init():
    if sys.argv[1] == "poll":  # as where prctl is unavailable (not Linux): the polling thread does it
        processes._set_pdeathsig = lambda sig: False
    processes.die_with_parent()


if __name__ == "__main__":
    with ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn"), initializer=init) as pool:
        list(pool.map(abs, range(8)))
        print("ready", flush=True)
        time.sleep(120)
"""


@pytest.mark.parametrize("mechanism", ["pdeathsig", "poll"])
def test_pool_workers_die_with_their_parent(tmp_path, mechanism):
    if mechanism == "pdeathsig" and not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux only")
    script = tmp_path / "parent.py"
    script.write_text(POOL_PARENT)
    proc = subprocess.Popen([sys.executable, str(script), mechanism], env=child_env(), stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"ready\n"
        workers = [p for p in psutil.Process(proc.pid).children() if "--multiprocessing-fork" in p.cmdline()]
        assert len(workers) == 2
        survivors = kill_and_watch(proc, workers)
        assert not survivors, f"orphans after SIGKILL of the parent ({mechanism}): {survivors}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()


def test_a_process_whose_parent_is_already_gone_exits_at_once():
    """The race: a parent killed before the worker's initializer ran (getppid is no longer its pid)."""
    code = "import os, sys\nfrom cater.processes import die_with_parent\ndie_with_parent({})\nprint('survived')\n"
    gone = subprocess.run([sys.executable, "-c", code.format("os.getpid()")], env=child_env(), capture_output=True, text=True)
    assert gone.returncode != 0 and "survived" not in gone.stdout, (gone.stdout, gone.stderr)
    kept = subprocess.run([sys.executable, "-c", code.format("")], env=child_env(), capture_output=True, text=True)
    assert kept.returncode == 0 and kept.stdout == "survived\n", kept.stderr
