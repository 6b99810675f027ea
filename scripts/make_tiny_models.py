"""Write one tiny, randomly initialised teacher checkpoint per family/backend, in the real format.

    python scripts/make_tiny_models.py --out models/tiny [--only videollava ...] [--seed 0]

Families whose module does not import (not written yet, or a missing dependency) are skipped with a
message; the exit status is non-zero only if a requested family fails while writing.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cater.teachers.registry import TINY_MODELS, write_tiny  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    families = sorted({family for family, _, _ in TINY_MODELS})
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="models/tiny", help="folder that receives one subfolder per model")
    parser.add_argument("--only", nargs="+", choices=families, help="families to write (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    failed = False
    for family, backend, folder in TINY_MODELS:
        if args.only and family not in args.only:
            continue
        target = Path(args.out) / folder
        label = family if backend is None else f"{family} ({backend})"
        try:
            write_tiny(family, target, seed=args.seed, backend=backend)
        except ImportError as exc:
            print(f"skipped {label}: its module does not import yet ({exc})", file=sys.stderr)
            continue
        except Exception as exc:  # report every family, then fail
            print(f"FAILED {label}: {type(exc).__name__}: {exc}", file=sys.stderr)
            failed = True
            continue
        print(f"wrote {label} -> {target}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
