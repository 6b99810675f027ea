"""Records every file a DVC stage's process opens or lists inside the current directory, when CATER_OPEN_LOG
names a folder.

Put this folder on PYTHONPATH for a `dvc repro`: each Python process that runs a stage (DVC sets DVC_STAGE, e.g.
`teacher@videollava`, for the command and its children) appends `{"stage": ..., "path": "<relative>", "mode": "r" |
"w" | "list"}` lines to `CATER_OPEN_LOG/<pid>.jsonl`. Paths outside the working directory (site-packages, /tmp,
caches in $HOME) are not recorded. Used by tests/test_pipeline_dvc.py and tests/test_open_audit.py; without
CATER_OPEN_LOG it does nothing.
"""
import json
import os
import shutil

_LOG = os.environ.get("CATER_OPEN_LOG")
if _LOG:
    import sys

    # rmtree opens each subfolder by its bare name relative to its parent's descriptor, which the audit event does
    # not carry: without the fd-based walk every name it opens is a full path
    shutil._use_fd_functions = False
    _ROOT = os.path.abspath(os.getcwd())
    _FILE = open(os.path.join(_LOG, f"{os.getpid()}.jsonl"), "a", encoding="utf-8")
    _SEEN: set = set()

    def _mode(event: str, args) -> str:
        if event != "open":
            return "list"
        mode, flags = args[1], args[2]
        if isinstance(mode, str):
            return "w" if any(c in mode for c in "wax+") else "r"
        return "w" if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) else "r"

    def _hook(event: str, args) -> None:
        if event not in ("open", "os.listdir", "os.scandir") or not args:
            return
        stage = os.environ.get("DVC_STAGE")
        path = args[0]
        if stage is None or not isinstance(path, (str, bytes, os.PathLike)):
            return  # not a stage's process, or a file descriptor
        full = os.path.abspath(os.path.join(_ROOT, os.fsdecode(path)))
        if not full.startswith(_ROOT + os.sep):
            return
        key = (stage, os.path.relpath(full, _ROOT), _mode(event, args))
        if key in _SEEN:
            return
        _SEEN.add(key)
        _FILE.write(json.dumps({"stage": key[0], "path": key[1], "mode": key[2]}) + "\n")
        _FILE.flush()

    sys.addaudithook(_hook)
