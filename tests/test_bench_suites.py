"""`bench vanilla` and `bench ffw` end to end on toy data: cells trained, audited, cached, resumed, tabulated."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from debiaskit.bench import _ffw, _vanilla
from debiaskit.cli import app
from debiaskit.train import TrainConfig, TrainingMethod, partial_dir, train_run

runner = CliRunner()
VANILLA = [
    "bench",
    "vanilla",
    "--dataset",
    "biased-toy",
    "--rho",
    "0.95",
    "--seeds",
    "1",
    "--model",
    "mlp",
    "--epochs",
    "2",
    "--no-progress",
]


def test_bench_vanilla_trains_audits_tabulates_and_reuses_its_cells(tmp_path, monkeypatch):
    out = tmp_path / "vanilla"
    res = runner.invoke(app, [*VANILLA, "--out", str(out)])
    assert res.exit_code == 0, res.output
    cell = out / "biased-toy-rho0.95-seed0"
    assert json.loads((cell / "run.json").read_text())["status"] == "finished"
    assert (cell / "audit" / "audit.json").is_file()
    table = (out / "results.md").read_text()
    assert table.startswith("Command: `debiaskit") and "| 0.95 |" in table
    assert table.rstrip().endswith("| - |")  # no published number for this rho
    assert json.loads((out / "results.json").read_text())["cells"][0]["rho"] == 0.95

    def no_training(**kwargs):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(_vanilla, "train_run", no_training)
    res = runner.invoke(app, [*VANILLA, "--out", str(out)])
    assert res.exit_code == 0, res.output


def test_bench_vanilla_resumes_an_interrupted_cell(tmp_path):
    class StopsInEpochTwo(TrainingMethod):
        def training_step(self, batch, ctx):
            if ctx.epoch == 1:
                raise KeyboardInterrupt
            return super().training_step(batch, ctx)

    folder = _vanilla.vanilla_cell_dir(tmp_path, "biased-toy", 0.95, 0)
    with pytest.raises(KeyboardInterrupt):
        train_run(
            dataset="biased-toy",
            params={"rho": 0.95},
            out=folder,
            model="mlp",
            method=StopsInEpochTwo(),
            config=TrainConfig(epochs=2, seed=0),
            progress=False,
        )
    assert (partial_dir(folder) / "checkpoint.safetensors").is_file()
    said = []
    cells = _vanilla.run_vanilla_suite(
        root=tmp_path,
        dataset="biased-toy",
        rhos=(0.95,),
        seeds=(0,),
        model="mlp",
        epochs=2,
        progress=False,
        echo=said.append,
    )
    assert any("(resumed)" in s for s in said) and len(cells) == 1
    assert not partial_dir(folder).exists()


def test_vanilla_table_beside_the_published_numbers():
    cells = [
        {
            "rho": 0.99,
            "seed": s,
            "task": 0.5 + s / 100,
            "bias": 0.98,
            "conflicting": 0.45,
            "worst_group": 0.0,
            "train_time_s": 100.0 + s,
        }
        for s in (0, 1)
    ]
    table = _vanilla.vanilla_table(cells, command="debiaskit bench vanilla", wall_time_s=60.0)
    assert "| 0.99 | 50.50 +- 0.71 | 98.00 +- 0.00 | 45.00 +- 0.00 | 0.00 +- 0.00 | 100 | 88.46 / 98.45 |" in table


@pytest.fixture(scope="module")
def toy_vanilla_root(tmp_path_factory):
    """Vanilla runs where the FFW suite looks for them (its Table 2 names), trained on toy digits."""
    root = tmp_path_factory.mktemp("bench") / "vanilla"
    train_run(
        dataset="biased-toy",
        params={"rho": 0.99},
        out=_ffw.vanilla_dir(root, 0.99, 0),
        model="mlp",
        unbiased_size=600,
        config=TrainConfig(epochs=1, seed=0),
        progress=False,
    )
    return root


def test_bench_ffw_runs_caches_and_reports_failures(toy_vanilla_root, tmp_path, monkeypatch):
    out = tmp_path / "ffw"
    res = runner.invoke(
        app,
        [
            "bench",
            "ffw",
            "--out",
            str(out),
            "--vanilla-root",
            str(toy_vanilla_root),
            "--table",
            "table2",
            "--table",
            "baselines",
            "--rho",
            "0.99",
            "--seeds",
            "1",
            "--no-wait",
        ],
    )
    assert res.exit_code == 0, res.output
    table = (out / "results.md").read_text()
    for row in (
        "| vanilla | 0.99 |",
        "| FFW unstructured | 0.99 |",
        "| FFW structured | 0.99 |",
        "| retrain last layer | 0.99 |",
        "| fine-tune all | 0.99 |",
    ):
        assert row in table
    cells = json.loads((out / "results.json").read_text())["cells"]
    assert set(cells) == {
        "t2-unstructured-rho0.99-seed0",
        "t2-structured-rho0.99-seed0",
        "base-lastlayer-rho0.99-seed0",
        "base-finetune-rho0.99-seed0",
    }
    assert 0 <= cells["t2-structured-rho0.99-seed0"]["sparsity"] <= 1

    # cached cells are read, not recomputed; a failing cell is reported in the table, the suite goes on
    def broken(cell, root, echo):
        raise RuntimeError("planted failure")

    monkeypatch.setattr(_ffw, "RUNNERS", {k: broken for k in _ffw.RUNNERS})
    path = _ffw.run_ffw_bench(
        root=out,
        vanilla_root=toy_vanilla_root,
        tables=("table2", "baselines", "table1"),
        rhos=(0.99,),
        seeds=(0,),
        wait=False,
        echo=lambda s: None,
    )
    text = path.read_text()
    assert "- failed: `t1-g2-seed0`: RuntimeError: planted failure" in text and "| FFW structured | 0.99 |" in text


def test_bench_ffw_defers_cells_whose_vanilla_run_is_missing(tmp_path):
    path = _ffw.run_ffw_bench(
        root=tmp_path / "ffw",
        vanilla_root=tmp_path / "none",
        tables=("table2",),
        rhos=(0.99,),
        seeds=(0,),
        wait=False,
        echo=lambda s: None,
    )
    assert "- not run: `t2-unstructured-rho0.99-seed0`" in path.read_text()


@pytest.mark.slow
def test_bench_ffw_cost_cell_measures_step_time_in_fresh_processes(toy_vanilla_root, tmp_path):
    path = _ffw.run_ffw_bench(
        root=tmp_path / "ffw",
        vanilla_root=toy_vanilla_root,
        tables=("cost",),
        rhos=(0.99,),
        seeds=(0,),
        wait=False,
        echo=lambda s: None,
    )
    cell = json.loads((tmp_path / "ffw" / "cells" / "cost-rho0.99-seed0.json").read_text())
    assert all(cell[k]["step_s"] > 0 for k in ("plain", "unstructured", "structured"))
    assert "- step time (batch 256, 1 thread, median of 15)" in path.read_text()


def test_every_suite_is_registered_whichever_bench_module_is_imported_first():
    """The tabular suites are registered by bench/__init__ (register_suite), not as a side effect of an import order."""
    import subprocess
    import sys

    code = (
        "from debiaskit.bench._compare import SUITES, get_suite\n"
        "print(get_suite('adult').dataset, get_suite('compas').dataset, sorted(SUITES))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("adult compas ") and "'toy'" in out


def test_register_suite_refuses_a_name_taken_by_another_suite():
    from dataclasses import replace

    from debiaskit.bench import SUITES, get_suite, register_suite
    from debiaskit.errors import ConfigError

    toy = get_suite("toy")
    assert register_suite(toy) is toy  # the same suite again: nothing changes
    with pytest.raises(ConfigError, match="a suite named 'toy' is already registered; choose another name"):
        register_suite(replace(toy, epochs=2))
    assert get_suite("toy") is toy
    try:
        mine = register_suite(replace(toy, name="mine"))
        assert get_suite("mine") is mine
    finally:
        SUITES.pop("mine", None)
