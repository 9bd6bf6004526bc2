"""CALM (label-free online debiasing): attractor mechanics, caps, and that bias labels are never read."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from debiaskit.discover import RunningCentroids, attractor_rule, class_centroids
from debiaskit.errors import ConfigError, ModelError
from debiaskit.methods import build_method, get_method
from debiaskit.methods._gce import gce_loss
from debiaskit.methods._registry import method_defaults
from debiaskit.methods.calm import (
    ATTRACTOR_RECIPE,
    CALM,
    capped_weights,
    guarded_gce,
    log_prior,
    pooled_balanced_accuracy,
    pseudo_group_balanced_accuracy,
    pseudo_group_table,
)
from debiaskit.models import build_model
from debiaskit.train import TrainConfig, fit


def planted_features(n=3000, k=4, rho=0.9, bias_scale=5.0, seed=0):
    """z = small class component + dominant bias component; b = y for a share rho of the samples."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    conflicting = torch.rand(n, generator=g) > rho
    b = torch.where(conflicting, (y + torch.randint(1, k, (n,), generator=g)) % k, y)
    eye = torch.eye(k)
    z = torch.cat([eye[y], bias_scale * eye[b]], 1) + 0.1 * torch.randn(n, 2 * k, generator=g)
    return z, y, b, conflicting


def test_attractor_rule_recovers_planted_bias():
    z, y, b, conflicting = planted_features()
    c, present = class_centroids(z, y, num_classes=4)
    att = attractor_rule(z, y, c, present=present)
    assert (att.pseudo_bias == b).float().mean() > 0.99
    flag = att.conflicting
    precision = (flag & conflicting).sum() / flag.sum()
    recall = (flag & conflicting).sum() / conflicting.sum()
    assert precision > 0.95 and recall > 0.95
    # aligned samples sit inside their own cell: negative score, b^ = y
    assert (att.conflict_score[~conflicting] < 0).float().mean() > 0.99
    assert torch.allclose(att.confidence, att.conflict_score.abs())


def test_hyperplane_distance_is_normalised():
    c = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    z = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 5.0], [1.5, 0.0]])
    y = torch.zeros(4, dtype=torch.long)
    att = attractor_rule(z, y, c)
    # -1 at the own centroid, +1 at the attractor, 0 on the bisector, +0.5 three quarters of the way
    assert torch.allclose(att.conflict_score, torch.tensor([-1.0, 1.0, 0.0, 0.5]), atol=1e-6)
    assert att.pseudo_bias.tolist()[:2] == [0, 1]


