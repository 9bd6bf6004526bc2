"""The Adult benchmark: harness suite + fairlearn rows + fairlearn's metrics, on the tiny Adult fixture."""

from __future__ import annotations

import builtins
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from _adult_fixture import write_adult_folder
from debiaskit.bench import _adult as bench_adult
from debiaskit.bench._compare import SUITES, cell_dir
from debiaskit.cli import app
from debiaskit.data import _adult, make_splits
from debiaskit.errors import ConfigError

runner = CliRunner()


@pytest.fixture
def adult(tmp_path, monkeypatch):
    monkeypatch.setenv("DEBIASKIT_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(_adult, "ADULT_SHA256", write_adult_folder(tmp_path / "uci"))
    _adult.prepare_adult(from_folder=tmp_path / "uci")
    return tmp_path


def test_fairness_metrics_by_hand():
    y = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    b = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    pred = np.array([0, 1, 1, 1, 0, 0, 0, 1])
    m = bench_adult.fairness_metrics(y, pred, b)
    # groups (y,b): (0,0) 1/2, (1,0) 2/2, (0,1) 2/2, (1,1) 1/2
    assert m["accuracy"] == pytest.approx(6 / 8) and m["worst_group_accuracy"] == pytest.approx(0.5)
    assert m["mean_group_accuracy"] == pytest.approx(0.75) and m["worst_bias_group_accuracy"] == pytest.approx(0.75)
    assert m["dp_difference"] == pytest.approx(3 / 4 - 1 / 4)  # selection rates 3/4 vs 1/4
    assert m["eo_difference"] == pytest.approx(0.5)  # TPR 1 vs 1/2, FPR 1/2 vs 0


def test_the_probe_column_is_the_audits_converged_linear_probe():
    from debiaskit.audit import probe_suite

    gen = torch.Generator().manual_seed(0)
    b = torch.arange(400) % 2
    z = torch.randn(400, 5, generator=gen)
    informative = z.clone()
    informative[:, 0] += 4 * (2 * b - 1)
    parts = (slice(0, 200), slice(200, 300), slice(300, 400))
    good = bench_adult.bottleneck_probe(*(t for p in parts for t in (informative[p], b[p])))
    noise = bench_adult.bottleneck_probe(*(t for p in parts for t in (z[p], b[p])))
    assert good["test_accuracy"] > 0.95 and 0.3 < noise["test_accuracy"] < 0.7
    audit = probe_suite(*(t for p in parts for t in (z[p], b[p])), num_bias=2, probes=("linear",))
    assert noise["test_accuracy"] == audit["linear"]  # one implementation: the audit's, not a twin
    assert not hasattr(bench_adult, "linear_probe")


def test_missing_fairlearn_fails_before_any_compute(adult, monkeypatch):
    real_import = builtins.__import__

    def no_fairlearn(name, *args, **kwargs):
        if name.startswith("fairlearn"):
            raise ImportError("No module named 'fairlearn'", name="fairlearn")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_fairlearn)
    with pytest.raises(ConfigError, match=r"bench extra \(fairlearn is missing\): pip install -e '\.\[bench\]'"):
        bench_adult.run_adult_bench(root=adult / "bench", seeds=(0,))
    assert not (adult / "bench").exists()
    monkeypatch.setattr(builtins, "__import__", real_import)
    with pytest.raises(ConfigError, match="adult bias must be one of sex, race"):
        bench_adult.run_adult_bench(root=adult / "bench", seeds=(0,), values=("age",))


