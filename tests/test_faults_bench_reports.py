"""Fault injection: two `debiaskit bench` processes sharing one suite root. Each rewrites the root's report
files (whole and atomic) from its own in-memory cells; a finished cell of the other process must never
disappear from the report: every rewrite renders from all finished cells on disk, under the root's report lock.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from debiaskit import _io
from debiaskit._io import atomic_folder, open_root, write_json
from debiaskit.bench import BENCH_CELL, BENCH_COMPARE_ROOT, BENCH_FFW_ROOT, BENCH_VANILLA_ROOT, _compare, _ffw, _vanilla
from debiaskit.bench._compare import RESULT_FILE, SUITES, cell_dir

SUITE = SUITES["toy"]
FLAGS = {
    "uses_bias_labels": False,
    "uses_unbiased_data": False,
    "retrains": True,
    "post_hoc": False,
    "uses_counterfactuals": False,
}


def _compare_cell(root: Path, method: str, seed: int, *, task: float) -> dict:
    """A finished harness cell on disk (an atomic bench-cell folder), as `run_cell` leaves it."""
    cell = {
        "suite": SUITE.name,
        "dataset": SUITE.dataset,
        "param": SUITE.param,
        "value": SUITE.values[0],
        "method": method,
        "seed": seed,
        "wall_time_s": 1.0,
        "audit_time_s": 0.1,
        "reused_run": None,
        "selected_epoch": None,
        "selection": "last epoch",
        "method_config": {},
        "flags": FLAGS,
        "task_accuracy": task,
        "conflicting_accuracy": 0.4,
        "worst_group_accuracy": 0.1,
        "mean_group_accuracy": 0.3,
        "bias_extractability": 0.9,
        "bias_mutual_information": 0.5,
        "counterfactual_bias": None,
        "method_state": {},
    }
    with atomic_folder(cell_dir(root, SUITE, SUITE.values[0], method, seed), kind=BENCH_CELL, force=True) as staging:
        write_json(staging / RESULT_FILE, cell)
    return cell


def _write_compare(root: Path, cells: list[dict], command: str) -> dict:
    _compare.write_compare_results(cells, root=root, suite=SUITE, command=command, wall_time_s=1.0)
    return json.loads((root / _compare.suite_folder(SUITE) / "results.json").read_text())


def _reported(results: dict) -> set:
    return {(c["method"], c["seed"]) for c in results["cells"]}


def test_a_stale_writer_keeps_the_other_writers_compare_cells(tmp_path):
    root = open_root(tmp_path / "bench", kind=BENCH_COMPARE_ROOT)
    a = _compare_cell(root, "vanilla", 0, task=0.51)  # process A's cell
    _write_compare(root, [a], "A")
    b = _compare_cell(root, "groupdro", 1, task=0.62)  # process B's cell, then B's report
    assert _reported(_write_compare(root, [b], "B")) == {("vanilla", 0), ("groupdro", 1)}
    final = _write_compare(root, [a], "A again")  # A rewrites from its own (stale) list
    assert _reported(final) == {("vanilla", 0), ("groupdro", 1)} and final["command"] == "A again"
    md = (root / _compare.suite_folder(SUITE) / "results.md").read_text()
    assert "| vanilla | 51.00 (n=1) |" in md and "| groupdro | 62.00 (n=1) |" in md  # one run: no "+- 0.00"


def test_a_report_waits_for_the_rewrite_in_progress_and_then_includes_its_cells(tmp_path, monkeypatch):
    """The race a render-from-disk alone leaves open: A reads the cells, B finishes a cell and rewrites, A
    writes what it read. With the report lock B's rewrite waits for A's and then reads B's cell from disk."""
    root = open_root(tmp_path / "bench", kind=BENCH_COMPARE_ROOT)
    a = _compare_cell(root, "vanilla", 0, task=0.51)
    read_by_a, release_a = threading.Event(), threading.Event()
    on_disk = _compare.compare_cells_on_disk

    def slow_for_a(*args, **kwargs):
        cells = on_disk(*args, **kwargs)
        if threading.current_thread().name == "A":  # A has read the disk and is about to write its report
            read_by_a.set()
            release_a.wait(10)
        return cells

    monkeypatch.setattr(_compare, "compare_cells_on_disk", slow_for_a)
    writer_a = threading.Thread(target=_write_compare, args=(root, [a], "A"), name="A")
    writer_a.start()
    assert read_by_a.wait(10)
    b = _compare_cell(root, "groupdro", 1, task=0.62)  # finished while A renders from what it read
    writer_b = threading.Thread(target=_write_compare, args=(root, [b], "B"), name="B")
    writer_b.start()
    time.sleep(0.5)
    assert writer_b.is_alive()  # B waits for A's rewrite instead of racing it
    release_a.set()
    writer_a.join(10)
    writer_b.join(10)
    final = json.loads((root / _compare.suite_folder(SUITE) / "results.json").read_text())
    assert final["command"] == "B" and _reported(final) == {("vanilla", 0), ("groupdro", 1)}
    assert not (root / _io.REPORTS_LOCK).exists()  # the lock file goes with its last holder


