"""dvc.yaml deps are complete: every `cater` source file a stage can import is one of its deps.

For each stage, the closure of `cater` imports (module-level and inside functions alike, read with `ast`, so an import
in a function that only some runs reach counts too) starting from the stage's command must lie under the stage's
deps. A foreach stage is checked per entry of params.yaml, with `${item.*}` filled in. Empty package `__init__.py`
files are exempt (they can change nothing until they hold code, and then they count). Run it on its own with
`pytest tests/test_stage_deps.py`; the message lists each stage's missing files.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"


def module_file(name: str, src: Path = SRC) -> Path | None:
    """The file of module `name` (a package's __init__.py), or None when it is not in `src`."""
    base = src.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path, package: str) -> set[str]:
    """Every module `path` imports anywhere in its body (absolute and relative imports)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return names


def closure(start: list[Path], src: Path = SRC, root: str = "cater") -> set[Path]:
    """Files of `root` reachable by imports from `start`, with the __init__.py of every package on the way."""
    seen: set[Path] = set()
    todo = list(start)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        rel = path.relative_to(src) if path.is_relative_to(src) else None
        package = ".".join(rel.with_suffix("").parts[:-1] if rel.name != "__init__.py" else rel.parent.parts) if rel else ""
        for name in imported_modules(path, package or root):
            if name != root and not name.startswith(root + "."):
                continue
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__ and a/b/c
                found = module_file(".".join(parts[:i]), src)
                if found is not None and found not in seen:
                    todo.append(found)
    return seen


def stage_entry_points(cmd: str, repo: Path = REPO, src: Path = SRC) -> list[Path]:
    """The source files a stage's command runs: `cater <stage>` -> its module; `python <script>` -> the script."""
    from cater.cli import STAGES

    words = cmd.split()
    if words[0] == "cater":
        return [module_file(STAGES[words[1]], src)]
    if words[0] == "python" and words[1].endswith(".py"):
        return [repo / words[1]]
    raise AssertionError(f"unknown stage command {cmd!r}")


def registry_entry_points(stage: str, item: dict | None, src: Path = SRC) -> list[Path]:
    """Code a stage reaches through a string registry, which the import walk cannot follow: a teacher stage loads
    its family's module by name (cater.teachers.registry.FAMILIES)."""
    if stage.startswith("teacher@") and isinstance(item, dict):
        from cater.teachers.registry import FAMILIES

        target = FAMILIES.get(item.get("family"))
        found = module_file(target.split(":")[0], src) if target else None
        return [found] if found else []
    return []


def covered(path: Path, deps: list[str], repo: Path = REPO) -> bool:
    rel = path.relative_to(repo).as_posix()
    return any(rel == dep or rel.startswith(dep.rstrip("/") + "/") for dep in deps)


def expanded_stages(dvc: dict, params: dict) -> dict[str, dict]:
    """Every stage, foreach stages once per entry, `${...}` filled in from params and the entry."""
    def fill(text: str, item: dict | None, key: str | None) -> str:
        def value(match):
            ref = match.group(1)
            if ref == "key":
                return key
            node = {"item": item, **params} if ref.startswith("item.") else params
            for part in ref.split("."):
                node = node[part]
            return str(node)
        return re.sub(r"\$\{([^}]+)\}", value, text)

    def outs(body: dict, item: dict | None, key: str | None) -> list[str]:  # outs, metrics and plots alike
        entries = [e for kind in ("outs", "metrics", "plots") for e in body.get(kind, [])]
        return [fill(e if isinstance(e, str) else next(iter(e)), item, key) for e in entries]

    out = {}
    for name, stage in dvc["stages"].items():
        if "foreach" in stage:
            entries = params
            for part in stage["foreach"].strip("${} ").split("."):
                entries = entries[part]
            for key, item in entries.items():
                body = stage["do"]
                out[f"{name}@{key}"] = {"cmd": fill(body["cmd"], item, key),
                                        "deps": [fill(d, item, key) for d in body.get("deps", [])],
                                        "outs": outs(body, item, key), "item": item}
        else:
            out[name] = {"cmd": fill(stage["cmd"], None, None), "deps": [fill(d, None, None) for d in stage.get("deps", [])],
                         "outs": outs(stage, None, None)}
    return out


