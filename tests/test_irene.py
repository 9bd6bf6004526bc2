"""IRENE's mechanics: which gradient goes where, and the numerics of its MI term."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from debiaskit.audit import normalized_mutual_information
from debiaskit.data import Batch, iterate_batches
from debiaskit.errors import ConfigError
from debiaskit.methods import build_method
from debiaskit.methods.irene import IRENE
from debiaskit.models import build_model
from debiaskit.train import TrainConfig, TrainContext


def _context(splits, *, optimizer="adam", seed=0):
    torch.manual_seed(seed)
    model = build_model("mlp", num_classes=10, input_shape=splits.train.input_shape)
    config = TrainConfig(
        epochs=1, batch_size=32, lr=0.05 if optimizer == "sgd" else 1e-3, optimizer=optimizer, seed=seed
    )
    return TrainContext(
        model=model,
        train_data=splits.train,
        config=config,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(seed),
        num_classes=10,
        head="fc",
    )


def _batch(splits, n=32):
    return next(iter(iterate_batches(splits.train, batch_size=n)))


def _one_step(splits, *, gamma, optimizer="adam"):
    """Model and heads after one IRENE step from a fixed initialisation."""
    ctx = _context(splits, optimizer=optimizer)
    method = IRENE(gamma=gamma)
    torch.manual_seed(1)
    method.setup(ctx)
    method.training_step(_batch(splits), ctx)
    return ctx.model, method.heads


def _naive_mi(probs, b, num_bias, eps=1e-15):
    """The spec's formula written literally (joint / marg), as the public code and audit compute it."""
    onehot = F.one_hot(b, num_bias).to(probs.dtype)
    joint = torch.clamp(onehot.T @ probs, min=eps) / probs.shape[0]
    marg = torch.outer(joint.sum(1), joint.sum(0))
    return (joint * torch.log(joint / marg)).sum() / math.log(num_bias)


def _saturated_logits():
    """A saturated privacy head on a batch where bias class 2 is absent and column 2 is almost empty
    (p ~ 1e-12): r_2 * c_2 ~ 1e-28, whose square underflows in float32. This is the state in which the
    old IRENE produced NaN weights at the last (32-sample) step of biased-mnist."""
    b = torch.tensor([0, 0, 0, 1, 1, 1, 3, 3])
    logits = torch.full((8, 4), -200.0)
    logits[torch.arange(8), b] = 10.0
    logits[:, 2] = 10.0 - 27.6
    return logits, b


def test_stable_mi_equals_the_spec_formula():
    torch.manual_seed(0)
    for n, k in ((64, 10), (7, 3), (256, 2)):
        probs = torch.randn(n, k, dtype=torch.float64).softmax(1)
        b = torch.randint(0, k, (n,))
        torch.testing.assert_close(normalized_mutual_information(probs, b, k), _naive_mi(probs, b, k))
    # independence -> 0; a perfect read-out of uniformly spread b -> 1
    b = torch.arange(10).repeat(5)
    assert abs(float(normalized_mutual_information(torch.full((50, 10), 0.1), b, 10))) < 1e-6
    assert float(normalized_mutual_information(F.one_hot(b, 10).float(), b, 10)) == pytest.approx(1.0, abs=1e-4)


def test_stable_mi_gradient_is_finite_where_the_literal_formula_gives_nan():
    logits, b = _saturated_logits()
    naive = logits.clone().requires_grad_()
    _naive_mi(naive.softmax(1), b, 4).backward()
    assert not torch.isfinite(naive.grad).all()  # the case does reproduce the old failure
    stable = logits.clone().requires_grad_()
    mi = normalized_mutual_information(stable.softmax(1), b, 4)
    mi.backward()
    assert torch.isfinite(mi) and torch.isfinite(stable.grad).all()
    assert float(mi.detach()) == pytest.approx(float(_naive_mi(logits.softmax(1), b, 4)), rel=1e-5)


