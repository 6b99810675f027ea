"""I/O helpers: atomic writes, the resumable row store, array encoding, stable hashes."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from cater.io import (
    RowStore,
    atomic_path,
    atomic_write_json,
    decode_array,
    encode_array,
    read_jsonl,
    stable_hash,
    write_jsonl,
)


def test_atomic_path_leaves_nothing_on_exception(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_atomic_path_keeps_the_old_file_on_exception(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(KeyError):
        with atomic_path(target) as tmp:
            tmp.write_text("new")
            raise KeyError("x")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_path_renames_on_success(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"b": 1, "a": [1, 2]})
    assert json.loads(target.read_text()) == {"a": [1, 2], "b": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]



def test_atomic_outputs_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "out.json", {"a": 1})
        (tmp_path / "plain.json").write_text("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.json").stat().st_mode) == stat.S_IMODE((tmp_path / "plain.json").stat().st_mode) == 0o644


def test_jsonl_round_trip_and_error_line(tmp_path):
    rows = [{"key": "a", "v": 1}, {"key": "b", "v": [1.5, None]}]
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, rows)
    assert read_jsonl(path) == rows
    path.write_text(path.read_text() + "{oops\n")
    with pytest.raises(ValueError, match=r"rows\.jsonl:3: malformed JSON"):
        read_jsonl(path)


@pytest.mark.parametrize("array", [
    np.arange(24, dtype=np.float16).reshape(2, 3, 4),
    np.array([[1, -2], [3, 4]], dtype=np.int64).T,  # non-contiguous
    np.zeros((0, 5), dtype=np.float32),
    np.array([255, 0, 7], dtype=np.uint8),
])
def test_encode_decode_array_round_trip(array):
    blob = json.loads(json.dumps(encode_array(array)))  # survives JSON
    out = decode_array(blob)
    assert out.dtype == array.dtype and out.shape == array.shape
    np.testing.assert_array_equal(out, array)
    assert out.flags.writeable  # a copy, not a view of the base64 buffer


def test_stable_hash_ignores_key_order():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
    assert len(stable_hash("x", length=8)) == 8


def test_row_store_round_trip_and_config_dirs(tmp_path):
    store = RowStore(tmp_path, {"model": "m", "n": 8})
    store.append([{"key": "a", "v": 1}, {"key": "b", "v": 2}])
    store.append([])
    assert RowStore(tmp_path, {"n": 8, "model": "m"}).load() == {"a": {"key": "a", "v": 1}, "b": {"key": "b", "v": 2}}
    other = RowStore(tmp_path, {"model": "m", "n": 4})
    assert other.directory != store.directory and other.load() == {}
    assert json.loads((store.directory / "config.json").read_text()) == {"config": {"model": "m", "n": 8}}


@pytest.mark.parametrize("torn", [b'{"key": "c", "v"', b'{"key": "c", "v": 3}', b"garbage\n"])
def test_row_store_drops_and_truncates_a_torn_last_line(tmp_path, torn):
    store = RowStore(tmp_path, {"c": 1})
    store.append([{"key": "a", "v": 1}, {"key": "b", "v": 2}])
    good = store.path.read_bytes()
    with store.path.open("ab") as handle:
        handle.write(torn)  # a killed writer: no newline, or not JSON
    rows = RowStore(tmp_path, {"c": 1}).load()
    assert sorted(rows) == ["a", "b"]
    assert store.path.read_bytes() == good  # truncated back to the last whole line
    store.append([{"key": "c", "v": 3}])
    assert RowStore(tmp_path, {"c": 1}).load()["c"] == {"key": "c", "v": 3}
    lines = store.path.read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["a", "b", "c"]


def test_row_store_reads_other_writers_but_repairs_only_its_own(tmp_path):
    mine = RowStore(tmp_path, {"c": 1}, writer="0")
    theirs = RowStore(tmp_path, {"c": 1}, writer="1")
    mine.append([{"key": "a", "v": 1}])
    theirs.append([{"key": "b", "v": 2}])
    with theirs.path.open("ab") as handle:
        handle.write(b'{"key": "torn"')
    before = theirs.path.read_bytes()
    assert sorted(mine.load()) == ["a", "b"]
    assert theirs.path.read_bytes() == before  # another writer may still be appending


# ---------------------------------------------------------------- names that become path components

@pytest.mark.parametrize("name", ["annotations", "qwen-vl", "llava_7b", "gpt-4o.v2", "a", "x" * 100])
def test_safe_name_accepts_plain_names(name):
    from cater.io import safe_name

    assert safe_name(name, "prompt generator") == name


@pytest.mark.parametrize("name,reason", [
    ("..", "must not start with '.'"),
    (".", "must not start with '.'"),
    (".hidden", "must not start with '.'"),
    ("../../../x", "letters, digits"),
    ("a/b", "letters, digits"),
    ("a\\b", "letters, digits"),
    ("/etc", "letters, digits"),
    ("-rf", "must not start with '-'"),
    ("", "is empty"),
    ("caf\u00e9", "letters, digits"),
    ("ok\n", "letters, digits"),
    ("x" * 101, "longer than 100"),
])
def test_safe_name_refuses_names_that_leave_their_folder(name, reason):
    from cater.io import safe_name

    with pytest.raises(ValueError, match=reason) as info:
        safe_name(name, "prompt generator")
    assert str(info.value).startswith("prompt generator ")  # the message says which name was wrong


def test_safe_name_refuses_non_strings():
    from cater.io import safe_name

    with pytest.raises(ValueError, match="teacher name 3: must be a string"):
        safe_name(3, "teacher name")


def test_atomic_directory_survives_a_kill_between_move_aside_and_removal(tmp_path, monkeypatch):
    """A kill after the old folder was moved aside leaves it under a unique `.*.tmp` name (ignored by
    .dvcignore), and the next replacement of the same path still works."""
    import fnmatch
    import shutil

    from cater.io import atomic_directory

    target = tmp_path / "model"
    with atomic_directory(target) as staging:
        (staging / "v").write_text("1")
    real_rmtree = shutil.rmtree

    def killed(path, *args, **kwargs):
        if ".old" in Path(path).name:
            raise KeyboardInterrupt  # the process dies here
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(target) as staging:
            (staging / "v").write_text("2")
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "model"]
    assert len(leftovers) == 1 and fnmatch.fnmatch(leftovers[0], ".*.tmp"), leftovers
    assert (target / "v").read_text() == "2"
    with atomic_directory(target) as staging:  # the leftover does not block the next replacement
        (staging / "v").write_text("3")
    assert (target / "v").read_text() == "3"


def test_source_digest_follows_the_code_of_the_named_modules(tmp_path, monkeypatch):
    import sys

    from cater.io import source_digest

    package = tmp_path / "digestpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("X = 1\n")
    (package / "b.py").write_text("Y = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    first = source_digest("digestpkg.a", "digestpkg.b")
    assert first == source_digest("digestpkg.b", "digestpkg.a")  # order does not matter
    (package / "a.py").write_text("X = 2\n")  # a code change: cached work keyed by it is stale
    assert source_digest("digestpkg.a", "digestpkg.b") != first
    with pytest.raises(ValueError, match="not found"):
        source_digest("digestpkg.missing")
    whole = source_digest("digestpkg")  # a package: every module below it, not only its __init__
    (package / "sub").mkdir()
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "c.py").write_text("Z = 1\n")
    assert source_digest("digestpkg") != whole
    with_c = source_digest("digestpkg")
    (package / "sub" / "c.py").write_text("Z = 2\n")
    assert source_digest("digestpkg") != with_c
    sys.modules.pop("digestpkg", None)
