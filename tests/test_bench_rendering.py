"""Cached benchmark cells re-render identically: the tables are pinned on fixture cells written by an
earlier version of the harness (tests/fixtures/bench), so a refactor of the harness cannot silently
change what `bench compare --report-only` / `bench unsup --report-only` print for the same cells."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from debiaskit.bench import SUITES, _common, _compare, _ffw, _unsup

FIXTURES = Path(__file__).parent / "fixtures" / "bench"
MACHINE = "fixture machine"


@pytest.fixture(autouse=True)
def _fixed_machine(monkeypatch):
    for module in (_compare, _unsup, _common, _ffw):
        monkeypatch.setattr(module, "machine_description", lambda: MACHINE, raising=False)


def _render_compare() -> str:
    cells = json.loads((FIXTURES / "compare_cells.json").read_text())
    suite = replace(SUITES["toy"], unbiased_size=300, train_size=500, values=(0.95, 0.9))
    return _compare.compare_table(
        cells,
        suite=suite,
        command="debiaskit bench compare --suite toy --report-only",
        wall_time_s=12.0,
        budget="mlp, 1 epoch (fixture)",
    )


def _render_unsup(tmp_path: Path) -> tuple[str, dict]:
    root = tmp_path / "unsup"
    shutil.copytree(FIXTURES / "unsup", root)
    _unsup.write_unsup_results(
        root=root, command="debiaskit bench unsup --report-only", wall_time_s=3.0, echo=lambda s: None
    )
    return (root / "summary.md").read_text(), json.loads((root / "results.json").read_text())


def _render_ffw(tmp_path: Path) -> str:
    results = json.loads((FIXTURES / "ffw_cells.json").read_text())
    cells = _ffw.plan(root=tmp_path, vanilla_root=tmp_path / "vanilla", tables=(), rhos=(), seeds=(0, 1), full=False)
    return _ffw._write(tmp_path, cells, results, "debiaskit bench ffw --seeds 2", 90.0, False).read_text()


def test_ffw_tables_of_cached_cells_are_unchanged(tmp_path):
    assert _render_ffw(tmp_path) == (FIXTURES / "ffw_results.md").read_text()


def test_compare_table_of_cached_cells_is_unchanged():
    assert _render_compare() == (FIXTURES / "compare_results.md").read_text()


def test_unsup_summary_of_cached_cells_is_unchanged(tmp_path):
    summary, results = _render_unsup(tmp_path)
    assert summary == (FIXTURES / "unsup_summary.md").read_text()
    assert results == json.loads((FIXTURES / "unsup_results.json").read_text())


def test_compare_table_heads_each_value_with_the_majority_class_and_marks_rows_below_it():
    cells = [c for c in json.loads((FIXTURES / "compare_cells.json").read_text()) if c["seed"] == 0]
    for c in cells:  # what the harness records now beside each cell's audit
        c["majority_class"] = {
            "class": 3,
            "task_accuracy": 0.1,
            "conflicting_accuracy": 0.09,
            "worst_group_accuracy": 0.0,
            "mean_group_accuracy": 0.12,
        }
    suite = replace(SUITES["toy"], values=(0.95, 0.9))
    text = _compare.compare_table(cells, suite=suite, command="test", wall_time_s=1.0)
    table = text.split("#### rho 0.95")[1].split("####")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert rows[0] == "| majority class | 10.00 (n=1) | 9.00 (n=1) | 0.00 (n=1) | 12.00 (n=1) | - | - | - | 1 |"
    assert rows[1].startswith("| vanilla ↓maj | ")  # ERM itself below the trivial predictor here
    means = {line.split(" | ")[0][2:]: float(line.split(" | ")[4].split()[0]) for line in rows[1:]}
    below = {m.split()[0] for m, v in means.items() if v < 12.0}
    assert below and all("↓maj" in m for m in means if m.split()[0] in below)
    assert not any("↓maj" in m for m in means if m.split()[0] not in below)
    assert "+- 0.00" not in table and "assume the bias is easier to learn than the target" in table


if __name__ == "__main__":  # regenerate the golden files (only when a rendering change is intended)
    import tempfile

    for module in (_compare, _unsup, _common, _ffw):
        module.machine_description = lambda: MACHINE
    (FIXTURES / "compare_results.md").write_text(_render_compare())
    with tempfile.TemporaryDirectory() as tmp:
        summary, results = _render_unsup(Path(tmp))
    (FIXTURES / "unsup_summary.md").write_text(summary)
    (FIXTURES / "unsup_results.json").write_text(json.dumps(results, indent=1) + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        (FIXTURES / "ffw_results.md").write_text(_render_ffw(Path(tmp)))
