"""CALM's label-free do-no-harm guard: an ERM copy trains beside it and is returned when CALM does worse on
held-out D^b (accuracy, class-mean accuracy) or does not beat it on its own pseudo-group score."""
from __future__ import annotations

import pytest
import torch

from debiaskit.data import BiasDataset
from debiaskit.errors import ConfigError
from debiaskit.methods import build_method
from debiaskit.methods.calm import CALM, guard_keeps_calm
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
    erm = {"accuracy": 0.85, "class_mean_accuracy": 0.80, "pseudo_group_score": 0.60}
    assert guard_keeps_calm({**erm, "pseudo_group_score": 0.70, "accuracy": 0.84}, erm, tolerance=0.02)
    assert not guard_keeps_calm({**erm, "pseudo_group_score": 0.70, "accuracy": 0.80}, erm, tolerance=0.02)
    assert not guard_keeps_calm({**erm, "pseudo_group_score": 0.70, "class_mean_accuracy": 0.70}, erm, tolerance=0.02)
    assert not guard_keeps_calm({**erm, "pseudo_group_score": 0.55}, erm, tolerance=0.02)   # no gain on its own claim


def test_a_broken_calm_falls_back_to_its_erm_copy():
    """tau 30 and uncapped weights wreck CALM's model; the guard returns the ERM copy and says so."""
    data = _rows()
    method, result = _fit(data, tau=30.0, weight_cap=1000.0, warmup_epochs=1)
    guard = method.state()["guard"]
    assert guard["kept"] == "erm", guard
    held = guard["held_out"]
    assert held["calm"]["accuracy"] < held["erm"]["accuracy"] - 0.02 or \
        held["calm"]["pseudo_group_score"] < held["erm"]["pseudo_group_score"]
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
