"""Structured FFW must not win its objective by shrinking units (docs/design/ffw-structured.md).

A unit gate can rescale a whole channel, the bottleneck's own channels included. J = CE + gamma * D then has two
shortcuts that remove nothing: an overconfident vanilla model's CE falls when every logit shrinks (a temperature),
and the bias term falls when the features it reads shrink. The hard mask turns "shrink a little" into "remove", and
the dead network (CE log K, D = 0) has the lowest J of all. Hence: a learnt logit temperature, a bias term with no
gradient along a feature's own scale, and a selection that prefers candidates keeping the vanilla's task accuracy.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from debiaskit.ffw import find_fantastic_weights
from debiaskit.ffw._config import FFWConfig
from debiaskit.ffw._gates import freeze, install_gates
from debiaskit.ffw._harm import ChanceFloor
from debiaskit.ffw._search import _Search
from debiaskit.ffw._step import ffw_step, fit_log_temperature


def test_structured_defaults_guard_against_the_scale_shortcut():
    assert FFWConfig(mode="structured").learn_temperature and FFWConfig(mode="structured").scale_free_dependence
    # unstructured keeps the settings its benchmarks were measured with
    assert not FFWConfig().learn_temperature and not FFWConfig().scale_free_dependence


def test_the_fitted_temperature_undoes_an_overconfident_scale():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (2000,), generator=g)
    calibrated = torch.randn(2000, 4, generator=g) + 1.5 * F.one_hot(y, 4)  # roughly calibrated logits
    best = fit_log_temperature(calibrated, y)
    overconfident = fit_log_temperature(5.0 * calibrated, y)
    assert float(overconfident - best) == pytest.approx(math.log(5.0), abs=0.02)
    assert F.cross_entropy(5.0 * calibrated / overconfident.exp(), y) < F.cross_entropy(5.0 * calibrated, y) - 0.5


class _Mlp(nn.Module):
    head_name = "fc"

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(3, 6), nn.ReLU())
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        return self.fc(self.body(x))


def _dependence(z, cols, y):
    """A bias term that shrinks with the features: squared distance of the two bias classes' means."""
    b = cols[0]
    return ((z[b == 0].mean(0) - z[b == 1].mean(0)) ** 2).sum()


@pytest.mark.parametrize("scale_free", [False, True])
def test_the_bias_term_gives_no_gradient_along_a_unit_scale(scale_free):
    """The gates here multiply the bottleneck units themselves: with scale_free they get no gradient from D."""
    model = _Mlp()
    freeze(model)
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(1))
    y, b = (x[:, 0] > 0).long(), (x[:, 1] > 0).long()
    gm = install_gates(model, mode="structured", head="fc", example=x[:2])
    params = gm.gate_parameters()

    def d_grad(gamma):
        ffw_step(
            model, "fc", params, [], x, y, b, gamma=gamma, num_bias=2, dependence=_dependence, scale_free=scale_free
        )
        return torch.cat([p.grad.flatten() for p in params])

    from_d = d_grad(10.0) - d_grad(0.0)
    if scale_free:
        assert from_d.abs().max() < 1e-4
    else:
        assert from_d.abs().max() > 1e-2


def _fake_search():
    s = SimpleNamespace(
        cfg=FFWConfig(mode="structured"),
        history=[],
        best=None,
        best_gates=None,
        # no candidate is near chance here (test_ffw_no_harm.py: when one is)
        floor=ChanceFloor(chance=0.0, majority_rate=0.0, base=0.0, margin=0.0, floor=0.0),
        gated=SimpleNamespace(gate_tensors=lambda: {"g": torch.zeros(1)}),
    )
    s.usable = lambda v: _Search.usable(s, v)
    s.selection_score = lambda v: _Search.selection_score(s, v)
    s._score = lambda r: _Search._score(s, r)
    s._keeps_task = lambda r: _Search._keeps_task(s, r)
    return s


def _record(epoch, task, objective):
    return {"epoch": epoch, "val_hard": {"task": task, "objective": objective, "ce": objective}}


def test_selection_prefers_a_candidate_that_keeps_the_task_over_a_dead_network():
    s = _fake_search()
    for rec in (_record(0, 0.33, 9.5), _record(1, 0.10, 2.30), _record(2, 0.40, 4.0), _record(3, 0.25, 2.6)):
        s.history.append(rec)
        _Search.consider(s, rec)
    # J alone would keep epoch 1 (a dead network at chance); epoch 2 keeps the vanilla's task and has the best J
    assert s.best["epoch"] == 2 and s.best["keeps_task"]


def test_selection_falls_back_to_the_objective_when_no_candidate_keeps_the_task():
    s = _fake_search()
    for rec in (_record(0, 0.33, 9.5), _record(1, 0.10, 2.30), _record(2, 0.25, 2.6)):
        s.history.append(rec)
        _Search.consider(s, rec)
    assert s.best["epoch"] == 1 and not s.best["keeps_task"]


def test_the_learnt_temperature_survives_an_interrupt(tmp_path):
    from test_ffw_search import FAST, Planted, _planted

    train, val = _planted(600, rho=0.5, seed=1, name="u_train"), _planted(300, rho=0.5, seed=2, name="u_val")

    def overconfident():
        model = Planted().eval()
        with torch.no_grad():
            model.fc.weight.mul_(8.0)
        return model

    kw = dict(train=train, val=val, mode="structured", gamma=10, progress=False, **FAST)
    reference = find_fantastic_weights(overconfident(), **kw)

    def stop_at_step_8(event):
        if event["kind"] == "step" and event["step"] == 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        find_fantastic_weights(overconfident(), checkpoint_dir=tmp_path, callback=stop_at_step_8, **kw)
    resumed = find_fantastic_weights(overconfident(), checkpoint_dir=tmp_path, resume=True, **kw)
    assert [h.get("train_loss") for h in resumed.history] == [h.get("train_loss") for h in reference.history]