def _vanilla_cell(root: Path, toy_run_dir: Path, seed: int, task: float) -> None:
    folder = _vanilla.vanilla_cell_dir(root, "biased-toy", 0.95, seed)
    shutil.copytree(toy_run_dir, folder)
    meta = json.loads((folder / "run.json").read_text())
    meta["train"]["seed"] = seed
    (folder / "run.json").write_text(json.dumps(meta))
    (folder / "audit").mkdir(exist_ok=True)
    (folder / "audit" / "audit.json").write_text(
        json.dumps(
            {
                "kind": "audit",
                "task_accuracy": task,
                "attributes": [
                    {"bias_extractability": 0.9, "groups": {"conflicting_accuracy": 0.4, "worst_group_accuracy": 0.1}}
                ],
            }
        )
    )


def test_a_stale_writer_keeps_the_other_writers_vanilla_cells(tmp_path, toy_run_dir):
    root = open_root(tmp_path / "vanilla", kind=BENCH_VANILLA_ROOT)
    _vanilla_cell(root, toy_run_dir, 0, 0.5)
    mine = _vanilla.vanilla_cells_on_disk(root)  # process A's list: seed 0 only
    _vanilla_cell(root, toy_run_dir, 1, 0.7)  # process B's cell
    _vanilla.write_vanilla_results(_vanilla.vanilla_cells_on_disk(root), root=root, command="B", wall_time_s=1.0)
    _vanilla.write_vanilla_results(mine, root=root, command="A", wall_time_s=1.0)
    cells = json.loads((root / "results.json").read_text())["cells"]
    assert sorted(c["seed"] for c in cells) == [0, 1]
    assert "| 0.95 | 60.00 +- 14.14 |" in (root / "results.md").read_text()


def test_a_stale_writer_keeps_the_other_writers_ffw_cells(tmp_path):
    root = open_root(tmp_path / "ffw", kind=BENCH_FFW_ROOT)
    plan = _ffw.plan(root=root, vanilla_root=Path("/v"), tables=("table1",), rhos=(0.99,), seeds=(0,), full=False)
    by_key = {c.key: c for c in plan}

    def finish(key: str, task: float) -> dict:
        c = by_key[key]
        res = {
            "after": {"task_accuracy": task, "bias_extractability": 0.2, "worst_group_accuracy": 0.8},
            "before": {"task_accuracy": 0.7, "bias_extractability": 0.9, "worst_group_accuracy": 0.1},
            "sparsity": 0.4,
            "selected": {"epoch": 3, "tau": 0.1},
            "stop_reason": "agree",
            "search_time_s": 9.0,
            "vanilla_train_time_s": 90.0,
            "key": key,
            "table": c.table,
            "kind": c.kind,
            "params": c.params,
            "run_dir": str(c.run_dir),
        }
        write_json(root / "cells" / f"{key}.json", res)
        return res

    a = finish("t1-g2-seed0", 0.91)
    b = finish("t1-g5-seed0", 0.93)
    _ffw._write(root, [by_key["t1-g5-seed0"]], {"t1-g5-seed0": b}, "B", 1.0, False)  # B's plan: gamma 5
    text = _ffw._write(root, [by_key["t1-g2-seed0"]], {"t1-g2-seed0": a}, "A", 1.0, False).read_text()  # A's: 2
    assert "| 2 | 91.00 |" in text and "| 5 | 93.00 |" in text
    assert set(json.loads((root / "results.json").read_text())["cells"]) == {"t1-g2-seed0", "t1-g5-seed0"}


@pytest.mark.parametrize("suite_value", [0.95])
def test_values_another_writer_ran_are_tabulated(tmp_path, suite_value):
    """A writer whose --value differs: the other writer's values keep their table, after the suite's own."""
    root = open_root(tmp_path / "bench", kind=BENCH_COMPARE_ROOT)
    a = _compare_cell(root, "vanilla", 0, task=0.5)
    other = dict(a, value=0.5, method="vanilla")
    with atomic_folder(cell_dir(root, SUITE, 0.5, "vanilla", 0), kind=BENCH_CELL, force=True) as staging:
        write_json(staging / RESULT_FILE, other)
    _write_compare(root, [a], "A")
    md = (root / _compare.suite_folder(SUITE) / "results.md").read_text()
    assert f"#### {SUITE.value_label(suite_value)}" in md and f"#### {SUITE.value_label(0.5)}" in md
