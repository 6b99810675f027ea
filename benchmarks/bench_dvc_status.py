"""No-op `dvc status` / `dvc repro` time with a stage output of many files (a sharded store) vs one file.

A throwaway git + DVC repository gets one stage whose output is a directory of `--files` files
(10,000 by default, as a frame store of 10,000 videos) and another whose output is one file of the
same total size. After the first `dvc repro`, the no-op commands are timed (best of `--repeats`),
and the ratio of the many-files store to the one-file store is printed.

    python benchmarks/bench_dvc_status.py [--files 10000] [--bytes 4096] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MAKE_MANY = "import os, sys; n, b = int(sys.argv[1]), int(sys.argv[2]); os.makedirs('many', exist_ok=True); " \
            "[open(f'many/{i:06d}.bin', 'wb').write(os.urandom(b)) for i in range(n)]"
MAKE_ONE = "import os, sys; open('one.bin', 'wb').write(os.urandom(int(sys.argv[1]) * int(sys.argv[2])))"


def run(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10000)
    parser.add_argument("--bytes", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    dvc = str(Path(sys.executable).parent / "dvc")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        run(["git", "init", "-q"], root)
        run([dvc, "init", "-q"], root)
        py = sys.executable
        (root / "dvc.yaml").write_text(
            "stages:\n"
            f"  many:\n    cmd: {py} -c \"{MAKE_MANY}\" {args.files} {args.bytes}\n    outs: [many]\n"
            f"  one:\n    cmd: {py} -c \"{MAKE_ONE}\" {args.files} {args.bytes}\n    outs: [one.bin]\n")
        first = run([dvc, "repro"], root)
        print(f"first dvc repro (writes and hashes both outputs, {args.files} files of {args.bytes} B): {first:.1f} s")
        rows = {}
        for target in ("many", "one"):
            status = min(run([dvc, "status", target], root) for _ in range(args.repeats))
            repro = min(run([dvc, "repro", target], root) for _ in range(args.repeats))
            rows[target] = (status, repro)
        print(f"{'output':>28} {'dvc status':>11} {'dvc repro (no-op)':>18}")
        for target, label in (("many", f"{args.files} files"), ("one", "1 file, same bytes")):
            print(f"{label:>28} {rows[target][0]:>10.2f}s {rows[target][1]:>17.2f}s")
        print(f"ratio many/one: status {rows['many'][0] / rows['one'][0]:.2f}x, repro {rows['many'][1] / rows['one'][1]:.2f}x")


if __name__ == "__main__":
    main()
