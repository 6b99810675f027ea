"""`cater plots [REV ...]`: every plot dvc.yaml declares, as one page that renders offline.

`dvc plots show` writes an HTML page that loads vega, vega-lite and vega-embed from a CDN, so it is blank
without a network. This command takes the same Vega-Lite specs with their data (`dvc plots show --json`, or
`dvc plots diff --json REV ...` to compare commits or experiments), renders each one to SVG with vl-convert
(the Vega engine inside the Python package: no browser, no network) and writes `dvc_plots/index.html` with
the SVGs inline (no script, no URL), plus one `.svg` file per plot beside it.
"""
from __future__ import annotations

import argparse
import html
import json
import re
import subprocess
import sys
from pathlib import Path

DEFAULT_OUT = Path("dvc_plots/index.html")
SVG_NAMESPACES = re.compile(r'\s+xmlns(:\w+)?="[^"]*"')  # an inline <svg> in HTML needs none of them


class PlotsError(RuntimeError):
    pass


def plot_specs(revisions: list[str], root: Path = Path(".")) -> dict[str, dict]:
    """{plot name: Vega-Lite spec with its data} as DVC fills them in, for the workspace or `revisions`."""
    from cater.experiments import tool_env

    command = ["dvc", "plots", "diff", *revisions, "--json"] if revisions else ["dvc", "plots", "show", "--json"]
    result = subprocess.run(command, cwd=root, env=tool_env(), capture_output=True, text=True)
    if result.returncode != 0:
        raise PlotsError(f"`{' '.join(command)}` failed: {(result.stderr or result.stdout).strip()[-2000:]}")
    try:
        data = json.loads(result.stdout).get("data") or {}
    except json.JSONDecodeError:
        raise PlotsError(f"`{' '.join(command)}` did not print JSON: {result.stdout[:300]!r}") from None
    specs = {}
    for name, entries in sorted(data.items()):
        vega = [entry["content"] for entry in entries if entry.get("type") == "vega"]
        for i, spec in enumerate(vega):
            specs[name if len(vega) == 1 else f"{name} ({i + 1})"] = spec
    if not specs:
        raise PlotsError("no plots to render: run `dvc repro` first (dvc.yaml declares the plots of train and eval)")
    return specs


def render_svg(spec: dict) -> str:
    import vl_convert

    return vl_convert.vegalite_to_svg(json.dumps(spec))


def page(svgs: dict[str, str], title: str) -> str:
    """One HTML page with every plot's SVG inline: it loads nothing."""
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:2em}figure{margin:0 0 2em 0}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    for name, svg in svgs.items():
        parts.append(f"<figure><figcaption><code>{html.escape(name)}</code></figcaption>{SVG_NAMESPACES.sub('', svg)}</figure>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


def write_plots(out: Path, revisions: list[str], root: Path = Path(".")) -> list[Path]:
    from cater.io import atomic_write_text

    svgs = {name: render_svg(spec) for name, spec in plot_specs(revisions, root).items()}
    folder = (root / out).parent
    written = []
    for name, svg in svgs.items():
        path = folder / f"{file_stem(name)}.svg"
        atomic_write_text(path, svg)
        written.append(path)
    title = "cater plots: " + (" vs ".join(revisions) if revisions else "workspace")
    atomic_write_text(root / out, page(svgs, title))
    return [root / out, *written]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="cater plots", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revisions", nargs="*", help="commits or experiments to compare (default: the workspace)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the HTML page (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    try:
        written = write_plots(args.out, args.revisions)
    except PlotsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {written[0]} ({len(written) - 1} plots, offline) and the SVG files beside it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
