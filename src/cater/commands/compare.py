"""`cater compare`: print the curated `dvc exp show` command and run it (extra arguments are passed on,
e.g. `cater compare --csv`; output that is not a terminal gets `--md`)."""
from __future__ import annotations

import subprocess
import sys

from cater.experiments import COMPARE_ARGS, compare_command, tool_env


def main(argv=None) -> int:
    extra = list(sys.argv[1:] if argv is None else argv)
    if extra[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if not sys.stdout.isatty() and not {"--md", "--csv", "--json"} & set(extra):
        extra.append("--md")  # the rich table is cut to the terminal's width when piped; Markdown is not
    print(compare_command() + ("" if not extra else " " + " ".join(extra)), flush=True)
    return subprocess.run(COMPARE_ARGS + ["--no-pager"] + extra, env=tool_env()).returncode


if __name__ == "__main__":
    sys.exit(main())
