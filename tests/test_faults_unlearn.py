"""FMD's step choice, `unlearn`'s do-no-harm refusal (exit 3, nothing written) and the `cf` array route for
counterfactuals of a user's own data (tensors file)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from debiaskit.data import make_splits
from debiaskit.errors import NO_IMPROVEMENT_EXIT, DataError
from debiaskit.methods.fmd import SCALES, choose_step, fmd_unlearn


@pytest.fixture()
def cli(monkeypatch, capsys):
    """Run the console script in-process: (exit code, stdout + stderr on one line)."""
    from debiaskit.cli import main

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["debiaskit", *map(str, args)])
        monkeypatch.setenv("COLUMNS", "1000")
        with pytest.raises(SystemExit) as exc:
            main()
        out, err = capsys.readouterr()
        return exc.value.code or 0, " ".join((out + err).split())

    return run


def _rows(path, *, cf: str = "flip", n: int = 1600, extra: dict | None = None):
    """Tabular rows whose last two columns are the one-hot protected attribute (90 % aligned with y)."""
    g = np.random.default_rng(0)
    y = g.integers(0, 2, n)
    b = np.where(g.random(n) < 0.9, y, 1 - y)
    x = np.concatenate([g.normal(size=(n, 4)) + 0.5 * y[:, None], np.eye(2)[b]], 1).astype(np.float32)
    arrays = {"x": x, "y": y, "b": b}
    if cf == "flip":
        arrays["cf"] = np.concatenate([x[:, :4], np.eye(2)[1 - b]], 1).astype(np.float32)
    elif cf == "same":  # a counterfactual that changes nothing: no bias for FMD to remove
        arrays["cf"] = x.copy()
    arrays.update(extra or {})
    np.savez(path, **arrays)
    return path


def _train(cli, data, run):
    code, out = cli(
        "train", "--dataset", f"tensors:{data}", "--model", "mlp", "--epochs", "3", "--out", run, "--no-progress"
    )
    assert code == 0, out


# -- the step choice ------------------------------------------------------------------------------------
def _trace(biases, accs, scales=None):
    scales = scales or [0.0, 1.0, 3.0, 10.0, 30.0][: len(biases)]
    return [
        {"scale": s, "heldout_cf_bias": b, "heldout_accuracy": a, "heldout_class_mean_accuracy": a}
        for s, b, a in zip(scales, biases, accs)
    ]


def test_the_grid_reaches_large_steps_and_the_choice_takes_the_largest_reduction_within_tolerance():
    assert SCALES[0] == 0.0 and max(SCALES) >= 100 and any(3 < s <= 10 for s in SCALES)
    # a case that needs a large step: the bias falls until s = 10 at almost no cost, s = 30 breaks accuracy
    trace = _trace([0.08, 0.078, 0.07, 0.035, 0.01], [0.85, 0.85, 0.849, 0.845, 0.70])
    chosen = choose_step(trace, tolerance=0.01)
    assert chosen["scale"] == 10.0 and [t["qualifies"] for t in trace] == [False, True, True, True, False]
    assert choose_step(trace, tolerance=0.2)["scale"] == 30.0  # a looser tolerance allows the cliff
    # a class that pays for the others is caught by the class-mean accuracy
    trace = _trace([0.08, 0.04], [0.85, 0.85])
    trace[1]["heldout_class_mean_accuracy"] = 0.80
    assert choose_step(trace, tolerance=0.01)["scale"] == 0.0
    # ties: the larger step
    assert choose_step(_trace([0.08, 0.04, 0.04], [0.85, 0.85, 0.85]), tolerance=0.01)["scale"] == 3.0
    # nothing lowers the bias: the input model
    assert choose_step(_trace([0.08, 0.09, 0.2], [0.85, 0.86, 0.86]), tolerance=0.01)["scale"] == 0.0


def test_fmd_on_biased_rows_lowers_the_held_out_bias(tmp_path):
    splits = make_splits(f"tensors:{_rows(tmp_path / 'rows.npz')}", seed=0)
    torch.manual_seed(0)
    from debiaskit.models import build_model
    from debiaskit.train import TrainConfig, fit

    model = build_model("mlp", num_classes=2, input_shape=splits.train.input_shape)
    fit(model, splits.train, config=TrainConfig(epochs=3, batch_size=64, seed=0), progress=False)
    res = fmd_unlearn(
        model, train=splits.train, head="fc", pool_size=400, n_bias_pairs=100, top_k=100, damping=(1e-2, 1e-3)
    )
    info = res.info
    assert info["improved"] and info["selected_scale"] > 0 and info["bias_after"] < info["bias_before"]
    assert info["accuracy_after"] >= info["accuracy_before"] - info["tolerance"]
    assert {t["scale"] for t in info["trace"]} == set(SCALES) and info["damping"] == [1e-2, 1e-3]
    assert len(info["trace"]) == 1 + 2 * (len(SCALES) - 1) and info["selected_damping"] in (1e-2, 1e-3)


# -- do no harm: exit 3, nothing written ------------------------------------------------------------------
def test_unlearn_refuses_when_no_step_helps(cli, tmp_path):
    """cf == x: the model has no counterfactual bias, so no step lowers it: exit 3, no folder, what to do."""
    run = tmp_path / "run"
    _train(cli, _rows(tmp_path / "same.npz", cf="same"), run)
    code, out = cli("unlearn", run, "--out", tmp_path / "unl", "--pool-size", "300", "--top-k", "50")
    assert code == NO_IMPROVEMENT_EXIT == 3, out
    assert "found nothing better" in out and "No model was written" in out and "--max-accuracy-drop" in out
    assert not (tmp_path / "unl").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["run", "same.npz"]


def test_unlearn_writes_its_trade_off_and_checks_the_tolerance(cli, tmp_path):
    run = tmp_path / "run"
    _train(cli, _rows(tmp_path / "rows.npz"), run)
    code, out = cli("unlearn", run, "--max-accuracy-drop", "-1")
    assert code == 2 and "max_accuracy_drop is -1.0" in out
    code, out = cli("unlearn", run, "--pool-size", "300", "--top-k", "50", "--damping", "0.001")
    assert code == 0, out
    folder = tmp_path / "run-fmd"
    assert (folder / "unlearn_tradeoff.png").stat().st_size > 1000
    md = (folder / "unlearn.md").read_text()
    assert "| step scale | damping | held-out CF bias |" in md and md.count("\n| ") == 2 + (len(SCALES) - 1)
    code, out = cli("unlearn", run, "--pool-size", "300", "--top-k", "50", "--damping", "0.001", "--force")  # replaced
    assert code == 0, out


# -- the cf array route ---------------------------------------------------------------------------------
def test_a_cf_array_gives_the_audit_and_fmd_their_pairs(cli, tmp_path):
    data = _rows(tmp_path / "rows.npz")
    splits = make_splits(f"tensors:{data}", seed=0)
    idx = torch.arange(5)
    new_b = splits.test.draw_counterfactual_bias(idx, generator=torch.Generator().manual_seed(0))
    x_cf = splits.test.counterfactual(idx, new_b)
    assert torch.equal(x_cf[:, :4], splits.test.images[idx, :4])  # same content
    assert torch.equal(x_cf[:, 4:].argmax(1), 1 - splits.test.b[idx])  # the attribute flipped
    run = tmp_path / "run"
    _train(cli, data, run)
    assert cli("audit", run)[0] == 0
    import json

    assert json.loads((run / "audit" / "audit.json").read_text())["attributes"][0]["counterfactual_bias"] > 0


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"cf": np.zeros((1600, 5), np.float32)}, "cf must have the shape and dtype of x"),
        ({"cf": np.zeros((1600, 6), np.float64)}, "cf must have the shape and dtype of x"),
        ({"bias_columns": np.array([4, 5])}, "holds both cf and bias_columns"),
        (
            {"b": np.tile(np.array([[0, 1], [1, 0]], np.int64), (800, 1))},
            "cf is the counterfactual for one bias attribute",
        ),
    ],
)
def test_a_bad_cf_array_is_refused(tmp_path, extra, message):
    data = _rows(tmp_path / "rows.npz", extra=extra)
    with pytest.raises(DataError, match=message):
        make_splits(f"tensors:{data}", seed=0)


def test_unlearn_without_a_counterfactual_source_says_what_to_give(cli, tmp_path):
    run = tmp_path / "run"
    _train(cli, _rows(tmp_path / "plain.npz", cf="none"), run)
    code, out = cli("unlearn", run)
    assert code == 2 and "`cf` array" in out and not (tmp_path / "run-fmd").exists()