def missing_deps(dvc: dict, params: dict, repo: Path = REPO, src: Path = SRC) -> dict[str, list[str]]:
    """{stage: the source files its imports reach that none of its deps covers}."""
    problems = {}
    for name, stage in expanded_stages(dvc, params).items():
        files = closure(stage_entry_points(stage["cmd"], repo, src) + registry_entry_points(name, stage.get("item"), src), src)
        missing = sorted(p.relative_to(repo).as_posix() for p in files
                         if not covered(p, stage["deps"], repo) and not (p.name == "__init__.py" and not p.read_text().strip()))
        if missing:
            problems[name] = missing
    return problems


def test_every_stage_declares_the_code_it_imports():
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    problems = missing_deps(dvc, params)
    assert not problems, "dvc.yaml deps miss imported files:\n" + "\n".join(f"  {s}: {', '.join(f)}" for s, f in problems.items())


def test_the_check_fails_when_an_import_is_added_without_its_dep(tmp_path):
    """A tiny repository: a stage whose module imports a helper; the check sees the helper only once it is
    imported, also from inside a function, and is satisfied by declaring it."""
    src = tmp_path / "src"
    (src / "cater" / "stages").mkdir(parents=True)
    (src / "cater" / "__init__.py").write_text("")
    (src / "cater" / "stages" / "__init__.py").write_text("")
    (src / "cater" / "helper.py").write_text("X = 1\n")
    (src / "cater" / "other.py").write_text("Y = 2\n")
    stage_file = src / "cater" / "stages" / "dataset.py"
    stage_file.write_text("def run():\n    return 0\n")
    dvc = {"stages": {"dataset": {"cmd": "cater dataset", "deps": ["src/cater/stages/dataset.py"]}}}
    cli = {"dataset": "cater.stages.dataset"}

    def check():
        import cater.cli as real_cli

        saved = real_cli.STAGES
        real_cli.STAGES = cli
        try:
            return missing_deps(dvc, {}, tmp_path, src)
        finally:
            real_cli.STAGES = saved

    assert check() == {}
    stage_file.write_text("def run():\n    from cater import helper\n    return helper.X\n")  # a lazy import
    assert check() == {"dataset": ["src/cater/helper.py"]}
    stage_file.write_text("from ..helper import X\nimport cater.other\n")  # relative and absolute
    assert check() == {"dataset": ["src/cater/helper.py", "src/cater/other.py"]}
    dvc["stages"]["dataset"]["deps"] += ["src/cater/helper.py", "src/cater/other.py"]
    assert check() == {}
    (src / "cater" / "__init__.py").write_text("VERSION = 1\n")  # a package __init__ with code counts too
    assert check() == {"dataset": ["src/cater/__init__.py"]}


@pytest.mark.parametrize("name, package, expected", [
    ("cater.data.schema", "", "src/cater/data/schema.py"),
    ("cater.data", "", "src/cater/data/__init__.py"),
    ("json", "", None),
])
def test_module_files_resolve_inside_the_source_tree_only(name, package, expected):
    found = module_file(name)
    assert (found.relative_to(REPO).as_posix() if found else None) == expected


def test_the_tiny_writers_are_imported_directly_so_the_import_walk_sees_them():
    """cater.testing.tiny imports each family's writer by name (no string import that the walk cannot follow), so the
    tiny_models stage's closure holds every writer, and its deps cover them."""
    tiny = SRC / "cater/testing/tiny"
    assert "importlib" not in (tiny / "__init__.py").read_text()
    files = {p.relative_to(REPO).as_posix() for p in closure([REPO / "scripts/make_tiny_models.py"])}
    writers = {f"src/cater/testing/tiny/{name}.py" for name in ("chatunivi", "flamingo", "videollava", "tokenizers", "finetune")}
    assert writers <= files
    deps = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["tiny_models"]["deps"]
    assert all(covered(REPO / f, deps) for f in writers)


def test_a_teacher_stage_walks_its_familys_code_too():
    """FAMILIES names the class as a string; the check still walks the family package, so an import the family
    adds (say of cater.features) must be in that teacher stage's deps."""
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    stage = expanded_stages(dvc, params)["teacher@chatunivi"]
    files = closure(registry_entry_points("teacher@chatunivi", stage["item"]))
    assert SRC / "cater/teachers/chatunivi/model.py" in files
    stage["deps"] = [d for d in stage["deps"] if d != "src/cater/teachers/chatunivi"]
    missing = [p for p in files if not covered(p, stage["deps"])]
    assert SRC / "cater/teachers/chatunivi/model.py" in missing
