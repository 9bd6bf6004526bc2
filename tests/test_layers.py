"""The package's layering holds: the import-linter contracts of pyproject.toml (layers, private modules stay
inside their package, no cycles), plus two rules import-linter cannot express, checked on the source: no
package imports another package's private names, and imports are not hidden inside functions (except in the
CLI, which defers the library so that `debiaskit --help` does not load torch)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "debiaskit"
DEFERRED_ON_PURPOSE = {"cli"}  # start-up speed; everything below imports at module level


def _imports(path: Path):
    """(line, resolved module, imported names, inside a function?) of every debiaskit import in ``path``."""
    module = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module[:-1] if module[-1] != "__init__" else module[:-1]
    tree = ast.parse(path.read_text())
    in_function: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(n) for n in ast.walk(node) if n is not node)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            names = [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            target, names = None, [a.name for a in node.names]
        else:
            continue
        for t in [target] if target else names:
            if t == "debiaskit" or t.startswith("debiaskit."):
                yield node.lineno, t, names if target else [], id(node) in in_function


def _sources():
    return sorted(PACKAGE.rglob("*.py"))


def _package_of(dotted: str) -> str:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_import_linter_contracts_hold(capsys):
    code = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    assert code == 0, capsys.readouterr().out


def test_no_package_imports_another_packages_private_names():
    found = []
    for path in _sources():
        own = _package_of(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        for line, target, names, _ in _imports(path):
            if _package_of(target) in (own, ""):  # own package, or the root's shared modules (_io, _dist, ...)
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private:
                found.append(f"{path.relative_to(ROOT)}:{line} imports {', '.join(private)} from {target}")
    assert not found, "import the package's public name instead (re-export it from its __init__):\n" + "\n".join(found)


def test_imports_are_not_hidden_inside_functions():
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {target} inside a function"
        for path in _sources()
        if path.relative_to(PACKAGE).parts[0] not in DEFERRED_ON_PURPOSE
        for line, target, _, inside in _imports(path)
        if inside
    ]
    assert not found, (
        "import at module level (a cycle it would hide is a layering bug: move the code to its "
        "layer):\n" + "\n".join(found)
    )


def test_the_cli_defers_the_library_so_help_stays_fast():
    code = "import sys, debiaskit.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