def test_running_centroids_ema_of_correct_samples_only():
    rc = RunningCentroids(num_classes=2, momentum=0.5)
    z = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 9.0]])
    y = torch.tensor([0, 0, 1])
    rc.update(z, y, correct=torch.tensor([True, True, False]))
    assert rc.present.tolist() == [True, False]
    assert torch.allclose(rc.centroids[0], torch.tensor([2.0, 0.0]))
    rc.update(torch.tensor([[4.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 1]), correct=torch.tensor([True, True]))
    assert torch.allclose(rc.centroids[0], torch.tensor([3.0, 0.0]))  # 0.5 * 2 + 0.5 * 4
    assert torch.allclose(rc.centroids[1], torch.tensor([0.0, 2.0]))  # first sighting sets it


def test_weights_are_capped_and_prior_is_group_balanced():
    y = torch.tensor([0] * 100 + [0] * 2 + [1] * 50 + [1] * 10)
    pseudo = torch.tensor([0] * 100 + [1] * 2 + [1] * 50 + [0] * 10)
    table = pseudo_group_table(y, pseudo, num_classes=2)
    assert table.tolist() == [[100, 2], [10, 50]]
    w = capped_weights(y, pseudo, table, cap=20.0)
    assert w.max() <= 20.0 and w[0] == 1 and w[100] == 20.0 and w[-1] == 5.0
    lp = log_prior(table, smoothing=1.0)  # rows b^
    assert torch.allclose(lp.exp().sum(1), torch.ones(2))
    assert lp[0, 0] > lp[0, 1] and lp[1, 1] > lp[1, 0]


def test_pseudo_group_balanced_accuracy_weights_groups_equally():
    y = torch.tensor([0, 0, 0, 0, 1])
    pseudo = torch.tensor([0, 0, 0, 1, 1])
    pred = torch.tensor([0, 0, 0, 1, 1])  # the lone conflicting sample of class 0 is wrong
    assert pseudo_group_balanced_accuracy(pred, y, pseudo, num_classes=2) == pytest.approx((1 + 0 + 1) / 3)


def test_pooled_balanced_accuracy_pools_aligned_and_conflicting():
    y = torch.tensor([0, 0, 0, 0, 1, 1])
    pseudo = torch.tensor([0, 0, 1, 2, 1, 0])  # aligned: 0, 1, 4; conflicting: 2, 3, 5
    pred = torch.tensor([0, 1, 1, 2, 0, 1])  # aligned hits 1/3 (sample 0), conflicting 1/3 (sample 5)
    assert pooled_balanced_accuracy(pred, y, pseudo, num_classes=3) == pytest.approx(1 / 3)
    # the per-cell mean differs: cells (0,0) 1/2, (0,1) 0, (0,2) 0, (1,1) 0, (1,0) 1
    assert pseudo_group_balanced_accuracy(pred, y, pseudo, num_classes=3) == pytest.approx(1.5 / 5)
    # no pseudo-conflicting sample: plain accuracy
    assert pooled_balanced_accuracy(pred[:2], y[:2], y[:2], num_classes=3) == pytest.approx(0.5)


def _train_calm(data, *, epochs=3, seed=0, model_name="simple-conv-small", head="fc", model=None, **kw):
    torch.manual_seed(seed)
    model = model or build_model(model_name, num_classes=data.num_classes, input_shape=data.input_shape)
    method, _ = build_method("calm", dataset="biased-toy", warmup_epochs=1, collect_epochs=1, ramp_epochs=1, **kw)
    result = fit(
        model,
        data,
        method=method,
        config=TrainConfig(epochs=epochs, batch_size=128, seed=seed),
        head=head,
        progress=False,
    )
    return result, method


@pytest.mark.parametrize("discovery", ["attractor", "gce"])
def test_calm_never_reads_bias_labels(toy_splits, discovery):
    """Garbage bias labels (random, and a random 'aligned' mask) give bit-identical weights."""
    clean = toy_splits.train
    garbage = clean.subset(torch.arange(len(clean)))
    g = torch.Generator().manual_seed(123)
    garbage.b = torch.randint(0, clean.num_bias_classes, (len(clean),), generator=g)
    garbage.aligned = torch.rand(len(clean), generator=g) > 0.5
    assert not torch.equal(garbage.b, clean.b)
    r1, m1 = _train_calm(clean, model_name="mlp", discovery=discovery)
    r2, m2 = _train_calm(garbage, model_name="mlp", discovery=discovery)
    s1, s2 = r1.model.state_dict(), r2.model.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert torch.equal(m1.pseudo, m2.pseudo) and m1.best_epoch == m2.best_epoch
    # and it did something: pseudo-bias was discovered and the correction ramped in
    assert m1.pseudo is not None and m1.diagnostics["max_weight"] <= 20.0


def test_calm_weights_respect_cap_during_training(toy_splits):
    _, method = _train_calm(toy_splits.train.without_bias_labels(), weight_cap=3.0, model_name="mlp")
    assert float(method.sample_weight.max()) <= 3.0
    assert method.sample_weight.min() >= 1.0
    assert method.val_pseudo is not None and len(method.val_index) == round(0.05 * len(toy_splits.train))
    # held-out samples are never trained on
    assert set(method.val_index.tolist()).isdisjoint(method.train_index.tolist())


def test_calm_works_on_any_module_with_named_head(toy_splits):
    data = toy_splits.train.without_bias_labels()
    d = int(torch.tensor(data.input_shape).prod())
    net = nn.Sequential(nn.Flatten(), nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, data.num_classes))
    result, method = _train_calm(data, model=net, head="3", epochs=2)
    assert method.pseudo is not None and result.model(data.x[:4]).shape == (4, data.num_classes)
    with pytest.raises(ModelError):
        _train_calm(data, model=nn.Sequential(nn.Flatten(), nn.Linear(d, 10)), head="nope", epochs=2)


def test_calm_registry_and_config_errors():
    info = get_method("calm")
    assert info.uses_bias_labels is False and info.uses_unbiased_data is False
    with pytest.raises(ConfigError):
        CALM(warmup_epochs=1, collect_epochs=2)
    with pytest.raises(ConfigError):
        CALM(weight_cap=0.5)
    with pytest.raises(ConfigError):
        CALM(val_fraction=0.0, select=True)
    with pytest.raises(ConfigError, match="discovery"):
        CALM(discovery="oracle")
    with pytest.raises(ConfigError, match="freeze"):
        CALM(discovery="gce", freeze=False)
    with pytest.raises(ConfigError):
        CALM(discovery="gce", gce_q=0.0)
    with pytest.raises(ConfigError):
        CALM(discovery="gce", gce_guard=0.0)
    with pytest.raises(ConfigError, match="select_metric"):
        CALM(select_metric="worst")


