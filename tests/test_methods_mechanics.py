"""Unit tests pinning each method's mechanics (formulas, not just 'it runs')."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from debiaskit.errors import ConfigError
from debiaskit.methods import build_method
from debiaskit.methods._gce import gce_loss, gce_reference
from debiaskit.methods.dcwp import debiased_supcon, keep_probability, sample_mask
from debiaskit.methods.fmd import (
    conjugate_gradient,
    fmd_unlearn,
    head_hessian,
    head_logits,
    head_per_sample_grads,
    influence_on_measure,
)
from debiaskit.methods.groupdro import group_ids, update_group_weights
from debiaskit.methods.lff import relative_difficulty
from debiaskit.models import build_model
from debiaskit.train import TrainConfig, fit


def test_gce_gradient_equals_that_of_one_minus_p_to_the_q_over_q():
    torch.manual_seed(0)
    logits = torch.randn(16, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 5, (16,))
    for q in (0.3, 0.7, 1.0):
        g1 = torch.autograd.grad(gce_loss(logits, y, q=q), logits)[0]
        g2 = torch.autograd.grad(gce_reference(logits, y, q=q), logits)[0]
        torch.testing.assert_close(g1, g2)
    # and it is not plain CE (whose gradient differs unless p_y = 1)
    g_ce = torch.autograd.grad(F.cross_entropy(logits, y), logits)[0]
    assert not torch.allclose(g1, g_ce)


def test_lff_weights_in_unit_interval_and_larger_for_conflicting(toy_splits):
    splits = toy_splits
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=10, input_shape=splits.train.input_shape)
    method, _ = build_method("lff", dataset="biased-toy")
    fit(model, splits.train, method=method, config=TrainConfig(epochs=3, batch_size=64, seed=0), progress=False)
    w = method.weights()
    assert ((w >= 0) & (w <= 1)).all()
    aligned = splits.train.aligned
    assert w[~aligned].mean() > w[aligned].mean() + 0.2, (float(w[~aligned].mean()), float(w[aligned].mean()))
    assert float(relative_difficulty(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))[0]) == pytest.approx(
        1.0, abs=1e-6
    )


def test_dcwp_mask_keep_probability_spans_zero_to_one():
    gen = torch.Generator().manual_seed(0)
    pi = torch.linspace(-6, 6, 13)[:, None].expand(13, 20000).contiguous().requires_grad_(True)
    m = sample_mask(pi, generator=gen)
    assert (m.detach() - m.detach().round()).abs().max() < 1e-6  # hard 0/1 forward
    freq = m.detach().mean(1)
    torch.testing.assert_close(freq, keep_probability(pi[:, 0].detach()), atol=0.015, rtol=0)
    assert freq[0] < 0.01 and freq[-1] > 0.99  # spans (0, 1)
    # the public code's double sigmoid keeps sigmoid(sigmoid(pi)): stuck in (0.5, 0.731)
    double = torch.sigmoid(torch.sigmoid(pi[:, 0].detach()))
    assert double.min() > 0.5 and double.max() < 0.74
    # straight-through: gradient reaches the logits
    m.sum().backward()
    assert pi.grad is not None and (pi.grad > 0).all()


def test_debiased_supcon_pulls_towards_mined_positives():
    z = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    y = torch.tensor([0, 0, 0])
    near = debiased_supcon(z, y, torch.tensor([False, True, False]))  # anchor 0's positive is close
    far = debiased_supcon(z, y, torch.tensor([False, False, True]))  # anchor 0's positive is far
    assert near < far
    assert debiased_supcon(z, y, torch.tensor([False, False, False])) == 0


def test_head_hessian_matches_torch_func_hessian():
    torch.manual_seed(0)
    z, y = torch.randn(30, 4, dtype=torch.float64), torch.randint(0, 3, (30,))
    theta = torch.randn(3, 5, dtype=torch.float64)
    loss = lambda flat: F.cross_entropy(head_logits(flat.view(3, 5), z), y)  # noqa: E731
    torch.testing.assert_close(head_hessian(z, y, theta), torch.func.hessian(loss)(theta.flatten()))
    g = torch.func.vmap(
        torch.func.grad(lambda f, zi, yi: F.cross_entropy(head_logits(f.view(3, 5), zi[None]), yi[None])),
        in_dims=(None, 0, 0),
    )(theta.flatten(), z, y)
    torch.testing.assert_close(head_per_sample_grads(z, y, theta), g)
    h = head_hessian(z, y, theta, damping=0.1)
    b = torch.randn(15, dtype=torch.float64)
    torch.testing.assert_close(conjugate_gradient(lambda v: h @ v, b, iters=200, tol=1e-20), torch.linalg.solve(h, b))


def test_fmd_influence_matches_leave_one_out_retraining():
    """Logistic regression (softmax, 2 classes, L2 lam): predicted change of a measure when a sample is
    removed vs actually retraining without it."""
    torch.manual_seed(0)
    n, d, lam = 60, 3, 0.05
    x = torch.randn(n, d, dtype=torch.float64)
    y = (
        (x @ torch.tensor([1.5, -1.0, 0.5], dtype=torch.float64) + 0.7 * torch.randn(n, dtype=torch.float64)) > 0
    ).long()
    x_test = torch.randn(40, d, dtype=torch.float64)

    def train(weights: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        th = start.clone().requires_grad_(True)
        opt = torch.optim.LBFGS(
            [th], lr=1, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14, line_search_fn="strong_wolfe"
        )

        def closure():
            opt.zero_grad()
            ce = F.cross_entropy(head_logits(th, x), y, reduction="none")
            loss = (weights * ce).sum() / n + lam / 2 * (th**2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return th.detach()

    measure = lambda th: head_logits(th, x_test).softmax(1)[:, 1].mean()  # noqa: E731
    theta = train(torch.ones(n, dtype=torch.float64), torch.zeros(2, d + 1, dtype=torch.float64))
    th = theta.clone().requires_grad_(True)
    g_measure = torch.autograd.grad(measure(th), th)[0].flatten()
    predicted = influence_on_measure(
        g_measure, head_hessian(x, y, theta, damping=lam), head_per_sample_grads(x, y, theta), n=n
    )
    actual = []
    for k in range(n):
        w = torch.ones(n, dtype=torch.float64)
        w[k] = 0
        actual.append(float(measure(train(w, theta)) - measure(theta)))
    actual = torch.tensor(actual, dtype=torch.float64)
    corr = torch.corrcoef(torch.stack([predicted, actual]))[0, 1]
    assert corr > 0.98, float(corr)
    # first-order estimate: typical error a few %, high-leverage samples somewhat more
    assert (predicted - actual).abs().mean() < 0.1 * actual.abs().mean()
    assert (predicted - actual).abs().max() < 0.25 * actual.abs().max()


def test_fmd_unlearning_runs_and_reports_bias(toy_splits):
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=10, input_shape=toy_splits.train.input_shape)
    fit(model, toy_splits.train, config=TrainConfig(epochs=2, batch_size=64, seed=0), progress=False)
    res = fmd_unlearn(
        model, train=toy_splits.train, head="fc", pool_size=400, n_bias_pairs=200, n_val=200, top_k=100, damping=1e-2
    )
    assert res.info["bias_before"] > 0 and res.info["selected_scale"] in [t["scale"] for t in res.info["trace"]]
    assert res.model is not model
    cg = fmd_unlearn(
        model,
        train=toy_splits.train,
        head="fc",
        pool_size=400,
        n_bias_pairs=200,
        n_val=200,
        top_k=100,
        hessian="cg",
        cg_iters=300,
        damping=1e-2,
    )
    # the torch.func HVP path reproduces the exact last-layer influence ranking
    assert cg.info["harmful_samples"] == pytest.approx(res.info["harmful_samples"], abs=3)
    torch.testing.assert_close(cg.info["influence_min"], res.info["influence_min"], rtol=0.05, atol=1e-9)


def test_fmd_without_counterfactual_pairs_is_a_clear_error(toy_splits):
    model = build_model("mlp", num_classes=10, input_shape=toy_splits.train.input_shape)
    data = toy_splits.train.subset(torch.arange(200))
    data.render = None
    with pytest.raises(ConfigError, match="counterfactual"):
        fmd_unlearn(model, train=data, head="fc")
    method, _ = build_method("fmd", dataset="biased-toy")
    with pytest.raises(ConfigError, match="counterfactual"):
        fit(model, data, method=method, config=TrainConfig(epochs=1), progress=False)


def test_groupdro_weights_follow_the_worst_group():
    q = torch.full((4,), 0.25)
    for _ in range(50):
        q = update_group_weights(q, torch.tensor([0.1, 2.0, 0.5, 0.0]), eta=0.05)
    assert int(q.argmax()) == 1 and q[1] > 0.9 and torch.isclose(q.sum(), torch.tensor(1.0))
    g, n = group_ids(torch.tensor([0, 1]), torch.tensor([1, 1]), num_classes=2, num_bias=2)
    assert n == 4 and g.tolist() == [1, 3]
    g, n = group_ids(torch.tensor([0, 1]), torch.tensor([[0, 1], [0, 1]]), num_classes=2, num_bias=2)
    assert n == 8 and g.tolist() == [0 * 4 + 1, 1 * 4 + 2]


def test_groupdro_weighs_only_the_groups_present_in_the_training_set(toy_splits):
    from debiaskit.train import TrainContext

    data = toy_splits.train.subset(torch.nonzero(toy_splits.train.y < 5).flatten())  # classes 5-9 absent
    model = build_model("mlp", num_classes=10, input_shape=data.input_shape)
    ctx = TrainContext(
        model=model,
        train_data=data,
        config=TrainConfig(),
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        num_classes=10,
    )
    for balanced in (False, True):
        method, _ = build_method("groupdro", dataset="biased-toy", group_balanced=balanced)
        method.setup(ctx)
        present = method.group_counts > 0
        assert method.present_groups == int(present.sum()) < 50 and float(method.q[~present].sum()) == 0
        assert torch.allclose(method.q[present], torch.full((int(present.sum()),), 1 / int(present.sum())))
        order = method.epoch_indices(ctx)
        if not balanced:
            assert order is None  # the loop's plain shuffle
            continue
        g, _ = group_ids(data.y[order], data.b[order], num_classes=10, num_bias=10)
        drawn = torch.bincount(g, minlength=100)[present].float()
        # every non-empty group drawn about equally often, however rare in D^b (sizes here span 1 to ~140)
        assert len(order) == len(data) and drawn.min() > 0.4 * drawn.mean() and drawn.max() < 1.8 * drawn.mean()
        assert method.group_counts[present].max() > 20 * method.group_counts[present].min()


def test_groupdro_without_bias_labels_is_a_clear_error(toy_splits):
    model = build_model("mlp", num_classes=10, input_shape=toy_splits.train.input_shape)
    for name in ("groupdro", "irene"):
        method, _ = build_method(name, dataset="biased-toy")
        with pytest.raises(ConfigError, match="bias labels"):
            fit(
                model,
                toy_splits.train.without_bias_labels(),
                method=method,
                config=TrainConfig(epochs=1),
                progress=False,
            )


def test_jtt_and_dcwp_expose_their_mined_samples_without_reading_bias_labels(toy_splits):
    torch.manual_seed(0)
    for name, kw in (("jtt", {"id_epochs": 2}), ("dcwp", {"erm_epochs": 2, "mask_iters": 5})):
        model = build_model("mlp", num_classes=10, input_shape=toy_splits.train.input_shape)
        method, _ = build_method(name, dataset="biased-toy", **kw)
        assert method.conflict_flags() is None  # nothing mined before setup
        fit(
            model,
            toy_splits.train.without_bias_labels(),
            method=method,
            config=TrainConfig(epochs=1, batch_size=64, seed=0),
            progress=False,
        )
        flags = method.conflict_flags()
        assert torch.equal(flags.index, torch.arange(len(toy_splits.train))) and flags.flagged.any()
        assert method.conflict_flags(online=True) is None
        rep = flags.report(toy_splits.train)  # scored by whoever holds the true labels
        assert 0 <= rep["precision"] <= 1 and 0 <= rep["recall"] <= 1 and rep["true_conflicting"] > 0
        assert rep["mined"] == int(flags.flagged.sum())
    assert 0 <= method.state()["sparsity"] < 1


def test_unknown_hyper_parameter_is_rejected():
    with pytest.raises(ConfigError, match="no hyper-parameter"):
        build_method("lff", dataset="colored-mnist", lambda_up=3)


def test_fmd_beyond_the_last_layer_uses_torch_func_hvps(toy_splits):
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=10, input_shape=toy_splits.train.input_shape)
    fit(model, toy_splits.train, config=TrainConfig(epochs=1, batch_size=64, seed=0), progress=False)
    res = fmd_unlearn(
        model,
        train=toy_splits.train,
        head="fc",
        pool_size=200,
        n_bias_pairs=100,
        n_val=100,
        top_k=50,
        hessian="cg",
        layers=("feature.5", "fc"),
        cg_iters=20,
    )
    assert res.info["layers"] == ["feature.5", "fc"] and res.info["harmful_samples"] > 0
    changed = [n for n, p in res.model.named_parameters() if not torch.equal(p, dict(model.named_parameters())[n])]
    assert set(changed) <= {"feature.5.weight", "feature.5.bias", "fc.weight", "fc.bias"}
    with pytest.raises(ConfigError, match="exact Hessian"):
        fmd_unlearn(model, train=toy_splits.train, head="fc", layers=("feature.5", "fc"))
