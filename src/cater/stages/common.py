"""What every stage shares: argument parsing, params loading and a clean error exit."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from cater.config import load_params


def stage_main(description: str, run: Callable[[dict[str, Any], argparse.Namespace], None],
               add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
               argv: list[str] | None = None, sections: tuple[str, ...] | None = None) -> int:
    """Parse arguments, load params (requiring `sections`, default all), run; errors exit 1 with one clear line."""
    module = run.__module__.rsplit(".", 1)[-1]  # cater.stages.<module>: the command `cater <stage>` (cater.cli)
    name = {"evaluate": "eval"}.get(module, module)
    parser = argparse.ArgumentParser(prog=f"cater {name}", description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params, required=sections)
        run(params, args)
    except (ValueError, FileNotFoundError, RuntimeError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
