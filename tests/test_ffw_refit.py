"""FFW's head refit on D^u_train (after the gates and the eraser): what it changes, what it keeps, how it is saved."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from debiaskit.cli import app
from debiaskit.errors import ConfigError
from debiaskit.ffw import load_ffw_model
from debiaskit.ffw._refit import group_balanced_weights, refit_head
from debiaskit.methods.ffw import apply_ffw
from debiaskit.runs import load_run

runner = CliRunner()
FAST = ["--max-levels", "2", "--max-epochs-per-level", "1", "--no-progress"]


def _task(n: int, seed: int):
    """6-d features whose class (3) is read from dims 0-2 scaled very differently, and a balanced bias label."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    b = torch.randint(0, 2, (n,), generator=g)
    z = torch.randn(n, 6, generator=g)
    z[:, :3] += 2.0 * nn.functional.one_hot(y, 3).float()
    z[:, 0] *= 50.0  # one feature on another scale: the standardised fit must not care
    return z, y, b


def _accuracy(head: nn.Module, z: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((head(z).argmax(1) == y).float().mean())


def _wrong_linear_head() -> nn.Linear:
    head = nn.Linear(6, 3)
    with torch.no_grad():  # reads the class from the wrong dims: what a head fitted to biased features looks like
        head.weight.zero_()
        head.weight[:, 3:] = torch.eye(3)
        head.bias.zero_()
    return head


def test_group_balanced_weights_give_every_target_bias_group_the_same_total_weight():
    y = torch.tensor([0, 0, 0, 0, 1, 1])
    b = torch.tensor([0, 0, 0, 1, 0, 1])
    w = group_balanced_weights(y, b)
    totals = {(int(a), int(c)): float(w[(y == a) & (b == c)].sum()) for a, c in {(0, 0), (0, 1), (1, 0), (1, 1)}}
    assert len(set(round(t, 9) for t in totals.values())) == 1 and abs(float(w.mean()) - 1) < 1e-9
    w2 = group_balanced_weights(y, torch.stack([b, b], 1))  # several bias attributes: groups over all of them
    assert torch.allclose(w, w2)


def test_a_wrong_linear_head_is_refit_and_the_head_module_gives_the_fitted_logits():
    (z, y, b), (zv, yv, _) = _task(600, 0), _task(400, 1)
    head = _wrong_linear_head()
    before = _accuracy(head, zv, yv)
    rec = refit_head(head, train_z=z, train_y=y, train_b=b, val_z=zv, val_y=yv)
    assert rec["kind"] == "linear-dfr" and rec["kept_lam"] is not None
    assert rec["val_task_before"] == pytest.approx(before) and rec["val_task_after"] > before + 0.3
    assert _accuracy(head, zv, yv) == pytest.approx(rec["val_task_after"])  # the standardisation is folded in
    assert [g["lam"] for g in rec["grid"]] == sorted((g["lam"] for g in rec["grid"]), reverse=True)


def test_fits_already_made_are_reused_not_redone_and_give_the_same_head(monkeypatch):
    """The conditional eraser's scoring fits its chosen candidate's head for some lambdas already; the final
    refit reuses them (``fits``) and must end exactly where a refit from scratch ends."""
    import debiaskit.ffw._refit as refit_module

    (z, y, b), (zv, yv, _) = _task(600, 0), _task(400, 1)
    scratch, reused = _wrong_linear_head(), _wrong_linear_head()
    rec_scratch = refit_head(scratch, train_z=z, train_y=y, train_b=b, val_z=zv, val_y=yv)
    fits: dict = {}
    refit_head(_wrong_linear_head(), train_z=z, train_y=y, train_b=b, val_z=zv, val_y=yv, grid=(1e-3,), fits=fits)
    assert list(fits) == [1e-3]
    calls = []
    real_fit = refit_module._fit
    monkeypatch.setattr(refit_module, "_fit", lambda *a, **k: calls.append(a[-1]) or real_fit(*a, **k))
    rec_reused = refit_head(reused, train_z=z, train_y=y, train_b=b, val_z=zv, val_y=yv, fits=fits)
    assert 1e-3 not in calls and len(calls) == len(refit_module.REFIT_GRID) - 1
    assert [g["val_task"] for g in rec_reused["grid"]] == [g["val_task"] for g in rec_scratch["grid"]]
    assert torch.equal(reused.weight, scratch.weight) and torch.equal(reused.bias, scratch.bias)


def test_a_head_that_no_lambda_improves_on_d_u_val_is_left_bit_identical():
    (z, y, b), (zv, yv, _) = _task(600, 0), _task(400, 1)
    g = torch.Generator().manual_seed(2)
    z = 10 * nn.functional.one_hot(y, 6).float() + 0.1 * torch.randn(len(y), 6, generator=g)
    zv = 10 * nn.functional.one_hot(yv, 6).float() + 0.1 * torch.randn(len(yv), 6, generator=g)
    head = nn.Linear(6, 3)
    with torch.no_grad():  # already reads the class perfectly
        head.weight.copy_(torch.eye(3, 6))
        head.bias.zero_()
    assert _accuracy(head, zv, yv) == 1.0
    original = copy.deepcopy(head.state_dict())
    rec = refit_head(head, train_z=z, train_y=y, train_b=b, val_z=zv, val_y=yv)
    assert rec["kept_lam"] is None and rec["val_task_after"] == rec["val_task_before"] == 1.0
    assert all(torch.equal(original[k], v) for k, v in head.state_dict().items())


def test_pruned_weights_of_a_gated_head_stay_zero():
    (z, y, b), (zv, yv, _) = _task(600, 0), _task(400, 1)
    head = _wrong_linear_head()
    with torch.no_grad():
        head.weight[0, 1] = 0.0
        head.weight[2, :] += 0.5
        head.weight[2, 5] = 0.0  # two "pruned" weights (exact zeros) among non-zero ones
    zeros = head.weight == 0
    refit_head(head, train_z=z, train_y=y, train_b=b, val_z=zv, val_y=yv, keep_zeros=True)
    assert bool((head.weight[zeros] == 0).all()) and bool((head.weight[~zeros] != 0).all())


def test_any_head_module_is_refit_from_where_it_was():
    (z, y, b), (zv, yv, _) = _task(600, 0), _task(400, 1)
    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    before = _accuracy(head, zv, yv)
    rec = refit_head(head, train_z=z / 50, train_y=y, train_b=b, val_z=zv / 50, val_y=yv)
    assert rec["kind"] == "pull-to-start" and rec["val_task_after"] > before
    assert _accuracy(head, zv / 50, yv) == pytest.approx(rec["val_task_after"])


def test_the_cli_refits_the_head_records_it_and_reloads_the_refit_network(toy_run_dir, tmp_path, allow_harm):
    out = tmp_path / "ffw"
    res = runner.invoke(app, ["ffw", str(toy_run_dir), "--mode", "unstructured", "--out", str(out), *FAST])
    assert res.exit_code == 0, res.output
    info = json.loads((out / "ffw.json").read_text())
    refit = info["search"]["head_refit"]
    assert refit["head"] == info["model"]["head"] and refit["val_task_after"] >= refit["val_task_before"]
    assert info["search"]["config"]["refit_head"] is True and "Head refit" in (out / "report.md").read_text()
    run = load_run(toy_run_dir)
    model, test = load_ffw_model(out), run.splits().test
    with torch.no_grad():  # what was saved is what was audited: the refit head is in the exported weights
        task = float((model(test.x).argmax(1) == test.y).float().mean())
    assert task == pytest.approx(info["after"]["task_accuracy"], abs=1e-6)
    off = tmp_path / "ffw-off"
    res = runner.invoke(
        app,
        [
            "ffw",
            str(toy_run_dir),
            "--mode",
            "unstructured",
            "--out",
            str(off),
            "--no-refit-head",
            "--tune-epochs",
            "0",
            *FAST,
        ],
    )  # nothing moves the head
    assert res.exit_code == 0, res.output
    info_off = json.loads((off / "ffw.json").read_text())
    assert info_off["search"]["head_refit"] is None and "No head refit" in (off / "report.md").read_text()
    inner = info["model"]["head"]
    head_off = load_ffw_model(off).get_submodule(inner).weight
    assert torch.equal(head_off, run.model.get_submodule(run.head).weight)  # off: the vanilla head, untouched
    if refit["kept_lam"] is not None:
        assert not torch.equal(model.get_submodule(inner).weight, head_off)


def test_the_harness_refuses_the_head_refit(toy_splits):
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 28 * 28, 8), nn.ReLU(), nn.Linear(8, 10))
    with pytest.raises(ConfigError, match="without the head refit"):
        apply_ffw(model, splits=toy_splits, head="3", refit_head=True)