def test_adult_suite_end_to_end_beside_fairlearn(adult, monkeypatch):
    monkeypatch.setitem(SUITES, "adult", SUITES["adult"].__class__(**{**SUITES["adult"].__dict__, "epochs": 2}))
    monkeypatch.setitem(bench_adult.EG_OPTIONS, "max_iter", 5)  # CI time: the reductions' loop is the cost
    root = adult / "bench"
    records = bench_adult.run_adult_bench(
        root=root,
        seeds=(0,),
        values=("sex",),
        methods=["vanilla", "fmd", "ffw-structured"],
        command="test",
        echo=lambda msg: None,
    )
    rows = {(r["value"], r["method"]) for r in records}
    assert rows == {("sex", m) for m in ("vanilla", "fmd", "ffw-structured", *bench_adult.FAIRLEARN_ROWS)}
    by = {(r["value"], r["method"]): r for r in records}
    vanilla = by[("sex", "vanilla")]
    # fairlearn's MetricFrame agrees with the harness's audit on the same predictions
    assert vanilla["metrics"]["accuracy"] == pytest.approx(vanilla["task_accuracy"], abs=1e-6)
    assert vanilla["metrics"]["worst_group_accuracy"] == pytest.approx(vanilla["worst_group_accuracy"], abs=1e-6)
    assert vanilla["metrics"]["mean_group_accuracy"] == pytest.approx(vanilla["mean_group_accuracy"], abs=1e-6)
    assert 0.0 <= vanilla["extras"]["linear_probe"]["test_accuracy"] <= 1.0 and vanilla["extras"]["cf_bias_all"] > 0
    # the structured export is physically smaller (no loadable run), yet its predictions were scored
    structured = cell_dir(root, SUITES["adult"], "sex", "ffw-structured", 0)
    assert (structured / bench_adult.PREDICTIONS_FILE).is_file()
    to_mlp = by[("sex", "fairlearn-to-eo-mlp")]
    assert to_mlp["uses_bias_at_inference"] and to_mlp["extras"]["cf_bias_all"] >= 0
    test_splits = make_splits("adult", seed=0)
    test = test_splits.test
    assert all(len(bench_adult._predictions(cell_dir(root, SUITES["adult"], v, m, 0))) == len(test) for v, m in rows)
    path = bench_adult.write_adult_results(records, root=root, command="test", wall_time_s=1.0)
    text = path.read_text()
    assert "#### bias = sex" in text and "#### bias = race" not in text and "fairlearn-eg-eo" in text
    assert "Best per column" in text and (root / "adult" / "results.md").is_file()
    # the trivial baselines head the table; one seed: values with n=1, never "+- 0.00"
    body = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert body[0].startswith("| majority class | ") and body[1].startswith("| vanilla")
    assert "(n=1)" in body[0] and not any("+- 0.00" in line for line in body)
    assert any(line.startswith("| fairlearn-lr-full") for line in body) and "↓maj / ↓van" in text
    majority = next(
        r for r in json.loads((root / "adult" / "adult.json").read_text())["rows"] if r["method"] == "majority class"
    )
    assert majority["metrics"]["worst_group_accuracy"] == 0 and majority["metrics"]["mean_group_accuracy"] == 0.5
    assert majority["metrics"]["dp_difference"] == 0 and majority["extras"]["cf_bias_all"] == 0
    summary = json.loads((root / "adult" / "adult.json").read_text())["summary"]
    assert summary["sex"]["fairlearn-eg-dp"]["dp_difference"]["n"] == 1
    # another `bench adult` on this root holding only one row in memory: every finished row stays in the report,
    # scored from its predictions on disk exactly as this process scored it
    bench_adult.write_adult_results([by[("sex", "vanilla")]], root=root, command="other", wall_time_s=1.0)
    rewritten = json.loads((root / "adult" / "adult.json").read_text())
    assert {r["method"] for r in rewritten["rows"]} == {m for _, m in rows} | {"majority class"}
    assert rewritten["command"] == "other"
    assert {m: st["accuracy"]["mean"] for m, st in rewritten["summary"]["sex"].items()} == {
        m: st["accuracy"]["mean"] for m, st in summary["sex"].items()
    }
    # cells holding test predictions stay recognised benchmark cells: a rerun may replace them
    from debiaskit._io import foreign_entries, recognise
    from debiaskit.bench import BENCH_CELL

    for method in ("vanilla", "ffw-structured", "fairlearn-lr"):
        folder = cell_dir(root, SUITES["adult"], "sex", method, 0)
        assert recognise(folder) is not None and not foreign_entries(folder, BENCH_CELL), method
    bench_adult.run_fairlearn_cell(
        root=root, value="sex", name="fairlearn-lr", seed=0, splits=test_splits, vanilla=None
    )
    # cached: a second call recomputes nothing and gives the same numbers
    again = bench_adult.run_adult_bench(
        root=root, seeds=(0,), methods=["vanilla", "fmd", "ffw-structured"], report_only=True, echo=lambda msg: None
    )
    assert sorted((r["value"], r["method"], r["metrics"]["accuracy"]) for r in again) == sorted(
        (r["value"], r["method"], r["metrics"]["accuracy"]) for r in records
    )


