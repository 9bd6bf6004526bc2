"""CALM's label-free do-no-harm guard: an ERM copy trains beside it and is returned when CALM does worse on
held-out D^b (accuracy, class-mean accuracy) or does not beat it on its own pseudo-group score."""

from __future__ import annotations

import pytest
import torch

from debiaskit.audit import chance_floor
from debiaskit.data import BiasDataset
from debiaskit.errors import ConfigError
from debiaskit.methods import build_method
from debiaskit.methods.calm import CALM, guard_keeps_calm, pseudo_group_se
from debiaskit.models import build_model
from debiaskit.train import TrainConfig, fit


def _rows(n=1200, seed=0):
    """Tabular rows: y from the first features, a binary protected attribute (90 % aligned) as one input."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    b = torch.where(torch.rand(n, generator=g) < 0.9, y, 1 - y)
    x = torch.cat([torch.randn(n, 4, generator=g) + 1.5 * y[:, None].float(), b[:, None].float()], 1)
    return BiasDataset(images=x, y=y, b=b, num_classes=2, num_bias_classes=2, name="rows").without_bias_labels()


def _fit(data, **params):
    torch.manual_seed(0)
    method, _ = build_method("calm", dataset="rows", **{"val_fraction": 0.2, **params})
    model = build_model("mlp", num_classes=2, input_shape=data.input_shape)
    result = fit(model, data, method=method, config=TrainConfig(epochs=3, batch_size=64, seed=0), progress=False)
    return method, result


def test_the_rule():
    erm = {"accuracy": 0.99, "class_mean_accuracy": 0.99, "pseudo_group_score": 0.72, "pseudo_group_se": 0.03}
    # a debiased model loses plain accuracy on biased held-out data (the ERM copy uses the bias there): kept
    assert guard_keeps_calm({**erm, "pseudo_group_score": 0.84, "accuracy": 0.93}, erm, floor=0.12)
    assert not guard_keeps_calm({**erm, "pseudo_group_score": 0.84, "accuracy": 0.74}, erm, floor=0.774)  # < floor
    assert not guard_keeps_calm({**erm, "pseudo_group_score": 0.55}, erm, floor=0.12)  # no gain on its own claim
    # a gain inside the noise of a small hold-out (one standard error of the difference: 0.042) is no gain
    assert not guard_keeps_calm({**erm, "pseudo_group_score": 0.75, "accuracy": 0.93}, erm, floor=0.12)


def test_the_standard_error_of_a_pseudo_group_score():
    y = torch.tensor([0, 0, 0, 0, 1, 1])
    pseudo = torch.tensor([0, 0, 0, 1, 1, 0])  # pooled groups: aligned (4: 0, 0, 0, 1), conflicting (2)
    pred = torch.tensor([0, 0, 1, 0, 1, 1])  # aligned: 3 of 4 right, conflicting: 2 of 2
    q = torch.tensor([4 / 6, 3 / 4])
    expected = float(torch.sqrt((q * (1 - q) / torch.tensor([4.0, 2.0])).sum()) / 2)
    assert pseudo_group_se(pred, y, pseudo, pooled=True, num_classes=2) == pytest.approx(expected)


def test_the_floor_is_the_majority_rate_plus_a_margin():
    y = torch.tensor([0] * 754 + [1] * 246)  # UCI Adult's income prior
    floor = chance_floor(y, 2, margin=0.02)
    assert floor["majority_rate"] == pytest.approx(0.754) and floor["floor"] == pytest.approx(0.754 + 0.0272, abs=1e-3)


def test_a_broken_calm_falls_back_to_its_erm_copy():
    """tau 30 and uncapped weights wreck CALM's model; the guard returns the ERM copy and says so."""
    data = _rows()
    method, result = _fit(data, tau=30.0, weight_cap=1000.0, warmup_epochs=1)
    guard = method.state()["guard"]
    assert guard["kept"] == "erm", guard
    held = guard["held_out"]
    assert (
        held["calm"]["accuracy"] < guard["floor"]["floor"]
        or held["calm"]["pseudo_group_score"] < held["erm"]["pseudo_group_score"]
    )
    # the returned model is the ERM copy: the same predictions
    x = data.images[:200]
    with torch.no_grad():
        assert torch.equal(result.model.eval()(x).argmax(1), method.erm.eval()(x).argmax(1))


def test_without_the_guard_the_broken_calm_is_returned_and_the_guard_checks_its_settings():
    data = _rows()
    method, _ = _fit(data, tau=30.0, weight_cap=1000.0, guard=False)
    assert "guard" not in method.state() and method.erm is None
    with pytest.raises(ConfigError, match="guard_tolerance"):
        CALM(guard_tolerance=1.5)
    with pytest.raises(ConfigError, match="the guard need a held-out part"):
        CALM(val_fraction=0.0, select=False)
