"""Peak memory of assembling the teacher stage's outputs: every row in memory (the old way) vs streamed from the
row store (`RowStore.locate` + `ScoredRows`), at N and 4N rows.

    python benchmarks/bench_teacher_rows.py [--rows 5000] [--factor 4] [--hidden 4096]

Each measurement runs in its own process (peak RSS = ru_maxrss) on a store of rows shaped like a 7B teacher's:
5 letter logits and a float16 hidden state of `--hidden` values. Prints the peak per way and N, and the ratios.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from cater.io import RowStore, atomic_write_text, encode_array, write_jsonl


def make_store(directory: Path, rows: int, hidden: int) -> None:
    store = RowStore(directory, {"bench": 1})
    rng = np.random.default_rng(0)
    for start in range(0, rows, 500):
        store.append({"key": f"s{i:07d}", "choice_logits": rng.standard_normal(5).round(4).tolist(), "hard_idx": 0,
                      "hidden": encode_array(rng.standard_normal(hidden).astype(np.float16)), "missing_reason": None,
                      "input": "x"} for i in range(start, min(rows, start + 500)))


def assemble(directory: Path, way: str, out: Path) -> None:
    from cater.teachers.runner import ScoredRows

    store = RowStore(directory, {"bench": 1})
    if way == "in_memory":  # the old runner: every row parsed and kept, the file text built in one string
        rows = store.load()
        atomic_write_text(out, "".join(json.dumps(rows[key], sort_keys=True, ensure_ascii=False) + "\n" for key in sorted(rows)))
    else:
        locations = store.locate()
        write_jsonl(out, ScoredRows(sorted(locations), locations))


def child(args) -> None:
    assemble(Path(args.store), args.way, Path(args.out))
    print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--child", nargs=3, metavar=("WAY", "STORE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.way, args.store, args.out = args.child
        return child(args)
    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (args.rows, args.rows * args.factor):
            store = Path(tmp) / f"store{n}"
            make_store(store, n, args.hidden)
            size = sum(p.stat().st_size for p in store.rglob("rows-*.jsonl"))
            for way in ("in_memory", "streamed"):
                result = subprocess.run([sys.executable, __file__, "--child", way, str(store), str(Path(tmp) / "out.jsonl")],
                                        capture_output=True, text=True, check=True)
                peaks[way, n] = json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]
                print(f"rows {n:>7,}  store {size / 2**20:7.1f} MB  {way:<9}  peak RSS {peaks[way, n]:8.1f} MB", flush=True)
    small, large = args.rows, args.rows * args.factor
    for way in ("in_memory", "streamed"):
        print(f"{way}: peak at {args.factor}N / peak at N = {peaks[way, large] / peaks[way, small]:.2f}")
    print(f"at {large:,} rows: in_memory / streamed = {peaks['in_memory', large] / peaks['streamed', large]:.2f}")


if __name__ == "__main__":
    main()
