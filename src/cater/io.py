"""Small I/O helpers: atomic writes, stable hashes, an append-only resumable row store, and `safe_name`."""
from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np


SAFE_NAME_MAX = 100
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def safe_name(name: Any, what: str, max_length: int = SAFE_NAME_MAX) -> str:
    """`name` if it is safe as one path component (a file or folder name), else ValueError naming `what`.

    Every name that becomes part of a path goes through here: prompt generator and teacher names (params keys,
    `--generator`, `--name`) and the frame store's file names. Allowed: ASCII letters, digits, `_`, `-` and `.`,
    at most `max_length` characters, not starting with `.` (so never `.` or `..`, nor a hidden file) or `-`
    (which reads as an option on a command line such as dvc.yaml's `--generator ${key}`).
    """
    if not isinstance(name, str):
        raise ValueError(f"{what} {name!r}: must be a string")
    if not name:
        raise ValueError(f"{what} is empty")
    shown = repr(name) if len(name) <= 2 * max_length else repr(name[:max_length]) + "..."
    if len(name) > max_length:
        raise ValueError(f"{what} {shown}: longer than {max_length} characters")
    if not _SAFE_NAME.fullmatch(name):
        raise ValueError(f"{what} {shown}: use only ASCII letters, digits, '_', '-' and '.' (it becomes a file name)")
    if name[0] in ".-":
        raise ValueError(f"{what} {shown}: must not start with {name[0]!r} (it becomes a file name)")
    return name


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield an empty staging directory beside `path`; it replaces `path` only if the block succeeds.

    An older `path` is moved aside first and removed only after the new one is in place.
    """
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield staging
        # `.<name>.<random>.old.tmp`: unique per call, and matched by .dvcignore's `.*.tmp` if a kill leaves it
        old = path.with_name(f"{staging.name[: -len('.tmp')]}.old.tmp") if path.exists() else None
        if old is not None:
            path.rename(old)
        staging.rename(path)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """One JSON object per line, written as `rows` yields them (memory: one row), appearing complete or not at all."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")


def iter_jsonl(path: str | Path) -> Iterator[dict]:
    """The rows of a JSONL file one at a time (blank lines skipped); a malformed line names file:line."""
    with Path(path).open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{lineno}: malformed JSON ({exc.msg})") from None


def read_jsonl(path: str | Path) -> list[dict]:
    return list(iter_jsonl(path))


def stable_hash(obj: Any, length: int = 16) -> str:
    """A hash of a JSON-serialisable object that does not depend on key order."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def jsonl_lines(path: str | Path):
    """(line number, byte offset, raw line) of each non-blank line of a JSONL file, read as bytes, so a reader can
    come back to a line later (os.pread / seek) without keeping it."""
    offset = 0
    with Path(path).open("rb") as handle:
        for lineno, line in enumerate(handle, start=1):
            start, offset = offset, offset + len(line)
            if line.strip():
                yield lineno, start, line


def source_digest(*modules: str) -> str:
    """A digest of the source files of `modules` (dotted names; a package counts with every .py file under it):
    part of a resumable cache's key, so cached work computed by other code is never reused after that code changes
    (a fix takes effect on the next run)."""
    import importlib.util

    parts = []
    for name in sorted(modules):
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin:
            raise ValueError(f"source_digest: module {name!r} not found")
        if spec.submodule_search_locations:  # a package: its __init__ and every module below it
            for folder in spec.submodule_search_locations:
                for path in sorted(Path(folder).rglob("*.py")):
                    parts.append([f"{name}/{path.relative_to(folder).as_posix()}", file_digest(path)])
        else:
            parts.append([name, file_digest(spec.origin)])
    return stable_hash(parts)


def npy_problem(path: str | Path) -> str | None:
    """Why the .npy file at `path` is not a complete array (None when it is): a missing or unreadable
    header, or fewer (or more) data bytes than its header's shape and dtype need. Reads the header only."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _fortran, dtype = read_header(handle)
            offset = handle.tell()
    except FileNotFoundError:
        return "file not found"
    except Exception as exc:  # ValueError for a bad magic or header, EOFError for a cut one
        return f"unreadable .npy header ({type(exc).__name__}: {exc})"
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = path.stat().st_size
    if size != expected:
        return f"{size} bytes, the header's shape {tuple(shape)} {dtype} needs {expected} (truncated or padded)"
    return None