def test_calm_through_the_train_cli(tmp_path):
    import json

    from typer.testing import CliRunner

    from debiaskit.cli import app

    run = tmp_path / "calm"
    res = CliRunner().invoke(
        app,
        [
            "train",
            "--dataset",
            "biased-toy",
            "--rho",
            "0.95",
            "--epochs",
            "3",
            "--model",
            "mlp",
            "--method",
            "calm",
            "--unbiased-size",
            "600",
            "--out",
            str(run),
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    meta = json.loads((run / "run.json").read_text())
    state = meta["method"]["state"]
    assert meta["method"]["name"] == "calm" and meta["method"]["uses_bias_labels"] is False
    assert state["selected_epoch"] == 3 and state["held_out_training_samples"] == 70


def test_calm_defaults_are_one_recipe_for_every_dataset():
    """One measured recipe (GCE branch, 1-epoch warm-up, tau 0.5, pooled selection) for every family; the class
    defaults equal the registry's, and the first (attractor) recipe stays available by name."""
    for dataset in ("colored-mnist", "biased-mnist", "multicolor-mnist", "corrupted-mnist"):
        cfg = {k: d.value for k, d in method_defaults("calm", dataset).items()}
        assert {k: cfg[k] for k in ("discovery", "warmup_epochs", "tau", "select_metric")} == {
            "discovery": "gce",
            "warmup_epochs": 1,
            "tau": 0.5,
            "select_metric": "pooled",
        }, dataset
        assert all(d.source for d in method_defaults("calm", dataset).values())
    assert CALM().hp == {k: d.value for k, d in method_defaults("calm", "biased-mnist").items()}
    method, cfg = build_method("calm", dataset="biased-mnist", **ATTRACTOR_RECIPE)
    assert method.discovery == "attractor" and cfg["warmup_epochs"] == 2 and cfg["tau"] == 1.0


def test_guarded_gce_is_gce_and_the_guard_cuts_confident_mistakes():
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.2, 0.1, 0.0]], requires_grad=True)
    y = torch.tensor([0, 0, 1])  # right; confidently wrong (p_max 0.96); unsure and wrong (p_max 0.37)
    plain = guarded_gce(logits, y, q=0.7)
    assert torch.allclose(plain, gce_loss(logits, y, q=0.7, reduction="none"))
    g_plain = torch.autograd.grad(plain.sum(), logits)[0]
    g_guard = torch.autograd.grad(guarded_gce(logits, y, q=0.7, guard=0.5).sum(), logits)[0]
    assert g_plain[1].abs().sum() > 0 and g_guard[1].abs().sum() == 0
    assert torch.allclose(g_guard[[0, 2]], g_plain[[0, 2]])
    # GCE vs CE: the hard sample's gradient is scaled down by p_y^q (the branch keeps to the easy ones)
    g_ce = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, y, reduction="sum"), logits)[0]
    p_y = logits.softmax(1)[1, 0].detach()
    assert torch.allclose(g_plain[1], g_ce[1] * p_y**0.7)


def test_calm_gce_branch_trains_in_the_warmup_only_then_is_dropped(toy_splits):
    data = toy_splits.train.without_bias_labels()
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=data.num_classes, input_shape=data.input_shape)
    method, cfg = build_method("calm", dataset="colored-toy", ramp_epochs=1)
    assert cfg["discovery"] == "gce" and cfg["warmup_epochs"] == 1
    assert method.conflict_flags() is None  # nothing discovered yet
    calls = []
    step = method._biased_step
    method._biased_step = lambda batch: (calls.append(int(batch.index[0])), step(batch))
    fit(model, data, method=method, config=TrainConfig(epochs=3, batch_size=128, seed=0), head="fc", progress=False)
    assert len(calls) == math.ceil(len(method.train_index) / 128)  # one epoch of branch steps, no more
    assert method.biased is None  # dropped after the discovery pass
    assert method.pseudo is not None and torch.equal(method.val_pseudo, method.pseudo[method.val_index])
    assert 1.0 <= float(method.sample_weight.min()) and float(method.sample_weight.max()) <= 20.0
    assert method.state()["discovery"] == "gce"
    index, flagged, pseudo = method.conflict_flags()
    assert torch.equal(index, method.train_index) and torch.equal(flagged, method.pseudo[index] != data.y[index])
    assert (
        torch.equal(pseudo, method.pseudo[index]) and method.conflict_flags(online=True) is None
    )  # no per-visit flags
