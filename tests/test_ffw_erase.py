"""FFW's linear eraser (LEACE) in front of the head: what it guarantees, how it is exported, reloaded and refused."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from debiaskit.cli import app
from debiaskit.errors import ConfigError
from debiaskit.ffw import (
    ErasedHead,
    attach_eraser,
    conditional_erasers,
    find_fantastic_weights,
    fit_linear_eraser,
    load_ffw_model,
)
from debiaskit.models import collect_outputs
from debiaskit.runs import load_run

runner = CliRunner()
FAST = ["--max-levels", "2", "--max-epochs-per-level", "1", "--no-progress"]


def _class_means(z: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    return torch.stack([z[b == c].mean(0) for c in range(k)])


def _planted_features(n: int = 3000, seed: int = 0):
    """8-d features: dims 0-1 shifted by the bias class (3 classes), dims 2-7 a task signal independent of it."""
    g = torch.Generator().manual_seed(seed)
    b = torch.randint(0, 3, (n,), generator=g)
    task = torch.randn(n, 6, generator=g)
    z = torch.cat([torch.randn(n, 2, generator=g) * 0.1 + torch.stack([b == 1, b == 2], 1).float(), task], 1)
    return z, b, task


def test_the_eraser_makes_the_bias_class_means_equal_and_keeps_what_does_not_covary_with_the_bias():
    z, b, task = _planted_features()
    eraser, fit = fit_linear_eraser(z, b, 3)
    erased = eraser(z)
    means = _class_means(erased.double(), b, 3)
    assert float((means - means.mean(0)).abs().max()) < 1e-4  # linear guardedness on the fitted data
    assert float((_class_means(z, b, 3) - _class_means(z, b, 3).mean(0)).abs().max()) > 0.5  # it was not before
    assert fit["rank"] == 2  # at most K - 1 directions for K classes
    assert torch.allclose(eraser(erased), erased, atol=1e-5)  # a projection: erasing twice changes nothing
    kept = torch.corrcoef(torch.stack([erased[:, 2], task[:, 0]]))[0, 1]
    assert float(kept) > 0.99  # the task signal is left alone


def test_every_bias_attribute_is_erased():
    z, b, _ = _planted_features()
    g = torch.Generator().manual_seed(1)
    b2 = torch.randint(0, 3, (len(z),), generator=g)
    z = z.clone()
    z[:, 3] += 2.0 * (b2 == 1).float()  # a second attribute read from dim 3
    eraser, fit = fit_linear_eraser(z, torch.stack([b, b2], 1), 3)
    erased = eraser(z).double()
    for col in (b, b2):
        means = _class_means(erased, col, 3)
        assert float((means - means.mean(0)).abs().max()) < 1e-4
    assert fit["rank"] == 4


def test_the_eraser_sits_in_front_of_a_nested_head_and_keeps_the_zoo_head_name_right():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Identity(), nn.Linear(8, 2)))
    model.head_name = "2.1"
    z, b, _ = _planted_features()
    eraser, _ = fit_linear_eraser(z, b, 3)
    new = attach_eraser(model, "2.1", eraser)
    assert new == "2.1.head" and model.head_name == new and isinstance(model.get_submodule("2.1"), ErasedHead)
    assert model(torch.randn(5, 4)).shape == (5, 2)


def test_inplace_search_with_the_eraser_is_refused(toy_splits):
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 28 * 28, 8), nn.ReLU(), nn.Linear(8, 10))
    with pytest.raises(ConfigError, match="erase='none'"):
        find_fantastic_weights(
            model, head="3", train=toy_splits.unbiased_train, val=toy_splits.unbiased_val, inplace=True, tune_epochs=0
        )
    with pytest.raises(ConfigError, match="erase must be one of"):
        find_fantastic_weights(
            model, head="3", train=toy_splits.unbiased_train, val=toy_splits.unbiased_val, erase="quadratic"
        )


def test_the_cli_exports_the_eraser_records_it_and_reloads_the_same_network(toy_run_dir, tmp_path, allow_harm):
    out = tmp_path / "ffw"
    res = runner.invoke(
        app, ["ffw", str(toy_run_dir), "--mode", "unstructured", "--erase", "linear", "--out", str(out), *FAST]
    )
    assert res.exit_code == 0, res.output
    info = json.loads((out / "ffw.json").read_text())
    run = load_run(toy_run_dir)
    eraser = info["model"]["eraser"]
    assert eraser["head"] == run.head and info["model"]["head"] == f"{run.head}.head" and eraser["rank"] >= 1
    assert 0 <= eraser["val_task_after"] <= 1 and "Linear eraser" in (out / "report.md").read_text()
    model = load_ffw_model(out)
    splits = run.splits()
    feats = collect_outputs(model, splits.unbiased_train, head=info["model"]["head"])
    means = _class_means(feats.z.double(), feats.b, splits.unbiased_train.num_bias_classes)
    assert float((means - means.mean(0)).abs().max()) < 1e-3 * float(feats.z.abs().max())  # erased at the bottleneck
    x = splits.test.x[:16]
    assert torch.equal(model(x), load_ffw_model(out)(x))  # reloads to the same network
    # the audit after FFW reads the erased bottleneck: the "after" audit and the probes say so
    assert info["probes"]["after"]["linear"] <= info["probes"]["before"]["linear"]


def test_the_cli_refuses_an_unknown_eraser_before_any_compute(toy_run_dir, tmp_path, cli):
    out = tmp_path / "ffw"
    code, text = cli("ffw", toy_run_dir, "--mode", "unstructured", "--erase", "quadratic", "--out", out, *FAST)
    assert code == 2 and "erase must be one of linear, conditional, none" in text and "Traceback" not in text
    assert not out.exists()


def _within_target_bias(n: int = 3000, seed: int = 0):
    """8-d features: dim 0 the class (3), dim 1 a bias (2 classes) whose sign flips with the class, so the bias
    classes' overall means are equal-ish but differ within each class (what an MLP reads, not a linear probe)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    b = torch.randint(0, 2, (n,), generator=g)
    z = torch.randn(n, 8, generator=g)
    z[:, 0] += 3 * y
    z[:, 1] += (2 * b - 1) * (2 * y.float() - 2)
    return z, y, b


