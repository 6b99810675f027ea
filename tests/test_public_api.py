"""The public API re-exported from `cater`: every name resolves to its defining module, lazily."""
from __future__ import annotations

import subprocess
import sys

import pytest

import cater


@pytest.mark.parametrize("name", cater.__all__)
def test_every_public_name_comes_from_where_the_table_says(name):
    """`cater.X` is the object of the module the table names, and that module (or a module of that package)
    defines it: the table points at the code, not at a chain of re-exports."""
    import importlib

    obj = getattr(cater, name)
    assert obj is getattr(importlib.import_module(cater._API[name]), name)
    defined_in = getattr(obj, "__module__", None)
    assert defined_in == cater._API[name] or defined_in.startswith(cater._API[name] + "."), defined_in


def test_the_package_never_imports_through_the_public_api():
    """Inside src/cater every import names the defining module: `from cater import X` would hide the dependency
    from the deps check (tests/test_stage_deps.py follows module imports, not this table)."""
    import ast
    from pathlib import Path

    offenders = []
    for path in Path(cater.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "cater" and node.level == 0:
                offenders += [f"{path.name}: {a.name}" for a in node.names if a.name in cater._API]
    assert offenders == []


def test_importing_cater_loads_no_torch_and_unknown_names_fail():
    code = "import sys, cater; assert 'torch' not in sys.modules, 'torch'; print(len(cater.__all__))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == len(cater.__all__) > 20
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cater.nope  # noqa: B018
    assert set(cater.__all__) <= set(dir(cater))
