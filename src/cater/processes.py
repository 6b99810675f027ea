"""Worker processes that die with their parent.

A SIGKILLed stage cannot shut its ProcessPoolExecutor down, and the workers would live on as orphans:
each holds both ends of the pool's call queue, so waiting for the next job never sees EOF (and they keep
dvc's stdout open). `die_with_parent` is the pool initializer that prevents this:

    ProcessPoolExecutor(max_workers=n, mp_context=get_context("spawn"), initializer=die_with_parent)

The pool's resource_tracker process needs nothing: it exits once every process holding its pipe is gone.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_SECONDS = 1.0


def die_with_parent(parent_pid: int | None = None) -> None:
    """Make this process exit as soon as its parent does (default parent: the one that started it).

    Linux: the kernel sends SIGKILL when the parent dies (prctl PR_SET_PDEATHSIG; "parent" is the thread that
    started this process, which for a pool is the thread that submits to it). Elsewhere, or if prctl is
    unavailable, a daemon thread polls the parent pid. A parent that died before this ran is caught by
    the getppid check (an orphan is re-parented to init or a subreaper, never to the old pid).
    """
    if parent_pid is None:
        parent = multiprocessing.parent_process()  # set in spawned/forked children; None in a main process
        parent_pid = parent.pid if parent is not None else os.getppid()
    if not (sys.platform.startswith("linux") and _set_pdeathsig(signal.SIGKILL)):
        threading.Thread(target=_watch_parent, args=(parent_pid,), name="die-with-parent", daemon=True).start()
    if os.getppid() != parent_pid:
        os._exit(1)


def _set_pdeathsig(sig: int) -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(POLL_SECONDS)
    os._exit(1)