def test_training_step_stays_finite_with_a_saturated_head_and_an_absent_bias_class(toy_splits):
    ctx = _context(toy_splits)
    method = IRENE(gamma=1.0)
    method.setup(ctx)
    logits, _ = _saturated_logits()
    with torch.no_grad():  # a head that has blown up: its output ignores z and sits at _saturated_logits' row
        head = method.heads[0]
        head.weight.zero_()
        head.bias.fill_(-200.0)
        head.bias[[0, 1, 3]] = 10.0
        head.bias[2] = 10.0 - 27.6
    batch = _batch(toy_splits, n=64)
    keep = torch.isin(batch.b, torch.tensor([0, 1, 3]))  # bias classes 2, 4.. absent from the batch
    batch = Batch(batch.x[keep], batch.y[keep], batch.b[keep], batch.index[keep])
    stats = method.training_step(batch, ctx)
    assert all(math.isfinite(v) for v in stats.values())
    assert all(torch.isfinite(p).all() for p in ctx.model.parameters())
    assert all(torch.isfinite(p).all() for p in method.heads.parameters())


def test_mi_gradient_never_reaches_the_privacy_head(toy_splits):
    # the heads' update must not depend on gamma: only their own CE on detached features moves them
    _, heads0 = _one_step(toy_splits, gamma=0.0)
    _, heads10 = _one_step(toy_splits, gamma=10.0)
    for p0, p10 in zip(heads0.parameters(), heads10.parameters()):
        torch.testing.assert_close(p0, p10, rtol=0, atol=0)
    # ... while the encoder does receive it
    model0, _ = _one_step(toy_splits, gamma=0.0, optimizer="sgd")
    model10, _ = _one_step(toy_splits, gamma=10.0, optimizer="sgd")
    assert not torch.equal(model0.feature[1].weight, model10.feature[1].weight)
    # and directly: the MI term leaves no gradient on the heads
    ctx = _context(toy_splits)
    method = IRENE(gamma=1.0)
    method.setup(ctx)
    z = torch.randn(16, method.heads[0].in_features, requires_grad=True)
    method._mi(z, torch.randint(0, 10, (16, 1))).backward()
    assert all(p.grad is None for p in method.heads.parameters()) and z.grad.abs().sum() > 0


def test_encoder_gets_no_gradient_from_the_privacy_head_ce(toy_splits):
    # with gamma = 0, an IRENE step is exactly a plain CE step (SGD: the update is proportional to the
    # gradient, so any leak of the head's CE into the encoder would show)
    model, _ = _one_step(toy_splits, gamma=0.0, optimizer="sgd")
    ctx = _context(toy_splits, optimizer="sgd")
    reference = copy.deepcopy(ctx.model)
    opt = torch.optim.SGD(reference.parameters(), lr=ctx.config.lr, momentum=0.9)
    batch = _batch(toy_splits)
    F.cross_entropy(reference(batch.x), batch.y).backward()
    opt.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, msg=name)


def test_irene_rejects_bad_hyper_parameters():
    for kw in ({"gamma": -1}, {"head_lr": 0}, {"head_optimizer": "rmsprop"}, {"head_steps": 0}):
        with pytest.raises(ConfigError):
            build_method("irene", dataset="biased-mnist", **kw)


def test_one_privacy_head_per_attribute_as_wide_as_its_values():
    """Two attributes, binary and 5 values: heads of 2 and 5 outputs, each MI normalised by its own log k."""
    from torch.utils.data import TensorDataset

    from debiaskit.data import as_bias_data

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 6, generator=g), torch.randint(0, 3, (64,), generator=g)
    b = torch.stack([torch.randint(0, 2, (64,), generator=g), torch.randint(0, 5, (64,), generator=g)], 1)
    data = as_bias_data(TensorDataset(x, y, b))
    model = build_model("mlp", num_classes=3, input_shape=(6,))
    ctx = TrainContext(
        model=model,
        train_data=data,
        config=TrainConfig(epochs=1, batch_size=32),
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        num_classes=3,
        head="fc",
    )
    method = IRENE(gamma=1.0)
    method.setup(ctx)
    assert [h.out_features for h in method.heads] == [2, 5]
    record = method.training_step(next(iter(iterate_batches(data, batch_size=32))), ctx)
    assert math.isfinite(record["mi"])
