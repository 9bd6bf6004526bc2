"""FFW gates and export: exact equality at init, hard masks vs baked/pruned exports, gradient routing."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import randomise_batchnorm
from debiaskit.errors import ConfigError, ModelError
from debiaskit.ffw import (
    apply_unstructured_masks,
    count_parameters,
    ffw_step,
    gate_value,
    install_gates,
    prune_structured,
    resize_like,
)
from debiaskit.ffw._gates import freeze
from debiaskit.models import build_model, forward_with_bottleneck


def _model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    shape = (3, 28, 28)
    m = build_model(name, num_classes=10, input_shape=shape)
    return randomise_batchnorm(m)


def _x(n: int = 8) -> torch.Tensor:
    return torch.randn(n, 3, 28, 28, generator=torch.Generator().manual_seed(1))


def test_gate_function_values_and_unclamped_derivative():
    m = torch.tensor([-2.0, -0.1, 0.0, 0.3, 5.0], requires_grad=True)
    tau = 0.5
    g = gate_value(m, tau)
    expected = torch.clamp(2 * torch.sigmoid(m.detach() / tau), max=1.0)
    assert torch.equal(g, expected)
    assert g[2].item() == 1.0 and g[3].item() == 1.0 and g[4].item() == 1.0  # exactly 1 for m >= 0
    g.sum().backward()
    s = torch.sigmoid(m.detach() / tau)
    assert torch.allclose(m.grad, 2 * s * (1 - s) / tau)
    assert m.grad[3] > 0  # a gate sitting at 1 still gets gradient (straight-through)
    assert torch.equal(gate_value(m.detach(), tau, hard=True), torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0]))


@pytest.mark.parametrize(
    "name,mode,include_head",
    [
        ("simple-conv-small", "unstructured", False),
        ("simple-conv-small", "unstructured", True),
        ("simple-conv-small", "structured", False),
        ("mlp", "unstructured", False),
        ("mlp", "structured", False),
    ],
)
def test_gated_model_equals_vanilla_bit_for_bit_at_init(name, mode, include_head):
    vanilla = _model(name)
    gated_net = copy.deepcopy(vanilla)
    freeze(gated_net)
    x = _x()
    gm = install_gates(gated_net, mode=mode, head="fc", example=x[:2], include_head=include_head)
    assert len(gm.gates) >= 3
    with torch.no_grad():
        assert torch.equal(gated_net(x), vanilla(x))
    if include_head:
        assert "fc" in gm.gates
    gm.state.hard = True
    with torch.no_grad():
        assert torch.equal(gated_net(x), vanilla(x))  # all m = 0 -> all kept


@pytest.mark.parametrize("name", ["simple-conv-small", "mlp"])
def test_unstructured_hard_masks_equal_baked_export(name):
    vanilla = _model(name)
    net = copy.deepcopy(vanilla)
    freeze(net)
    x = _x()
    gm = install_gates(net, mode="unstructured", head="fc", example=x[:2], include_head=True)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for g in gm.gates.values():  # gates well away from 0 so that tiny tau reaches the hard limit
            g.m.copy_(torch.randn(g.m.shape, generator=gen).sign() * (0.01 + torch.rand(g.m.shape, generator=gen)))
    masks = gm.hard_masks()
    baked = apply_unstructured_masks(vanilla, {f"{k}.weight": v for k, v in masks.items()})
    gm.state.hard = True
    with torch.no_grad():
        hard_out = net(x)
        assert torch.equal(hard_out, baked(x))
        gm.state.hard, gm.state.tau = False, 1e-6
        assert torch.equal(net(x), hard_out)  # tau -> 0 gives the hard mask
    assert isinstance(baked.fc, nn.Linear) and not hasattr(baked.fc, "parametrizations")
    frac = sum(int((m == 0).sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert 0.3 < frac < 0.7
    assert all(torch.equal(p, q) for p, q in zip(vanilla.state_dict().values(), _model(name).state_dict().values()))


@pytest.mark.parametrize("name", ["simple-conv-small", "mlp"])
def test_structured_export_is_smaller_and_equals_masked_model(name):
    vanilla = _model(name)
    net = copy.deepcopy(vanilla)
    freeze(net)
    x = _x()
    gm = install_gates(net, mode="structured", head="fc", example=x[:2])
    gen = torch.Generator().manual_seed(5)
    layers = list(gm.gates)
    with torch.no_grad():
        for g in gm.gates.values():
            g.m.copy_(torch.randn(g.m.shape, generator=gen))
        gm.gates[layers[1]].m.fill_(-1.0)  # a whole layer pruned: the export keeps one dead unit
    gm.state.hard = True
    masks = gm.hard_masks()
    pruned, shapes = prune_structured(vanilla, masks, head="fc", example=x[:2])
    with torch.no_grad():
        masked_out = net(x)
        assert torch.allclose(pruned(x), masked_out, atol=1e-5, rtol=1e-5)
    assert count_parameters(pruned) < 0.8 * count_parameters(vanilla)
    # the export loads into a freshly built zoo model resized from ``shapes``: plain torch modules only
    fresh = resize_like(build_model(name, num_classes=10, input_shape=(3, 28, 28)), shapes).eval()
    fresh.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(x), pruned(x))
    assert not any(type(m).__module__.startswith("debiaskit") for m in pruned.modules() if m is not pruned)


def test_structured_gates_sit_after_the_activation():
    net = _model("simple-conv-small")
    freeze(net)
    gm = install_gates(net, mode="structured", head="fc", example=_x(2))
    assert gm.units == {
        "extracter.0": ("extracter.2",),
        "extracter.3": ("extracter.5",),
        "extracter.6": ("extracter.8",),
        "extracter.9": ("extracter.11",),
    }


def _step_setup():
    net = _model("mlp")
    freeze(net)
    x = _x(32)
    gm = install_gates(net, mode="unstructured", head="fc", example=x[:2])
    with torch.no_grad():
        for g in gm.gates.values():
            g.m.uniform_(-0.5, 0.5)
    torch.manual_seed(0)
    heads = [nn.Linear(100, 10)]
    y = torch.randint(0, 10, (32,))
    b = torch.randint(0, 10, (32,))
    return net, gm, heads, x, y, b


def test_mi_term_gives_no_gradient_to_the_privacy_head():
    net, gm, heads, x, y, b = _step_setup()
    ffw_step(net, "fc", gm.gate_parameters(), heads, x, y, b, gamma=10.0, num_bias=10)
    with torch.no_grad():
        _, z = forward_with_bottleneck(net, x, "fc")
    expected = torch.autograd.grad(F.cross_entropy(heads[0](z), b), list(heads[0].parameters()))
    for p, e in zip(heads[0].parameters(), expected):
        assert torch.allclose(p.grad, e, atol=1e-7)  # only its own CE: the MI term's share was discarded


def test_privacy_head_sends_no_gradient_into_the_encoder():
    from debiaskit.audit import normalized_mutual_information

    net, gm, heads, x, y, b = _step_setup()
    ffw_step(net, "fc", gm.gate_parameters(), heads, x, y, b, gamma=10.0, num_bias=10)
    got = [p.grad.clone() for p in gm.gate_parameters()]
    logits, z = forward_with_bottleneck(net, x, "fc")
    j = F.cross_entropy(logits, y) + 10.0 * normalized_mutual_information(heads[0](z).softmax(1), b, 10)
    expected = torch.autograd.grad(j, gm.gate_parameters())
    for g, e in zip(got, expected):
        assert torch.allclose(g, e, atol=1e-6)  # the head's CE added nothing to the gates
    assert any(float(g.abs().sum()) > 0 for g in got)
    frozen = [p for n, p in net.named_parameters() if not n.endswith(".m")]
    assert frozen and all(p.grad is None and not p.requires_grad for p in frozen)


class _Residual(nn.Module):
    head_name = "fc"

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.relu(self.conv(x)) + x), 1))


def test_structured_refuses_models_without_an_exactly_removable_unit_and_head_gating():
    # the only conv's output is added to the model's input: no unit of it can be removed exactly
    with pytest.raises(ModelError, match="nothing to gate.*conv: not gated: it is .*model's input.*unstructured"):
        install_gates(_Residual(), mode="structured", head="fc", example=_x(2))
    with pytest.raises(ConfigError, match="include_head"):
        install_gates(_model("mlp"), mode="structured", head="fc", example=_x(2), include_head=True)
    gm = install_gates(_Residual(), mode="unstructured", head="fc", example=_x(2))  # unstructured is fine
    assert list(gm.gates) == ["conv"]


def _naive_mi(probs, b, num_bias, eps=1e-15):
    """The textbook form sum(joint * log(joint / outer(r, c))): its backward overflows (see below)."""
    import math

    onehot = F.one_hot(b, num_bias).to(probs.dtype)
    joint = torch.clamp(onehot.T @ probs, min=eps) / probs.shape[0]
    return (joint * torch.log(joint / torch.outer(joint.sum(1), joint.sum(0)))).sum() / math.log(num_bias)


def test_mi_term_equals_the_audit_mi_and_keeps_finite_gradients_when_a_bias_class_is_missing():
    from debiaskit.audit import normalized_mutual_information
    from debiaskit.ffw._step import mutual_information

    gen = torch.Generator().manual_seed(0)
    for scale in (0.1, 3.0, 20.0):
        probs = (scale * torch.randn(64, 10, generator=gen)).softmax(1)
        b = torch.randint(0, 10, (64,), generator=gen)
        assert abs(float(mutual_information(probs, b, 10)) - float(normalized_mutual_information(probs, b, 10))) < 1e-6
    # bias class 9 absent from the batch + a confident privacy head (logit gap 30): the naive form's
    # backward computes joint / marg**2 with marg ~ 1e-33 and returns NaN (the NaN seen in FFW runs)
    b = torch.randint(0, 9, (104,), generator=gen)
    logits = 30.0 * F.one_hot(b, 10).float()
    naive = logits.clone().requires_grad_(True)
    _naive_mi(naive.softmax(1), b, 10).backward()
    assert not torch.isfinite(naive.grad).all()  # the case really hits the overflow
    ours = logits.clone().requires_grad_(True)
    mi = mutual_information(ours.softmax(1), b, 10)
    mi.backward()
    assert (
        torch.isfinite(ours.grad).all() and abs(float(mi.detach()) - float(_naive_mi(logits.softmax(1), b, 10))) < 1e-6
    )


def test_ffw_step_gives_finite_gate_gradients_on_a_batch_missing_a_bias_class():
    net, gm, heads, x, y, _ = _step_setup()
    b = torch.arange(32) % 9  # bias class 9 missing
    with torch.no_grad():  # a privacy head that reads b from z with a logit gap of 30
        _, z = forward_with_bottleneck(net, x, "fc")
        za = torch.cat([z, torch.ones(32, 1)], 1)
        sol = (torch.linalg.pinv(za.double()) @ (30.0 * F.one_hot(b, 10).double())).float()
        heads[0].weight.copy_(sol[:-1].T)
        heads[0].bias.copy_(sol[-1])
        assert (heads[0](z).softmax(1).argmax(1) == b).all()
    ffw_step(net, "fc", gm.gate_parameters(), heads, x, y, b, gamma=10.0, num_bias=10)
    assert all(torch.isfinite(p.grad).all() for p in gm.gate_parameters())
