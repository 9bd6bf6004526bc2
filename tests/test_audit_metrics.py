"""Audit metrics against hand-computed cases; MI limits; the privacy head reads a planted bias."""

from __future__ import annotations

import math

import pytest
import torch

from debiaskit.audit import group_metrics, normalized_mutual_information, probe_bias, train_privacy_head
from debiaskit.errors import DataError

# 10 samples, 2 classes, 2 bias values. Groups (y, b) and correctness by hand:
#   (0,0): samples 0,1,2 -> correct 1,1,0 -> 2/3      (0,1): sample 3 -> wrong -> 0/1
#   (1,0): samples 8,9   -> correct 0,1   -> 1/2      (1,1): samples 4..7 -> 1,1,0,1 -> 3/4
Y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
B = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 0, 0])
P = torch.tensor([0, 0, 1, 1, 1, 1, 0, 1, 0, 1])


def test_group_matrix_and_both_averaging_conventions():
    g = group_metrics(P, Y, B, num_classes=2, num_bias=2, aligned=B == Y)
    assert g.group_counts == [[3, 1], [2, 4]]
    expected = [[2 / 3, 0.0], [1 / 2, 3 / 4]]
    for row, erow in zip(g.group_accuracy, expected):
        assert row == pytest.approx(erow)
    assert g.accuracy == pytest.approx(6 / 10)  # sample-weighted
    assert g.mean_group_accuracy == pytest.approx((2 / 3 + 0 + 1 / 2 + 3 / 4) / 4)  # group-weighted
    assert g.worst_group_accuracy == 0.0 and g.worst_group == (0, 1)
    # aligned = {0,1,2,4,5,6,7}: correct 1,1,0,1,1,0,1 -> 5/7; conflicting = {3,8,9}: 0,0,1 -> 1/3
    assert (g.aligned_count, g.conflicting_count) == (7, 3)
    assert g.aligned_accuracy == pytest.approx(5 / 7) and g.conflicting_accuracy == pytest.approx(1 / 3)


def test_empty_groups_are_nan_and_ignored():
    g = group_metrics(P, Y, B, num_classes=2, num_bias=3)
    assert g.group_counts[0][2] == 0 and math.isnan(g.group_accuracy[0][2]) and math.isnan(g.group_accuracy[1][2])
    assert g.mean_group_accuracy == pytest.approx((2 / 3 + 0 + 1 / 2 + 3 / 4) / 4)
    assert g.worst_group == (0, 1) and g.aligned_accuracy is None
    g = group_metrics(Y, Y, B, num_classes=2, num_bias=2, aligned=torch.ones(10, dtype=torch.bool))
    assert g.worst_group_accuracy == 1.0 and math.isnan(g.conflicting_accuracy) and g.conflicting_count == 0


def test_worst_group_differs_from_mean_when_groups_are_unbalanced():
    # 98 aligned samples all right, 2 conflicting all wrong: accuracy 0.98, mean group 0.5, worst 0
    y = torch.tensor([0] * 49 + [1] * 49 + [0, 1])
    b = torch.tensor([0] * 49 + [1] * 49 + [1, 0])
    pred = torch.tensor([0] * 49 + [1] * 49 + [1, 0])
    g = group_metrics(pred, y, b, num_classes=2, num_bias=2, aligned=y == b)
    assert g.accuracy == pytest.approx(0.98) and g.mean_group_accuracy == pytest.approx(0.5)
    assert g.worst_group_accuracy == 0.0 and g.conflicting_accuracy == 0.0 and g.aligned_accuracy == 1.0


def test_mi_zero_for_independent_predictions():
    b = torch.arange(4).repeat(25)
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4]).repeat(100, 1)  # the same prediction whatever b is
    assert float(normalized_mutual_information(probs, b, 4)) == pytest.approx(0.0, abs=1e-6)
    # predictions that vary, but independently of b (product design) also give 0
    probs = torch.nn.functional.one_hot(torch.arange(4).repeat_interleave(4).repeat(1), 4).float()
    b = torch.arange(4).repeat(4)
    assert float(normalized_mutual_information(probs, b, 4)) == pytest.approx(0.0, abs=1e-6)


def test_mi_one_for_perfectly_informative_predictions():
    b = torch.arange(5).repeat(20)
    probs = torch.nn.functional.one_hot(b, 5).float()
    assert float(normalized_mutual_information(probs, b, 5)) == pytest.approx(1.0, abs=1e-6)
    # a permutation of the labels is just as informative
    probs = torch.nn.functional.one_hot((b + 2) % 5, 5).float()
    assert float(normalized_mutual_information(probs, b, 5)) == pytest.approx(1.0, abs=1e-6)


def test_mi_is_differentiable_and_in_between():
    b = torch.arange(2).repeat(50)
    logits = torch.zeros(100, 2, requires_grad=True)
    with torch.no_grad():
        logits[:, 0] += (b == 0).float()  # mildly informative
    mi = normalized_mutual_information(logits.softmax(1), b, 2)
    assert 0.0 < float(mi.detach()) < 1.0
    mi.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="at least two bias classes"):
        normalized_mutual_information(torch.ones(3, 1), torch.zeros(3), 1)


def _features(n, planted, seed):
    g = torch.Generator().manual_seed(seed)
    b = torch.randint(0, 4, (n,), generator=g)
    z = torch.randn(n, 8, generator=g)
    if planted:
        z[:, :4] += 3.0 * torch.nn.functional.one_hot(b, 4)
    return z, b


@pytest.mark.parametrize("planted", [True, False])
def test_privacy_head_reads_planted_bias(planted):
    tr, va, ev = _features(800, planted, 0), _features(200, planted, 1), _features(400, planted, 2)
    res = probe_bias(*tr, *va, *ev, num_bias=4, seed=0, lr=1e-2, max_epochs=40)
    if planted:
        assert res.bias_extractability > 0.9 and res.mutual_information > 0.3  # soft predictions: below 1
    else:
        assert res.bias_extractability < 0.4 and res.mutual_information < 0.05  # chance is 0.25
    assert res.head.in_features == 8 and res.head.out_features == 4


def test_privacy_head_is_selected_on_validation_and_deterministic():
    tr, va = _features(400, True, 0), _features(100, True, 1)
    h1, val1, ep1 = train_privacy_head(*tr, *va, num_bias=4, seed=3, max_epochs=15)
    h2, val2, ep2 = train_privacy_head(*tr, *va, num_bias=4, seed=3, max_epochs=15)
    assert (val1, ep1) == (val2, ep2) and torch.equal(h1.weight, h2.weight)
    with torch.no_grad():
        assert float((h1(va[0]).argmax(1) == va[1]).float().mean()) == pytest.approx(val1)
    with pytest.raises(DataError, match="at least two bias classes in its train data"):
        train_privacy_head(tr[0], torch.zeros(400, dtype=torch.long), *va, num_bias=4)
