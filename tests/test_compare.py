"""The comparison harness and the `bench compare` / `unlearn` commands on toy data."""

from __future__ import annotations

import json
from dataclasses import replace

from typer.testing import CliRunner

from debiaskit.bench import SUITES, run_compare, write_compare_results
from debiaskit.bench._compare import available_methods
from debiaskit.cli import app

runner = CliRunner()


def test_compare_suite_is_cached_and_resumable(tmp_path):
    suite = replace(SUITES["toy"], unbiased_size=300, train_size=500)
    methods = ["vanilla", "groupdro", "fmd", "jtt"]
    cells = run_compare(suite=suite, root=tmp_path, seeds=(0,), methods=methods, echo=lambda s: None)
    assert [c["method"] for c in cells] == ["vanilla", "groupdro", "jtt", "fmd"]  # post-hoc after its vanilla
    for c in cells:
        assert 0 <= c["task_accuracy"] <= 1 and c["bias_extractability"] is not None and c["wall_time_s"] >= 0
    dro = next(c for c in cells if c["method"] == "groupdro")
    assert dro["flags"]["uses_bias_labels"] and "bias labels" in dro["selection"] and dro["selected_epoch"] == 1
    fmd = next(c for c in cells if c["method"] == "fmd")
    assert fmd["flags"]["post_hoc"] and not fmd["flags"]["retrains"] and "bias_before" in fmd["method_state"]
    # re-running reads the cached cells instead of retraining
    from debiaskit.bench._compare import cell_dir

    result = cell_dir(tmp_path, suite, 0.95, "jtt", 0) / "result.json"
    stamp = result.stat().st_mtime_ns
    again = run_compare(suite=suite, root=tmp_path, seeds=(0,), methods=methods, echo=lambda s: None)
    assert again == cells
    assert result.stat().st_mtime_ns == stamp
    md = write_compare_results(cells, root=tmp_path, suite=suite, command="test", wall_time_s=1.0).read_text()
    assert "| groupdro | yes | yes | yes | no |" in md and "| fmd | no | no | no | yes |" in md
    assert "mean +- sample std" in md
    assert all(c["majority_class"]["class"] in range(10) for c in cells)  # the trivial baseline, recorded per cell
    section = md.split("#### rho 0.95")[1]
    assert section.index("| majority class |") < section.index("| vanilla")
    # every default is listed with its source, as the cell ran it
    assert "#### Hyper-parameters for biased-toy" in md and "| groupdro | eta=0.01 - paper" in md


def test_compare_and_unlearn_commands(tmp_path):
    res = runner.invoke(
        app,
        ["bench", "compare", "--suite", "toy", "--methods", "vanilla", "--seeds", "1", "--out", str(tmp_path / "cmp")],
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "cmp" / "toy" / "results.md").is_file()
    run = tmp_path / "cmp" / "toy" / "rho0.95" / "vanilla" / "seed0"
    res = runner.invoke(
        app, ["unlearn", str(run), "--out", str(tmp_path / "unl"), "--pool-size", "300", "--top-k", "50"]
    )
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "unl" / "run.json").read_text())
    assert meta["kind"] == "unlearn" and meta["method"]["name"] == "fmd" and meta["parent_run"] == str(run)
    res = runner.invoke(app, ["unlearn", str(run), "--out", str(tmp_path / "unl")])
    assert res.exit_code != 0  # never overwrite a finished run without --force
    res = runner.invoke(app, ["bench", "compare", "--suite", "toy", "--methods", "nope"])
    assert res.exit_code != 0


def test_harness_lists_every_registered_method():
    avail = available_methods()
    assert list(avail)[0] == "vanilla"
    for name in ("lff", "dcwp", "fmd", "groupdro", "jtt", "irene"):
        assert name in avail
    from debiaskit import ffw

    if hasattr(ffw, "find_fantastic_weights"):  # FFW joins the tables as a post-hoc method using D^u
        assert avail["ffw"].post_hoc and avail["ffw"].uses_unbiased_data and not avail["ffw"].retrains