def test_cli_bench_adult_report_only_and_bad_bias(adult, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    res = runner.invoke(
        app, ["bench", "adult", "--out", str(adult / "bench"), "--seeds", "1", "--report-only", "--bias", "sex"]
    )
    assert res.exit_code == 0, res.output
    assert "UCI Adult" in res.output and (adult / "bench" / "adult" / "adult.md").is_file()
    res = runner.invoke(app, ["bench", "adult", "--out", str(adult / "bench"), "--bias", "age"])
    assert isinstance(res.exception, ConfigError)


def test_the_full_training_set_row_fits_on_every_non_test_row(adult, monkeypatch):
    splits = make_splits("adult", seed=0)
    seen = []
    from sklearn.linear_model import LogisticRegression

    real_fit = LogisticRegression.fit
    monkeypatch.setattr(
        LogisticRegression, "fit", lambda self, x, y, **kw: (seen.append(len(y)), real_fit(self, x, y, **kw))[1]
    )
    bench_adult.fit_fairlearn_row("fairlearn-lr", splits, seed=0, vanilla=None)
    bench_adult.fit_fairlearn_row("fairlearn-lr-full", splits, seed=0, vanilla=None)
    du = len(splits.unbiased_train) + len(splits.unbiased_val) + len(splits.unbiased_test)
    assert seen == [len(splits.train), len(splits.train) + du]


def _record(method, value, seed, worst, mean, **extra):
    metrics = {
        "accuracy": 0.8,
        "worst_group_accuracy": worst,
        "mean_group_accuracy": mean,
        "worst_bias_group_accuracy": 0.7,
        "dp_difference": 0.1,
        "eo_difference": 0.1,
    }
    return {"method": method, "value": value, "seed": seed, "metrics": metrics, "wall_time_s": 1.0, **extra}


def test_rows_below_a_trivial_baseline_are_marked():
    records = []
    for seed in (0, 1):
        records += [
            _record("majority class", "sex", seed, 0.0, 0.5, trivial=True),
            _record("vanilla", "sex", seed, 0.6, 0.75),
            _record("good", "sex", seed, 0.65, 0.78),
            _record("worse-than-erm", "sex", seed, 0.55, 0.76),  # below vanilla on the worst group only
            _record("worse-than-trivial", "sex", seed, 0.0, 0.45),
        ]  # below both
    text = bench_adult.adult_table(records, command="test", wall_time_s=1.0)
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| ") and "---" not in line}
    assert "| good | " in rows["good"] and "| vanilla | " in rows["vanilla"]
    assert "worse-than-erm ↓van" in rows and "worse-than-trivial ↓maj ↓van" in rows
    assert list(rows)[1:3] == ["majority class", "vanilla"]  # after the header: the baselines first
    assert "assume the bias is easier to learn than the target" in text
    assert "- worst (y,b) group: **good**" in text  # the majority class is a baseline, never a winner


def test_compas_suite_beside_fairlearn(tmp_path, monkeypatch):
    from _compas_fixture import write_compas_folder
    from debiaskit.data import _compas

    monkeypatch.setenv("DEBIASKIT_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(_compas, "COMPAS_SHA256", write_compas_folder(tmp_path / "propublica"))
    _compas.prepare_compas(from_folder=tmp_path / "propublica")
    monkeypatch.setitem(SUITES, "compas", SUITES["compas"].__class__(**{**SUITES["compas"].__dict__, "epochs": 1}))
    monkeypatch.setitem(bench_adult.EG_OPTIONS, "max_iter", 3)
    monkeypatch.setattr(
        bench_adult,
        "FAIRLEARN_ROWS",
        {
            k: v
            for k, v in bench_adult.FAIRLEARN_ROWS.items()
            if k in ("fairlearn-lr", "fairlearn-lr-full", "fairlearn-eg-dp")
        },
    )
    root = tmp_path / "bench"
    with pytest.warns(Warning):  # the fixture's D^u is tiny (SmallSplitWarning)
        records = bench_adult.run_adult_bench(
            root=root,
            seeds=(0,),
            values=("race",),
            methods=["vanilla"],
            dataset="compas",
            command="test",
            echo=lambda msg: None,
        )
    assert {r["method"] for r in records} == {"vanilla", "fairlearn-lr", "fairlearn-lr-full", "fairlearn-eg-dp"}
    assert all(r["dataset"] == "compas" for r in records)
    path = bench_adult.write_adult_results(records, root=root, command="test", wall_time_s=1.0, dataset="compas")
    assert path == root / "compas" / "compas.md" and (root / "compas" / "results.md").is_file()
    text = path.read_text()
    assert "ProPublica COMPAS" in text and "#### bias = race" in text and "| majority class |" in text
    assert "fixed COMPAS test part" in text
    cells = json.loads((root / "compas" / "results.json").read_text())["cells"]
    assert cells[0]["majority_class"]["mean_group_accuracy"] == pytest.approx(0.5)  # recorded by the harness
    assert cells[0]["conflicting_accuracy"] is None  # a protected attribute: no aligned / conflicting split
    with pytest.raises(ConfigError, match="compas bias must be one of race, race_binary, sex"):
        bench_adult.run_adult_bench(root=root, seeds=(0,), values=("age",), dataset="compas")
    with pytest.raises(ConfigError, match="runs on adult or compas"):
        bench_adult.run_adult_bench(root=root, seeds=(0,), dataset="german")
    res = runner.invoke(
        app,
        [
            "bench",
            "adult",
            "--dataset",
            "compas",
            "--out",
            str(root),
            "--seeds",
            "1",
            "--report-only",
            "--bias",
            "race",
        ],
    )
    assert res.exit_code == 0, res.output