def npz_problem(path: str | Path) -> str | None:
    """Why the .npz file at `path` is unreadable (None when every member passes its CRC check)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except FileNotFoundError:
        return "file not found"
    except Exception as exc:  # BadZipFile, EOFError, zlib errors
        return f"not a complete .npz archive ({type(exc).__name__}: {exc})"
    return f"member {bad} fails its CRC check" if bad else None


def discard_corrupt(path: str | Path, problem: Callable[[Path], str | None], log: Callable[[str], None] = print) -> bool:
    """For resumable caches: True if `path` holds a complete entry; a present but corrupt entry is named,
    deleted and reported as absent (False), so the caller recomputes it instead of failing on every run."""
    path = Path(path)
    if not path.exists():
        return False
    reason = problem(path)
    if reason is None:
        return True
    log(f"{path}: corrupt cache file ({reason}); discarded, it is recomputed")
    path.unlink()
    return False


def encode_array(array: np.ndarray) -> dict:
    array = np.ascontiguousarray(array)
    return {"dtype": str(array.dtype), "shape": list(array.shape), "b64": base64.b64encode(array.tobytes()).decode()}


def decode_array(blob: dict) -> np.ndarray:
    raw = base64.b64decode(blob["b64"])
    return np.frombuffer(raw, dtype=np.dtype(blob["dtype"])).reshape(blob["shape"]).copy()


class RowStore:
    """Append-only JSONL rows keyed by `key`, in one file per (config hash, writer).

    Each row is written as a whole line and flushed and fsynced, so a SIGKILL loses at most the
    rows in flight. On load, a torn last line (no newline, or not valid JSON) is dropped and
    truncated away, so the next append starts on a clean line.
    """

    def __init__(self, directory: str | Path, config: Any, writer: str = "0"):
        self.config_hash = stable_hash(config)
        self.directory = Path(directory) / self.config_hash
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / f"rows-{writer}.jsonl"
        meta = self.directory / "config.json"
        if not meta.exists():
            atomic_write_json(meta, {"config": config})

    def _scan(self, path: Path, repair: bool, visit: Callable[[int, dict], None]) -> None:
        """Call `visit(offset, row)` for each complete line of `path`, one line in memory at a time. A torn last
        line (no newline, or not valid JSON) ends the scan; with `repair` it is truncated away."""
        good_end = 0
        with path.open("rb") as handle:
            for line in handle:
                if not line.endswith(b"\n"):
                    break
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    break
                visit(good_end, row)
                good_end += len(line)
            size = handle.seek(0, os.SEEK_END)
        if repair and good_end < size:
            with path.open("r+b") as handle:
                handle.truncate(good_end)

    def locate(self, accept: Callable[[dict], bool] | None = None) -> dict[str, tuple[Path, int]]:
        """Where each finished row of this config starts, (file, byte offset), from every writer's file; with
        `accept`, only rows it accepts (so a stale row cannot shadow a valid one). Memory holds the locations,
        not the rows: `read` fetches one when it is needed."""
        found: dict[str, tuple[Path, int]] = {}
        for path in sorted(self.directory.glob("rows-*.jsonl")):
            def visit(offset: int, row: dict, path: Path = path) -> None:
                if accept is None or accept(row):
                    found[row["key"]] = (path, offset)
            self._scan(path, repair=path == self.path, visit=visit)
        return found

    @staticmethod
    def read(location: tuple[Path, int], handles: dict | None = None) -> dict:
        """The row at `location` (from `locate`); `handles` (path -> open binary file) keeps files open across calls."""
        path, offset = location
        if handles is None:
            with path.open("rb") as handle:
                handle.seek(offset)
                return json.loads(handle.readline())
        handle = handles.get(path)
        if handle is None:
            handle = handles[path] = path.open("rb")
        handle.seek(offset)
        return json.loads(handle.readline())

    def load(self, accept: Callable[[dict], bool] | None = None) -> dict[str, dict]:
        """Finished rows of this config from every writer's file, in memory (small stores only; large ones use
        `locate` and `read`); with `accept`, only the rows it accepts."""
        rows: dict[str, dict] = {}
        for path in sorted(self.directory.glob("rows-*.jsonl")):
            def visit(_offset: int, row: dict) -> None:
                if accept is None or accept(row):
                    rows[row["key"]] = row
            self._scan(path, repair=path == self.path, visit=visit)
        return rows

    def append(self, rows: Iterable[dict]) -> None:
        lines = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows)
        if not lines:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())


FULL_HASH_LIMIT = 64 << 20  # files above this are fingerprinted by size and their first and last MiB


def checkpoint_fingerprint(model: str) -> dict:
    """Identifies the checkpoint's content, so cached rows of another checkpoint are never reused."""
    path = Path(model)
    if path.is_file():
        return {"file": file_fingerprint(path)}
    if not path.is_dir():
        return {"hub_id": model}
    files = {}
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        files[str(file.relative_to(path))] = file_fingerprint(file)
    return {"files": files}


def file_fingerprint(path: Path) -> str:
    """sha256 of a file's size and content; above FULL_HASH_LIMIT, of its size and its first and last MiB."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as handle:
        if size <= FULL_HASH_LIMIT:
            digest.update(handle.read())
        else:
            digest.update(handle.read(1 << 20))
            handle.seek(-(1 << 20), os.SEEK_END)
            digest.update(handle.read())
    return digest.hexdigest()
