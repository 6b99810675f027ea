"""The `cater` package's import graph has no cycles, counting every import statement (those inside functions too:
a lazy import hides a cycle from Python, not from a reader).

Run by hand: `python tests/test_import_graph.py` prints the cycles, if any, and exits 1.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def modules(src: Path, root: str = "cater") -> dict[str, Path]:
    found = {}
    for path in sorted((src / root).rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """The package modules `path` imports, wherever in the file the statement is.

    `from pkg import name` is an edge to the submodule `pkg.name` when there is one, else to `pkg` itself: a module
    that takes a name from its own parent package's `__init__` depends on it (a real cycle when that `__init__`
    imports the module back), while `from pkg import submodule` needs only the submodule."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {t for t in targets if t in known and t != name}


def cycles(src: Path = SRC, root: str = "cater") -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    known = modules(src, root)
    graph = {name: sorted(imports(path, name, known)) for name, path in known.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_package_has_no_import_cycles():
    assert cycles() == []


def test_a_cycle_through_a_lazy_import_is_found(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub/__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub/b.py").write_text("def f():\n    from ..c import g\n")  # relative and inside a function
    (package / "c.py").write_text("import pkg.a\n")
    (package / "d.py").write_text("from pkg import a\n")  # imports into the cycle, not part of it
    assert cycles(tmp_path, "pkg") == [["pkg.a", "pkg.c", "pkg.sub.b"]]


def test_a_name_taken_from_the_own_parent_package_is_an_edge(tmp_path):
    """pkg/__init__ imports pkg.e, and pkg.e takes a name defined in pkg/__init__: an ImportError waiting to happen.
    Taking a submodule from the parent (`from pkg import f`) is not such an edge."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("from pkg.e import thing\nfrom pkg.g import other\nVERSION = 1\n")
    (package / "e.py").write_text("from pkg import VERSION\nthing = VERSION\n")
    (package / "f.py").write_text("x = 1\n")
    (package / "g.py").write_text("from pkg import f\nother = f.x\n")
    assert cycles(tmp_path, "pkg") == [["pkg", "pkg.e"]]


if __name__ == "__main__":
    found = cycles()
    for component in found:
        print("import cycle: " + " <-> ".join(component))
    sys.exit(1 if found else 0)
