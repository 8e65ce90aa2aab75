"""Every test can fail: each ``test_*`` function in tests/ must assert something.

A test asserts when its body (nested functions and fixtures it defines included) holds an
``assert`` statement, a ``pytest.raises`` / ``pytest.warns`` / ``pytest.fail`` call, a call
of a function whose name starts with ``assert`` (``np.testing.assert_allclose``), or a call
of a helper in the same module or in ``tests/helpers.py`` that asserts by these rules.
Prints each test that does not, and exits 1 if there is one.

    python .ci/check_tests.py [tests]
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

CHECKS = {"raises", "warns", "fail", "deprecated_call"}


def _called(node: ast.AST) -> str | None:
    if isinstance(node, ast.Call):
        f = node.func
        if isinstance(f, ast.Attribute):
            return f.attr
        if isinstance(f, ast.Name):
            return f.id
    return None


def _direct(fn: ast.AST) -> tuple[bool, set[str]]:
    """(asserts by itself, names of the functions it calls)."""
    calls: set[str] = set()
    for n in ast.walk(fn):
        if isinstance(n, ast.Assert):
            return True, calls
        name = _called(n)
        if name is None:
            continue
        if name.startswith("assert") or name in CHECKS:
            return True, calls
        calls.add(name)
    return False, calls


def _functions(tree: ast.Module) -> dict[str, ast.AST]:
    out: dict[str, ast.AST] = {}
    for n in tree.body:
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef):
            out[n.name] = n
        elif isinstance(n, ast.ClassDef):
            for m in n.body:
                if isinstance(m, ast.FunctionDef | ast.AsyncFunctionDef):
                    out[m.name] = m
    return out


def asserting(functions: dict[str, ast.AST], known: set[str]) -> set[str]:
    """Names of the functions that assert, following calls until nothing changes."""
    direct = {name: _direct(fn) for name, fn in functions.items()}
    found = set(known) | {name for name, (yes, _) in direct.items() if yes}
    while True:
        more = {name for name, (_, calls) in direct.items() if name not in found and calls & found}
        if not more:
            return found
        found |= more


def main(root: str = "tests") -> int:
    folder = Path(root)
    helpers = folder / "helpers.py"
    shared = asserting(_functions(ast.parse(helpers.read_text())), set()) if helpers.is_file() else set()
    bad = []
    count = 0
    for path in sorted(folder.glob("test_*.py")):
        functions = _functions(ast.parse(path.read_text()))
        ok = asserting(functions, shared)
        for name in functions:
            if name.startswith("test_"):
                count += 1
                if name not in ok:
                    bad.append(f"{path}::{name}")
    for b in bad:
        print(f"no assertion: {b}")
    print(f"{count} tests checked, {len(bad)} without an assertion")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
