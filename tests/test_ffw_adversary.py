"""FFW's bias term beyond the paper: probe-free dependence measures, stronger probes, the epoch budget."""

from __future__ import annotations

import math

import pytest
import torch

from debiaskit.audit import probe_suite, readable
from debiaskit.errors import ConfigError
from debiaskit.ffw import FFWConfig
from debiaskit.ffw._adversary import (
    KernelDependence,
    LinearDependence,
    class_mean_distance,
    cross_between,
    lda_readability,
)


def _shifted(n: int, *, shift: float, seed: int, d: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian features; bias class k moves feature 0 by shift * k."""
    g = torch.Generator().manual_seed(seed)
    b = torch.randint(0, 3, (n,), generator=g)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    z[:, 0] += shift * b
    return z, b


def test_the_linear_term_is_unbiased_on_independent_features_and_exact_on_a_known_shift():
    # independent b: batch estimates average to 0 (a plain plug-in estimate would sit at about d * K / n)
    est = []
    for seed in range(200):
        z, b = _shifted(64, shift=0.0, seed=seed)
        est.append(
            float(
                class_mean_distance(
                    z, b, 3, mean=torch.zeros(8, dtype=torch.float64), chol=torch.eye(8, dtype=torch.float64)
                )
            )
        )
    assert abs(sum(est) / len(est)) < 0.01
    # known shift: sum_k p_k (k - 1)^2 shift^2 / (K - 1) with p_k = 1/3 and unit whitening
    z, b = _shifted(200_000, shift=1.0, seed=0)
    value = float(class_mean_distance(z, b, 3, mean=z.mean(0), chol=torch.eye(8, dtype=torch.float64)))
    assert value == pytest.approx((1 / 3) * 2 / 2, rel=0.02)


def test_the_cross_estimate_against_remembered_batches_is_unbiased_and_less_noisy():
    cross, own = [], []
    for seed in range(100):
        z, b = _shifted(64, shift=1.0, seed=seed)
        ref, ref_b = _shifted(2000, shift=1.0, seed=1000 + seed)
        cross.append(float(cross_between(z, b, ref, ref_b, 3)))
        own.append(float(class_mean_distance(z, b, 3, mean=torch.zeros(8, dtype=torch.float64), chol=None)))
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    spread = lambda v: (sum((x - mean(v)) ** 2 for x in v) / len(v)) ** 0.5  # noqa: E731
    assert mean(cross) == pytest.approx(1 / 3, abs=0.02) and mean(own) == pytest.approx(1 / 3, abs=0.05)
    assert spread(cross) < 0.6 * spread(own)
    # conditioned on a target that the bias only shifts within one of its groups: seen when given, not without
    g = torch.Generator().manual_seed(7)
    y, b = torch.randint(0, 2, (4000,), generator=g), torch.randint(0, 2, (4000,), generator=g)
    z = torch.randn(4000, 4, generator=g, dtype=torch.float64)
    z[:, 0] += torch.where(y == 0, 1.0, -1.0) * (b * 2 - 1)  # +-1 by colour, opposite signs per digit: cancels
    half = slice(0, 2000), slice(2000, 4000)
    marginal = float(cross_between(z[half[0]], b[half[0]], z[half[1]], b[half[1]], 2))
    given = float(
        cross_between(z[half[0]], b[half[0]], z[half[1]], b[half[1]], 2, given=y[half[0]], ref_given=y[half[1]])
    )
    assert abs(marginal) < 0.05 and given > 0.8


def test_the_split_measures_do_not_change_when_the_features_are_rescaled():
    z, b = _shifted(3000, shift=0.5, seed=1)
    k = KernelDependence(8, seed=0)
    k.fit(z)
    # a feature's own scale does not matter (down to 0.1 x the mean scale, where a floor takes over) ...
    for scale in (torch.logspace(-0.5, 0.5, 8, dtype=torch.float64), 1e-3, 1e3):
        assert lda_readability(z * scale, b, 3) == pytest.approx(lda_readability(z, b, 3), rel=1e-6)
        assert k.measure(z * scale, b, 3) == pytest.approx(k.measure(z, b, 3), rel=1e-4)
    # ... but a feature damped far below the others counts less: the gates are rewarded for switching it off
    damped = z * torch.tensor([1e-3] + [1.0] * 7, dtype=torch.float64)
    assert lda_readability(damped, b, 3) < 0.1 * lda_readability(z, b, 3)


def test_the_kernel_term_sees_a_bias_that_has_no_linear_trace():
    # bias = sign of feature 0 times feature 1 (XOR): equal class means, different distributions
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4000, 4, generator=g, dtype=torch.float64)
    b = ((z[:, 0] * z[:, 1]) > 0).long()
    lin = LinearDependence(4, ridge=1.0)
    ker = KernelDependence(4, ridge=1.0, seed=0)
    lin.fit(z)
    ker.fit(z)
    assert lin.measure(z, b, 2) < 0.01
    assert ker.measure(z, b, 2) > 0.1


def test_the_terms_are_differentiable_and_finite_with_dead_features():
    z, b = _shifted(256, shift=1.0, seed=2)
    z[:, 3] = 0.0  # a pruned unit: constant zero
    for adv in (LinearDependence(8, ridge=1.0), KernelDependence(8, ridge=1.0)):
        adv.fit(z)
        zz = z.clone().requires_grad_()
        value = adv.penalty(zz, b, 3)
        value.backward()
        assert math.isfinite(float(value.detach())) and torch.isfinite(zz.grad).all() and zz.grad.abs().sum() > 0
        adv.observe(z)


def test_stronger_probes_read_what_the_weak_one_misses():
    g = torch.Generator().manual_seed(0)
    n = 3000
    b = torch.randint(0, 4, (n,), generator=g)
    noise = torch.randn(n, 16, generator=g)
    tiny = noise.clone()
    tiny[:, 0] += 2.0 * b  # a clear linear signal ...
    tiny = tiny * 1e-3  # ... on features a weak SGD probe barely moves on
    split = lambda t, c: (t[:2000], c[:2000], t[2000:2500], c[2000:2500], t[2500:], c[2500:])  # noqa: E731
    weak = probe_suite(*split(tiny, b), num_bias=4, probes=("sgd5", "linear"))
    assert not readable(weak["sgd5"], 4) and weak["linear"] > 0.6  # Bayes accuracy about 0.7
    xor = (noise[:, 0] * noise[:, 1] > 0).long()  # same class means, no linear trace
    nonlinear = probe_suite(*split(noise, xor), num_bias=2, probes=("linear", "mlp"))
    assert nonlinear["mlp"] > 0.85 and not readable(nonlinear["linear"], 2)
    with pytest.raises(ValueError, match="unknown probe"):
        probe_suite(*split(tiny, b), num_bias=4, probes=("oracle",))


def test_the_epoch_budget_is_spread_over_the_levels_down_to_tau_final():
    cfg = FFWConfig(max_epochs=20, tau_final=2.0**-9, max_epochs_per_level=10)
    assert cfg.planned_levels() == 10 and cfg.level_cap() == 2
    assert FFWConfig(max_epochs=5, tau_final=2.0**-9).level_cap() == 1
    assert FFWConfig(max_epochs=None, max_epochs_per_level=7).level_cap() == 7
    for bad in (dict(max_epochs=0), dict(tau_final=2.0), dict(adversary="oracle"), dict(selection="test")):
        with pytest.raises(ConfigError):
            FFWConfig(**bad)


def test_the_search_stays_within_its_budget_and_can_refine_after_agreement(monkeypatch):
    from debiaskit.ffw import _search, find_fantastic_weights
    from test_ffw_search import FAST, Planted, _planted

    train, val = _planted(600, rho=0.5, seed=1, name="t"), _planted(300, rho=0.5, seed=2, name="v")
    fast = {
        **{k: v for k, v in FAST.items() if k != "max_epochs"},
        "max_levels": 20,
        "max_epochs_per_level": 10,
        "patience": 100,
        "no_harm": False,
    }  # the schedule, not the guard (test_ffw_no_harm.py)
    # never plateaus (patience 100), never agrees (forced below): the budget alone moves tau, every epoch, and stops
    end_level = _search._Search.end_level
    with monkeypatch.context() as m:
        m.setattr(_search._Search, "end_level", lambda self, soft, hard: end_level(self, {**soft, "task": -1.0}, hard))
        tight = find_fantastic_weights(Planted(), train=train, val=val, max_epochs=3, **fast)
    assert len(tight.history) - 1 == 3 and [h["level"] for h in tight.history[1:]] == [0, 1, 2]
    assert "budget max_epochs=3" in tight.stop_reason
    refined = find_fantastic_weights(Planted(), train=train, val=val, max_epochs=12, refine_patience=1, **fast)
    assert "refined at that tau" in refined.stop_reason and len(refined.history) - 1 <= 12
    epochs_at_agreement = int(refined.stop_reason.split("(epoch ")[1].split(")")[0])
    assert len(refined.history) - 1 >= epochs_at_agreement + 1


def test_the_cli_defaults_are_the_library_defaults():
    from debiaskit.cli.cmd_ffw import _D

    cfg = FFWConfig()
    for name in (
        "gamma",
        "tau_init",
        "tau_decay",
        "max_epochs",
        "max_levels",
        "max_epochs_per_level",
        "patience",
        "gate_lr",
        "adversary",
        "selection",
        "erase",
        "refine_patience",
        "refit_head",
        "tune_epochs",
        "tune_gamma",
        "tune_lr",
        "tune_schedule",
        "tune_batch_size",
        "tune_shift",
    ):
        assert getattr(_D, name) == getattr(cfg, name), name
    assert (
        cfg.adversary == "lda" and cfg.condition_on_target and cfg.memory == 8
    )  # chosen on D^u_val (docs/design/ffw-defaults.md)
    assert FFWConfig(adversary="head").condition_on_target is False


def _cross_between_by_definition(a, b, ref, ref_b, num_bias, given=None, ref_given=None):
    """The term written out group by group and class by class (what the vectorised version must equal)."""
    groups = [None] if given is None else torch.unique(given).tolist()
    total = torch.zeros((), dtype=a.dtype)
    for g in groups:
        sel = slice(None) if g is None else given == g
        rsel = slice(None) if g is None else ref_given == g
        ag, bg, rg, rbg = a[sel], b[sel], ref[rsel], ref_b[rsel]
        if len(ag) == 0 or len(rg) == 0:
            continue
        inner = torch.zeros((), dtype=a.dtype)
        for k in range(num_bias):
            ak, rk = ag[bg == k], rg[rbg == k]
            if len(ak) and len(rk):
                inner = inner + len(ak) / len(ag) * ((ak.mean(0) - ag.mean(0)) * (rk.mean(0) - rg.mean(0))).sum()
        total = total + len(ag) / len(a) * inner
    return total / (num_bias - 1)


@pytest.mark.parametrize("conditional", [False, True])
def test_cross_between_over_all_cells_at_once_equals_its_definition_and_whitens_the_means_only(conditional):
    g = torch.Generator().manual_seed(0)
    z, ref = torch.randn(60, 5, generator=g, dtype=torch.float64), torch.randn(200, 5, generator=g, dtype=torch.float64)
    b, ref_b = torch.randint(0, 3, (60,), generator=g), torch.randint(0, 3, (200,), generator=g)
    y, ref_y = torch.randint(0, 4, (60,), generator=g), torch.randint(0, 4, (200,), generator=g)
    y[y == 3] = 7  # a group label the reference lacks, and labels that are not 0..G-1
    b[(y == 0) & (b == 2)] = 1  # a (group, class) cell empty in the batch only
    kw = dict(given=y, ref_given=ref_y) if conditional else {}
    lda = LinearDependence(5, ridge=0.5)
    lda.fit(torch.randn(100, 5, generator=g, dtype=torch.float64) * torch.tensor([1.0, 3, 0.5, 2, 1]))
    expected = _cross_between_by_definition(lda.whiten(z), b, lda.whiten(ref), ref_b, 3, **kw)
    got = cross_between(z, b, ref, ref_b, 3, linear=lda.whiten_linear, **kw)
    assert float(expected) != 0 and torch.allclose(got, expected, rtol=1e-10, atol=1e-12)
    unwhitened = cross_between(z, b, ref, ref_b, 3, **kw)
    assert torch.allclose(unwhitened, _cross_between_by_definition(z, b, ref, ref_b, 3, **kw))


def test_cross_between_of_an_empty_side_is_zero():
    z, b, y = torch.randn(6, 3, dtype=torch.float64), torch.tensor([0, 1, 0, 1, 0, 1]), torch.tensor([0, 1, 2, 0, 1, 2])
    empty, none = torch.zeros(0, 3, dtype=torch.float64), torch.zeros(0, dtype=torch.long)
    assert float(cross_between(empty, none, z, b, 2, given=none, ref_given=y)) == 0.0
    assert float(cross_between(z, b, empty, none, 2, given=y, ref_given=none)) == 0.0


def test_the_whitening_follows_the_batch_device_and_dtype():
    """The running statistics live on the CPU; a GPU search's features must be whitened where they are (a "meta"
    batch stands in for a GPU one here: mixing it with CPU tensors raises, as a CUDA batch would)."""
    lda = LinearDependence(4, ridge=1.0)
    lda.fit(torch.randn(50, 4))
    z = torch.randn(8, 4, device="meta")
    assert lda.whiten(z).device.type == "meta" and lda.whiten_linear(z).dtype == torch.float32
