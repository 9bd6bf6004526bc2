"""`debiaskit bench unsup`: cells on toy data, cache reuse, report-only, cell layout, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from debiaskit.bench import _unsup, grid_cells, plan_cells, unsup_cell
from debiaskit.cli import app
from debiaskit.errors import ConfigError
from debiaskit.methods.calm import ATTRACTOR_RECIPE
from debiaskit.runs import write_json

runner = CliRunner()
TOY = [
    "--dataset",
    "biased-toy",
    "--rho",
    "0.95",
    "--seeds",
    "1",
    "--epochs",
    "3",
    "--model",
    "mlp",
    "--unbiased-size",
    "600",
]


@pytest.fixture(scope="module")
def toy_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("unsup") / "bench"
    res = runner.invoke(
        app, ["bench", "unsup", *TOY, "--methods", "calm,vcba", "--out", str(out), "--vanilla-from", str(out / "none")]
    )
    assert res.exit_code == 0, res.output
    return out, res.output


def test_cli_writes_cells_table_json_and_plot(toy_bench):
    out, output = toy_bench
    calm = out / "calm" / "biased-toy-rho0.95-seed0-mlp-u600-3ep"
    vcba = out / "vcba" / "biased-toy-rho0.95-seed0-mlp-u600-5ep"  # 3 + 2 stage-1 epochs != default 12: suffixed
    for cell in (calm, vcba):
        assert (cell / "result.json").is_file() and (cell / "model.safetensors").is_file()
    res = json.loads((calm / "result.json").read_text())
    assert res["cell"]["epochs"] == 3 and len(res["history"]) == 3
    assert json.loads((vcba / "result.json").read_text())["cell"]["epochs"] == 5  # 3 + stage-1 epochs (2)
    assert [d["epoch"] for d in res["discovery"]] == [1, 2, 3]
    # default recipe: b^ from the GCE branch, frozen after the 1-epoch warm-up; no per-visit attraction to score
    assert all(
        "online" not in d and 0 <= d["frozen"]["precision"] <= 1 and 0 <= d["frozen"]["recall"] <= 1
        for d in res["discovery"]
    )
    summary = (out / "summary.md").read_text()
    assert "| biased-toy | 0.95 | calm | 0 |" in summary and "| biased-toy | 0.95 | vcba | 0 |" in summary
    assert summary.startswith("Command: `debiaskit") and "Selection: CALM" in summary
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {r["method"] for r in rows} == {"calm", "vcba"} and all(0 <= r["task"][0] <= 1 for r in rows)
    assert (out / "discovery_over_time.png").stat().st_size > 1000
    assert "calm" in output and "x van." in output  # the terminal table


def test_rerun_and_report_only_read_the_cache(toy_bench, monkeypatch):
    out, _ = toy_bench
    stamp = {p: p.stat().st_mtime_ns for p in out.glob("*/*/result.json")}

    def no_training(*args, **kwargs):
        raise AssertionError("a cached cell was retrained")

    monkeypatch.setattr(_unsup, "fit", no_training)
    res = runner.invoke(app, ["bench", "unsup", *TOY, "--methods", "calm,vcba", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert res.output.count(": cached") == 2
    (out / "summary.md").unlink()
    res = runner.invoke(app, ["bench", "unsup", "--report-only", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "| biased-toy | 0.95 | calm | 0 |" in (out / "summary.md").read_text()
    assert stamp == {p: p.stat().st_mtime_ns for p in out.glob("*/*/result.json")}


def test_methods_train_without_bias_labels(tmp_path, monkeypatch):
    seen = []
    real_fit = _unsup.fit

    def spy(model, data, **kwargs):
        seen.append((data.b, data.aligned))
        return real_fit(model, data, **kwargs)

    monkeypatch.setattr(_unsup, "fit", spy)
    cell = unsup_cell("jtt", 0.95, 0, epochs=1, dataset="biased-toy", model="mlp", unbiased_size=600)
    res = _unsup.run_unsup_cell(cell, root=tmp_path, echo=lambda m: None)
    assert seen == [(None, None)] and 0 <= res["test"]["task"] <= 1


def test_cell_layout_matches_the_existing_cache():
    # the founder's cells: ROOT/<tag>/biased-mnist-rho<rho>-seed<seed> for the default budget
    assert _unsup.cell_dir(Path("r"), unsup_cell("calm", 0.999, 2)) == Path("r/calm/biased-mnist-rho0.999-seed2")
    assert _unsup.cell_dir(Path("r"), unsup_cell("vcba", 0.997, 0)) == Path("r/vcba/biased-mnist-rho0.997-seed0")
    final = plan_cells("final")
    # the plan behind BENCHMARKS.md pins CALM's first (attractor) recipe, whatever the registry defaults are now
    assert final[0] == unsup_cell("calm", 0.999, 0, tag="calm-attractor", **ATTRACTOR_RECIPE) and len(final) == 26
    assert any(
        c["tag"] == "calm-attractor-no-reweight" and c["overrides"] == {**ATTRACTOR_RECIPE, "reweight": False}
        for c in final
    )
    old = {
        "method": "calm",
        "rho": 0.999,
        "seed": 0,
        "epochs": 10,
        "dataset": "biased-mnist",
        "tag": "calm-attractor",
        "train_size": None,
        "overrides": ATTRACTOR_RECIPE,
    }  # a cell without the model / unbiased_size keys
    assert _unsup._same_cell(old, final[0])
    assert plan_cells("gce")[0] == unsup_cell("calm", 0.999, 0)  # the current defaults, no overrides


def test_bad_input_is_a_clear_error(tmp_path):
    res = runner.invoke(app, ["bench", "unsup", "--methods", "groupdro", "--out", str(tmp_path)])
    assert res.exit_code != 0 and isinstance(res.exception, ConfigError) and "bias labels" in str(res.exception)
    res = runner.invoke(app, ["bench", "unsup", "--plan", "nope", "--out", str(tmp_path)])
    assert isinstance(res.exception, ConfigError)
    res = runner.invoke(app, ["bench", "unsup", "--deadline", "7pm", "--out", str(tmp_path)])
    assert isinstance(res.exception, ConfigError)
    with pytest.raises(ConfigError):
        grid_cells(methods=["calm"], epochs=0)
    # a cell folder holding another configuration is refused, not silently reused
    cell = unsup_cell("calm", 0.95, 0, epochs=1, dataset="biased-toy", model="mlp", unbiased_size=600)
    write_json(_unsup.cell_dir(tmp_path, cell) / "result.json", {"cell": {**cell, "overrides": {"tau": 2.0}}})
    with pytest.raises(ConfigError, match="another configuration"):
        _unsup.run_unsup_cell(cell, root=tmp_path)


def test_attractor_recipe_cells_track_online_discovery(tmp_path):
    """The first recipe (attractor rule) is scored per visit as well as frozen; this feeds the over-time plot."""
    cell = unsup_cell(
        "calm",
        0.95,
        0,
        epochs=3,
        tag="calm-attractor",
        dataset="biased-toy",
        model="mlp",
        unbiased_size=600,
        **ATTRACTOR_RECIPE,
    )
    (res,), failed = _unsup.run_unsup([cell], root=tmp_path, echo=lambda s: None, keep_going=False)
    assert not failed and [d["epoch"] for d in res["discovery"]] == [1, 2, 3]
    assert all(0 <= d["online"]["precision"] <= 1 and 0 <= d["online"]["recall"] <= 1 for d in res["discovery"][1:])
    assert "frozen" not in res["discovery"][0] and "frozen" in res["discovery"][-1]  # frozen after 2 warm-up epochs
    assert _unsup.plot_discovery(tmp_path, tmp_path / "plot.png").stat().st_size > 1000
