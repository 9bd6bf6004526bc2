"""Structured FFW on networks debiaskit does not ship: units found from the traced graph, exact and
physically smaller exports, save/reload without pickle, and the reasons for what stays ungated."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import randomise_batchnorm
from debiaskit.data import BiasDataset
from debiaskit.errors import ModelError
from debiaskit.ffw import (
    analyse_structure,
    count_parameters,
    find_fantastic_weights,
    install_gates,
    prune_structured,
    resize_like,
)
from debiaskit.ffw._gates import freeze
from tv_models import DepthwiseNet, TabularMLP, UserResNet, tv_resnet18, tv_resnet_bottleneck


def _bn1d(model: nn.Module) -> nn.Module:
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm1d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    return model


def _build(name: str) -> tuple[nn.Module, str, tuple[int, ...]]:
    torch.manual_seed(0)
    model, head, shape = {
        "tv-resnet18": (lambda: tv_resnet18(width=8), "fc", (3, 32, 32)),
        "tv-bottleneck": (lambda: tv_resnet_bottleneck(width=8, layers=(2, 1, 1, 1)), "fc", (3, 32, 32)),
        "tv-resnext": (lambda: tv_resnet_bottleneck(width=8, groups=2, width_per_group=32), "fc", (3, 32, 32)),
        "user-resnet": (lambda: UserResNet(width=8), "classifier", (3, 16, 16)),
        "depthwise": (lambda: DepthwiseNet(), "classifier", (3, 16, 16)),
        "tabular-mlp": (lambda: TabularMLP(), "out", (12,)),
    }[name]
    return randomise_batchnorm(_bn1d(model())), head, shape


def _x(shape, n: int = 6) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(1))


def _random_hard_gates(gm, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for g in gm.gates.values():
            g.m.copy_(torch.randn(g.m.shape, generator=gen))
        first = next(iter(gm.gates.values()))
        first.m.fill_(-1.0)  # one group pruned entirely: the export keeps a dead unit
    gm.state.hard = True


# What is gated in each model: gate name -> the modules whose output the gate multiplies.
TV18_UNITS = {
    "conv1": ("relu", "layer1.0.bn2", "layer1.1.bn2"),  # stage 1's stream: stem + both blocks' conv2
    **{f"layer{i}.{j}.conv1": (f"layer{i}.{j}.bn1",) for i in range(1, 5) for j in range(2)},  # shared self.relu
    **{f"layer{i}.0.conv2": (f"layer{i}.0.bn2", f"layer{i}.0.downsample.1", f"layer{i}.1.bn2") for i in (2, 3, 4)},
}


@pytest.mark.parametrize(
    "name", ["tv-resnet18", "tv-bottleneck", "tv-resnext", "user-resnet", "depthwise", "tabular-mlp"]
)
def test_export_is_smaller_equals_the_hard_masked_model_and_reloads_without_pickle(name, tmp_path):
    from safetensors.torch import load_file, save_file

    vanilla, head, shape = _build(name)
    net = copy.deepcopy(vanilla)
    freeze(net)
    x = _x(shape)
    gm = install_gates(net, mode="structured", head=head, example=x[:2])
    with torch.no_grad():
        assert torch.equal(net(x), vanilla(x))  # every gate at 1: bit for bit
    _random_hard_gates(gm, seed=3)
    masks = gm.hard_masks()
    pruned, shapes = prune_structured(vanilla, masks, head=head, example=x[:2])
    with torch.no_grad():
        hard = net(x)
        assert torch.allclose(pruned(x), hard, atol=1e-5, rtol=1e-5)
        gm.state.hard, gm.state.tau = False, 1e-6
        assert torch.allclose(net(x), hard, atol=1e-6)  # tau -> 0 is the hard mask
    assert count_parameters(pruned) < 0.8 * count_parameters(vanilla)
    assert not any(type(m).__module__.startswith("debiaskit") for m in pruned.modules())
    # saved as safetensors + JSON sizes; reloaded into a freshly built model of the user's own class
    save_file({k: v.contiguous() for k, v in pruned.state_dict().items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "shapes.json").write_text(json.dumps(shapes))
    fresh, _, _ = _build(name)
    resize_like(fresh, json.loads((tmp_path / "shapes.json").read_text()))
    fresh.load_state_dict(load_file(str(tmp_path / "model.safetensors")))
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), pruned(x))


def test_torchvision_resnet18_gates_every_channel_with_coupled_stream_gates():
    vanilla, head, shape = _build("tv-resnet18")
    gm = install_gates(copy.deepcopy(vanilla), mode="structured", head=head, example=_x(shape, 2))
    assert gm.units == TV18_UNITS and gm.ungated == {}


def test_bottleneck_and_resnext_list_what_grouped_convs_block():
    model, head, shape = _build("tv-bottleneck")
    s = analyse_structure(model, _x(shape, 2), head)
    assert {"layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2"} <= set(s.points)
    # the stem feeds only layer1.0's conv1 and its 1x1 downsample (the first Bottleneck projects): its own gate
    assert s.points["conv1"].consumers == ("layer1.0.conv1", "layer1.0.downsample.0")
    assert s.points["layer1.0.conv3"].producers == ("layer1.0.conv3", "layer1.0.downsample.0", "layer1.1.conv3")
    assert s.ungated == {}
    resnext, head, shape = _build("tv-resnext")
    s = analyse_structure(resnext, _x(shape, 2), head)
    for i in range(1, 5):  # conv1 feeds the grouped conv2; conv2 is grouped: both listed, with why
        assert "grouped convolution" in s.ungated[f"layer{i}.0.conv1"] and "unbalance" in s.ungated[f"layer{i}.0.conv1"]
        assert "grouped convolution" in s.ungated[f"layer{i}.0.conv2"]
        assert f"layer{i}.0.conv3" in s.points  # the rest is still gated
    assert "conv1" in s.points


def test_user_resnet_with_functional_relu_skip_conv_and_dropout_before_a_classifier_head():
    model, head, shape = _build("user-resnet")
    s = analyse_structure(model, _x(shape, 2), head)
    # F.relu after the stem: the gate goes on the stem's output (relu(g x) = g relu(x)); the stem and
    # block 0's conv2 add into one stream; block 1's stream = its conv2 + the 1x1 skip conv
    assert s.points["stem"].producers == ("stem", "blocks.0.c2") and s.points["stem"].sites == ("stem", "blocks.0.n2")
    assert s.points["blocks.1.c2"].producers == ("blocks.1.c2", "blocks.1.skip")
    assert s.points["blocks.0.c1"].sites == ("blocks.0.n1",)
    # proj feeds the head through F.relu and the head's own dropout: gated on its output, not inside the head
    assert s.points["proj"].sites == ("proj",) and s.points["proj"].consumers == ("classifier.1",)
    assert s.ungated == {}


def test_depthwise_blocks_are_pruned_through_their_depthwise_conv():
    model, head, shape = _build("depthwise")
    s = analyse_structure(model, _x(shape, 2), head)
    p = s.points["features.2.conv.0"]  # expand 1x1 -> BN -> ReLU6 -> depthwise -> BN -> ReLU6 -> project 1x1
    assert p.sites == ("features.2.conv.5",)
    assert p.channel_modules == ("features.2.conv.1", "features.2.conv.3", "features.2.conv.4")
    assert p.consumers == ("features.2.conv.6",)


class _Quirks(nn.Module):
    """One exactly removable layer beside every kind of layer that is not, each with its reason."""

    def __init__(self):
        super().__init__()
        self.shift = nn.Conv2d(3, 4, 3, padding=1)  # relu(.) + 1.0: a pruned unit would leak the +1
        self.sig = nn.Conv2d(4, 4, 3, padding=1)  # torch.sigmoid(.) with no module after it
        self.a = nn.Conv2d(4, 4, 3, padding=1)  # read through a BatchNorm on one branch only
        self.bn = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(4, 4, 1)
        self.c = nn.Conv2d(4, 4, 1)
        self.cat = nn.Conv2d(8, 6, 1)  # reads torch.cat([b, c]): not supported
        self.shared = nn.Conv2d(6, 6, 1)  # called twice
        self.ok = nn.Conv2d(6, 8, 3, padding=1)  # plain conv -> relu -> pool -> head: gated
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.shift(x)) + 1.0
        h = torch.sigmoid(self.sig(h))
        a = F.relu(self.a(h))
        h = torch.cat([self.b(self.bn(a)), self.c(a)], 1)
        h = self.shared(F.relu(self.shared(F.relu(self.cat(h)))))
        h = F.relu(self.ok(h))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def test_what_cannot_be_gated_exactly_is_listed_with_the_reason_and_the_rest_is_gated():
    model = randomise_batchnorm(_Quirks())
    x = _x((3, 8, 8))
    s = analyse_structure(model, x[:2], "fc")
    assert list(s.points) == ["ok"]
    why = s.ungated
    assert "non-zero" in why["shift"] and "add()" in why["shift"]
    assert "sigmoid" in why["sig"]
    assert "bn (BatchNorm2d)" in why["a"]
    assert "cat" in why["b"] and "cat" in why["c"]
    assert "called 2 times" in why["cat"] and "called 2 times" in why["shared"]
    net = copy.deepcopy(model)
    freeze(net)
    gm = install_gates(net, mode="structured", head="fc", example=x[:2])
    assert set(gm.gates) == {"ok"} and gm.ungated == why
    _random_hard_gates(gm, seed=0)
    pruned, _ = prune_structured(model, gm.hard_masks(), head="fc", example=x[:2])
    with torch.no_grad():
        assert torch.allclose(pruned(x), net(x), atol=1e-5, rtol=1e-5)
    assert pruned.ok.out_channels == pruned.fc.in_features == 1  # all pruned: one dead unit left


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        if x.sum() > 0:  # Python control flow on a tensor value: torch.fx cannot trace it
            return F.relu(self.conv(x))
        return x


class _WithOpaque(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.mid = _DataDependent()
        self.c2 = nn.Conv2d(4, 6, 3, padding=1)
        self.c3 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        h = F.relu(self.c2(self.mid(F.relu(self.c1(x)))))
        return self.fc(F.relu(self.c3(h)).mean((2, 3)))


def test_an_untraceable_submodule_is_kept_whole_and_the_rest_still_gated():
    model = _WithOpaque().eval()
    x = _x((3, 8, 8))
    s = analyse_structure(model, x[:2], "fc")
    assert list(s.points) == ["c2", "c3"]
    assert "mid" in s.ungated["c1"] and "cannot trace" in s.ungated["c1"]
    assert "inside mid" in s.ungated["mid.conv"]
    net = copy.deepcopy(model)
    freeze(net)
    gm = install_gates(net, mode="structured", head="fc", example=x[:2])
    _random_hard_gates(gm, seed=1)
    pruned, _ = prune_structured(model, gm.hard_masks(), head="fc", example=x[:2])
    with torch.no_grad():
        assert torch.allclose(pruned(x), net(x), atol=1e-5, rtol=1e-5)


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        h = F.relu(self.conv(x))
        if h.mean() > 0:
            h = h * 2
        return self.fc(h.mean((2, 3)))


def test_a_forward_torch_fx_cannot_trace_is_refused_clearly_and_unstructured_still_works():
    x = _x((3, 8, 8))
    with pytest.raises(ModelError, match=r"torch.fx.*_Untraceable.forward.*mode='unstructured'"):
        install_gates(_Untraceable().eval(), mode="structured", head="fc", example=x[:2])
    gm = install_gates(_Untraceable().eval(), mode="unstructured", head="fc", example=x[:2])
    assert list(gm.gates) == ["conv"]


@pytest.mark.parametrize("input_weights", [False, True])
def test_ffw_search_on_a_torchvision_resnet_exports_the_selected_hard_model(input_weights):
    gen = torch.Generator().manual_seed(0)
    shape = (3, 16, 16)

    def data(n, name):
        y = torch.randint(0, 2, (n,), generator=gen)
        b = torch.randint(0, 2, (n,), generator=gen)
        images = (torch.rand(n, *shape, generator=gen) * 255).to(torch.uint8)
        images[:, 0] = torch.where(b[:, None, None] == 1, 255, 0).to(torch.uint8)
        return BiasDataset(
            images=images, y=y, b=b, num_classes=2, num_bias_classes=2, name=name, aligned=(b == y), mean=0.5, std=0.5
        )

    train, val = data(64, "u_train"), data(32, "u_val")
    torch.manual_seed(0)
    model = randomise_batchnorm(tv_resnet18(num_classes=2, width=4))
    res = find_fantastic_weights(
        model,
        head="fc",
        train=train,
        val=val,
        mode="structured",
        erase="none",
        refit_head=False,
        tune_epochs=0,
        max_levels=2,
        no_harm=False,
        max_epochs_per_level=1,
        head_pretrain_epochs=1,
        batch_size=32,
        gate_lr=1.0,
        input_weights=input_weights,
    )
    assert set(res.masks) == set(TV18_UNITS) | ({"conv1.weight"} if input_weights else set())
    assert ("input_weights" in res.sparsity) == input_weights
    res.gated.state.hard = True
    x = val.x[:8]
    with torch.no_grad():
        assert torch.allclose(res.model(x), res.gated.model(x), atol=1e-5, rtol=1e-5)


def test_an_export_that_differs_from_the_hard_masked_model_is_refused(monkeypatch):
    """Fault injection: a slicing bug must never produce a silently different network."""
    from debiaskit.ffw import _export

    model, head, shape = _build("tabular-mlp")
    x = _x(shape)
    net = copy.deepcopy(model)
    freeze(net)
    gm = install_gates(net, mode="structured", head=head, example=x[:2])
    _random_hard_gates(gm, seed=5)
    real = _export._slice_in

    def off_by_one(module, cols, zero):
        real(module, torch.roll(cols, 1), zero)

    monkeypatch.setattr(_export, "_slice_in", off_by_one)
    with pytest.raises(ModelError, match="differs from the hard-masked model"):
        prune_structured(model, gm.hard_masks(), head=head, example=x[:2])


def test_input_weights_gate_every_weight_of_the_layers_reading_the_input_and_export_exactly():
    from debiaskit.errors import ConfigError
    from debiaskit.ffw import FFWConfig, structured_sparsity

    model, head, shape = _build("user-resnet")
    x = _x(shape)
    net = copy.deepcopy(model)
    freeze(net)
    gm = install_gates(net, mode="structured", head=head, example=x[:2], input_weights=True)
    assert "stem.weight" in gm.gates and gm.gates["stem.weight"].m.shape == model.stem.weight.shape
    assert "stem" in gm.gates  # the stem's units are gated too
    with torch.no_grad():
        assert torch.equal(net(x), model(x))
    _random_hard_gates(gm, seed=4)
    masks = gm.hard_masks()
    pruned, _ = prune_structured(model, masks, head=head, example=x[:2])
    with torch.no_grad():
        assert torch.allclose(pruned(x), net(x), atol=1e-5, rtol=1e-5)
    kept = masks["stem"].bool()
    expected = (model.stem.weight * masks["stem.weight"])[kept] if kept.any() else None
    if expected is not None:
        assert torch.equal(pruned.stem.weight, expected)  # weight zeros baked in, pruned units removed
    sp = structured_sparsity(masks, model, pruned)
    assert "stem.weight" not in sp["per_layer"] and 0 < sp["input_weights"]["overall"] < 1
    gm.remove()
    with torch.no_grad():
        assert torch.equal(net(x), model(x))  # gates (hooks and parametrisations) taken out again
    with pytest.raises(ConfigError, match="input_weights.*structured"):
        FFWConfig(mode="unstructured", input_weights=True)
    with pytest.raises(ModelError, match="weight mask 'blocks.0.c1.weight'"):
        prune_structured(
            model, {"blocks.0.c1.weight": torch.ones_like(model.blocks[0].c1.weight)}, head=head, example=x[:2]
        )


def test_an_example_the_model_cannot_take_is_a_clear_error():
    model, head, _ = _build("tabular-mlp")
    with pytest.raises(ModelError, match=r"failed on an example batch of shape \(2, 5\)"):
        analyse_structure(model, torch.randn(2, 5), head)