def test_train_cli_accepts_every_new_method(tmp_path):
    for name in ("lff", "fmd"):
        res = runner.invoke(
            app,
            [
                "train",
                "--dataset",
                "biased-toy",
                "--rho",
                "0.95",
                "--epochs",
                "1",
                "--model",
                "mlp",
                "--unbiased-size",
                "600",
                "--method",
                name,
                "--out",
                str(tmp_path / name),
                "--no-progress",
            ],
        )
        assert res.exit_code == 0, res.output
        meta = json.loads((tmp_path / name / "run.json").read_text())
        assert meta["method"]["name"] == name
    assert "bias_before" in meta["method"]["state"]["unlearning"]


def test_vanilla_runs_with_the_same_configuration_are_reused(tmp_path):
    from debiaskit.train import TrainConfig, train_run

    suite = SUITES["toy"]
    src = tmp_path / "vanilla" / "biased-toy-rho0.95-seed0"
    train_run(
        dataset="biased-toy",
        params={"rho": 0.95},
        out=src,
        model="mlp",
        config=TrainConfig(epochs=1, seed=0),
        unbiased_size=600,
        progress=False,
    )
    lines = []
    cells = run_compare(
        suite=suite,
        root=tmp_path / "cmp",
        seeds=(0,),
        methods=["vanilla"],
        vanilla_from=tmp_path / "vanilla",
        echo=lines.append,
    )
    assert cells[0]["reused_run"] == str(src) and any("reusing" in line for line in lines)
    # a different budget is not reused
    lines.clear()
    cells = run_compare(
        suite=suite,
        root=tmp_path / "cmp2",
        seeds=(0,),
        methods=["vanilla"],
        epochs=2,
        vanilla_from=tmp_path / "vanilla",
        echo=lines.append,
    )
    assert cells[0]["reused_run"] is None


def test_cells_of_other_budgets_are_kept_apart(tmp_path):
    from debiaskit.bench._compare import cell_dir, effective_suite

    base = SUITES["colored-mnist"]
    assert cell_dir(tmp_path, base, 0.99, "lff", 0).parts[-4] == "colored-mnist"
    full = effective_suite("colored-mnist", full=True)
    assert full.epochs == 100 and cell_dir(tmp_path, full, 0.99, "lff", 0).parts[-4] != "colored-mnist"
    assert effective_suite("colored-mnist", full=True, epochs=7).epochs == 7


def test_parallel_groups_give_the_same_cells_as_a_sequential_run(tmp_path):
    kwargs = dict(suite="toy", seeds=(0, 1), methods=["vanilla", "fmd"], echo=lambda s: None)
    sequential = run_compare(root=tmp_path / "seq", **kwargs)
    parallel = run_compare(root=tmp_path / "par", jobs=2, **kwargs)
    drop = ("wall_time_s", "audit_time_s")
    strip = lambda cells: [{k: v for k, v in c.items() if k not in drop and k != "method_state"} for c in cells]  # noqa: E731
    assert strip(parallel) == strip(sequential) and len(parallel) == 4


def test_parallel_groups_refuse_a_custom_suite_object(tmp_path):
    import pytest

    from debiaskit.errors import ConfigError

    with pytest.raises(ConfigError, match="registered suite name"):
        run_compare(
            suite=replace(SUITES["toy"], train_size=300),
            root=tmp_path,
            seeds=(0,),
            methods=["vanilla"],
            jobs=2,
            echo=lambda s: None,
        )


def test_calm_pseudo_bias_flags_are_scored_by_the_harness(tmp_path):
    """The harness (which holds the true labels) scores CALM's frozen flags; CALM itself only exposes them."""
    suite = replace(SUITES["toy"], unbiased_size=300, train_size=500, epochs=2)
    (cell,) = run_compare(suite=suite, root=tmp_path, seeds=(0,), methods=["calm"], echo=lambda s: None)
    flags = cell["method_state"]["pseudo_bias_flags"]
    assert flags["mined"] == round(flags["mined_share"] * 475) and flags["true_conflicting"] > 0
    assert 0 <= flags["precision"] <= 1 and 0 <= flags["recall"] <= 1
    md = write_compare_results([cell], root=tmp_path, suite=suite, command="test", wall_time_s=1.0).read_text()
    assert "| calm | rho 0.95 |" in md and "calm (pseudo-bias flags)" not in md  # one row, with precision