def _within_gap(z: torch.Tensor, y: torch.Tensor, b: torch.Tensor) -> float:
    return max(float((z[(y == c) & (b == 1)].mean(0) - z[(y == c) & (b == 0)].mean(0)).abs().max()) for c in range(3))


def test_conditional_candidates_start_at_the_linear_eraser_and_remove_the_within_target_gaps():
    z, y, b = _within_target_bias()
    linear, _ = fit_linear_eraser(z, b, 2)
    candidates = conditional_erasers(z, y, b, 2, ranks=(0, 1, 100))
    assert [info["within_target_rank"] for _, info in candidates] == [0, 1, 3]  # clipped to 3 x (2 - 1)
    assert torch.allclose(candidates[0][0].proj, linear.proj, atol=1e-6)
    assert _within_gap(candidates[0][0](z), y, b) > 3.0  # the linear eraser leaves them
    removed = [info["variance_removed"] for _, info in candidates]
    assert removed == sorted(removed)  # erasing more and more
    for eraser, _ in candidates:
        erased = eraser(z).double()
        means = _class_means(erased, b, 2)
        assert float((means - means.mean(0)).abs().max()) < 1e-4  # still linearly guarded
    assert _within_gap(candidates[-1][0](z), y, b) < 1e-3  # all within-target gaps gone


def test_the_default_conditional_eraser_is_chosen_by_the_one_standard_error_rule_and_reloads(
    toy_run_dir, tmp_path, allow_harm
):
    out = tmp_path / "ffw"
    res = runner.invoke(app, ["ffw", str(toy_run_dir), "--mode", "unstructured", "--out", str(out), *FAST])  # default
    assert res.exit_code == 0, res.output
    info = json.loads((out / "ffw.json").read_text())
    eraser = info["model"]["eraser"]
    assert eraser["kind"] == "conditional" and "Conditional eraser" in (out / "report.md").read_text()
    scores = [c["val_task"] for c in eraser["candidates"]]
    ranks = [c["within_target_rank"] for c in eraser["candidates"]]
    allowed = [k for k, s in zip(ranks, scores) if s >= max(scores) - eraser["val_task_stderr"]]
    assert eraser["within_target_rank"] == max(allowed) and ranks == sorted(ranks) and ranks[0] == 0
    test = load_run(toy_run_dir).splits().test
    with torch.no_grad():  # the reloaded network is the audited one (eraser, refit head and all)
        task = float((load_ffw_model(out)(test.x).argmax(1) == test.y).float().mean())
    assert task == pytest.approx(info["after"]["task_accuracy"], abs=1e-6)
