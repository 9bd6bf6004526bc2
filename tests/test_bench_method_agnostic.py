"""The harnesses know methods only through the registry: no registered method name appears in bench/ code.

A method is one file (its class + MethodInfo); selection rule, budgets, diagnostics and extra epochs come
from the registry entry and the method object. ``bench/_ffw.py`` is exempt: it is the benchmark *of* FFW
(the paper's tables), not a harness over methods; so is ``bench/_dev.py`` (the suite FFW's defaults are
chosen on, and the ablation of its stages against the vanilla model). Data files (published numbers, unsup plans) name
methods by design.
"""

from __future__ import annotations

import ast
from pathlib import Path

import debiaskit.bench
from debiaskit.methods import METHODS

BENCH = Path(debiaskit.bench.__file__).parent
# _ffw.py is the FFW suite; _folders.py lays out the suites' roots, two of which are named after the one method they
# run (`bench vanilla`, `bench ffw`: command and folder names, never a switch on a method)
SINGLE_METHOD_SUITES = {"_ffw.py", "_folders.py", "_dev.py"}  # _dev.py: FFW's development suite


def _string_constants(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


def test_no_method_name_in_bench_code():
    names = set(METHODS)
    hits = [
        f"{path.name}:{line}: {value!r}"
        for path in sorted(BENCH.glob("*.py"))
        if path.name not in SINGLE_METHOD_SUITES
        for line, value in _string_constants(path)
        if value in names
    ]
    assert not hits, "bench/ names methods (use MethodInfo / the method object instead):\n" + "\n".join(hits)


def test_the_scan_would_catch_a_method_name(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text('if method == "jtt":\n    pass\n')
    assert _string_constants(probe) == [(1, "jtt")]
