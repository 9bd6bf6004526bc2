"""Structured FFW on debiaskit's own ResNet-18: internal block channels and the residual stream (one
coupled gate per stage channel) gated, exact export of the hard-masked model, blocks that used to be
refused now analysed from their traced graph."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from conftest import randomise_batchnorm
from debiaskit.data import BiasDataset
from debiaskit.errors import ModelError
from debiaskit.ffw import count_parameters, find_fantastic_weights, install_gates, prune_structured, resize_like
from debiaskit.ffw._gates import freeze
from debiaskit.models._zoo import BasicBlock, ResNet18

SHAPE = (3, 16, 16)
INTERNAL = {f"layer{i}.{j}.conv1": (f"layer{i}.{j}.relu1",) for i in range(1, 5) for j in range(2)}
# one stream gate per stage, named after its first layer in forward order: the stem (stage 1), the
# downsample conv (stages 2-4: BasicBlock.forward computes the shortcut first)
STREAMS = {
    "stem.0": ("stem.2", "layer1.0.bn2", "layer1.1.bn2"),
    **{
        f"layer{i}.0.downsample.0": (f"layer{i}.0.downsample.1", f"layer{i}.0.bn2", f"layer{i}.1.bn2")
        for i in (2, 3, 4)
    },
}


def _resnet(stem: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomise_batchnorm(ResNet18(num_classes=10, in_channels=3, stem=stem, width=4))


def _x(n: int = 6) -> torch.Tensor:
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(1))


def _random_gates(gm, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for g in gm.gates.values():  # away from 0 so that a tiny tau reaches the hard limit
            g.m.copy_(torch.randn(g.m.shape, generator=gen).sign() * (0.01 + torch.rand(g.m.shape, generator=gen)))


@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_resnet_gates_block_channels_and_one_coupled_gate_per_stream_channel(stem):
    vanilla = _resnet(stem)
    net = copy.deepcopy(vanilla)
    freeze(net)
    x = _x()
    gm = install_gates(net, mode="structured", head="fc", example=x[:2])
    stem_sites = ("stem.2", "stem.3") if stem == "imagenet" else ("stem.2",)
    assert gm.units == {**INTERNAL, **STREAMS, "stem.0": stem_sites[:1] + STREAMS["stem.0"][1:]}
    assert gm.ungated == {}
    with torch.no_grad():
        assert torch.equal(net(x), vanilla(x))  # all gates at 1: bit for bit
        gm.state.hard = True
        assert torch.equal(net(x), vanilla(x))


@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_resnet_structured_export_is_smaller_and_equals_the_hard_masked_model(stem):
    vanilla = _resnet(stem)
    net = copy.deepcopy(vanilla)
    freeze(net)
    x = _x()
    gm = install_gates(net, mode="structured", head="fc", example=x[:2])
    _random_gates(gm, seed=4)
    with torch.no_grad():
        gm.gates["layer3.0.conv1"].m.fill_(-1.0)  # a whole block's internal channels pruned: one dead unit kept
    masks = gm.hard_masks()
    assert 0 < sum(int(m.sum()) for m in masks.values()) < sum(m.numel() for m in masks.values())
    vanilla.train()  # the analysis runs in eval mode: BatchNorm statistics untouched, mode restored
    pruned, shapes = prune_structured(vanilla, masks, head="fc", example=x[:2])
    assert vanilla.training
    vanilla.eval()
    gm.state.hard = True
    with torch.no_grad():
        hard_out = net(x)
        assert torch.allclose(pruned(x), hard_out, atol=1e-5, rtol=1e-5)
        gm.state.hard, gm.state.tau = False, 1e-6
        assert torch.equal(net(x), hard_out)  # tau -> 0 is the hard mask
    for name in INTERNAL:  # conv1 out, bn1 and conv2 in shrink together
        block = pruned.get_submodule(name.rsplit(".", 1)[0])
        kept = max(int(masks[name].sum()), 1)
        assert block.conv1.out_channels == block.bn1.num_features == block.conv2.in_channels == kept
    stage4 = int(masks["layer4.0.downsample.0"].sum())  # the stream of stage 4 shrinks everywhere at once
    assert pruned.layer4[0].conv2.out_channels == pruned.layer4[0].downsample[0].out_channels == stage4
    assert pruned.layer4[1].bn2.num_features == pruned.layer4[1].conv1.in_channels == pruned.fc.in_features == stage4
    assert pruned.stem[0].out_channels == pruned.layer2[0].downsample[0].in_channels == int(masks["stem.0"].sum())
    assert count_parameters(pruned) < 0.8 * count_parameters(vanilla)
    fresh = resize_like(ResNet18(num_classes=10, in_channels=3, stem=stem, width=4), shapes).eval()
    fresh.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(x), pruned(x))
    assert not any(type(m).__module__.startswith("debiaskit.ffw") for m in pruned.modules())
    assert all(torch.equal(p, q) for p, q in zip(vanilla.state_dict().values(), _resnet(stem).state_dict().values()))


class _Mixed(nn.Module):
    """Two plain conv blocks, then residual blocks: the first plain conv feeds a plain conv (gated),
    the second feeds a residual block (ungated: its output is the block's shortcut too)."""

    head_name = "fc"

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            BasicBlock(8, 8),
            BasicBlock(8, 12, 2),
            nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


def test_plain_layers_before_residual_blocks():
    torch.manual_seed(0)
    vanilla = randomise_batchnorm(_Mixed())
    net = copy.deepcopy(vanilla)
    freeze(net)
    x = _x()
    gm = install_gates(net, mode="structured", head="fc", example=x[:2])
    # features.3 feeds block 6 and its identity shortcut: it joins block 6's stream
    assert gm.units == {
        "features.0": ("features.2",),
        "features.3": ("features.5", "features.6.bn2"),
        "features.6.conv1": ("features.6.relu1",),
        "features.7.conv1": ("features.7.relu1",),
        "features.7.downsample.0": ("features.7.downsample.1", "features.7.bn2"),
    }
    _random_gates(gm, seed=7)
    gm.state.hard = True
    pruned, _ = prune_structured(vanilla, gm.hard_masks(), head="fc", example=x[:2])
    with torch.no_grad():
        assert torch.allclose(pruned(x), net(x), atol=1e-5, rtol=1e-5)
    assert pruned.features[0].out_channels == pruned.features[3].in_channels == int(gm.hard_masks()["features.0"].sum())
    with pytest.raises(ModelError, match="mask .features.6.conv2. names no gate.*its gates are features.0, features.3"):
        prune_structured(vanilla, {"features.6.conv2": torch.ones(8)}, head="fc", example=x[:2])


class _MyBlock(nn.Module):
    """A residual block written by a user: one relu module called twice, no BatchNorm."""

    def __init__(self, c):
        super().__init__()
        self.conv1, self.relu, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.relu(self.conv2(self.relu(self.conv1(x))) + x)


class _PreActBlock(BasicBlock):
    """Same layers as BasicBlock, another forward (the block's output is no longer passed through relu2)."""

    def forward(self, x):
        return x + self.conv2(self.relu1(self.bn1(self.conv1(x))))


@pytest.mark.parametrize(
    "block,inner",
    [(_MyBlock(4), ("body.0.conv1", ("body.0.conv1",))), (_PreActBlock(4, 4), ("body.0.conv1", ("body.0.relu1",)))],
)
def test_blocks_once_refused_are_analysed_from_their_graph(block, inner):
    """These used to be refused ("its forward is not the plain chain of its sub-modules")."""
    model = nn.Sequential()
    model.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    model.body = nn.Sequential(block)
    model.pool, model.flat, model.fc = nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)
    model = randomise_batchnorm(model)
    net = copy.deepcopy(model)
    freeze(net)
    x = _x()
    gm = install_gates(net, mode="structured", head="fc", example=x[:2])
    name, sites = inner
    assert gm.units[name] == sites  # a shared relu module cannot carry the gate: it goes on conv1's output
    assert gm.units["stem.0"] == ("stem.1", "body.0.conv2")  # stem + conv2 add into one stream
    _random_gates(gm, seed=2)
    gm.state.hard = True
    pruned, _ = prune_structured(model, gm.hard_masks(), head="fc", example=x[:2])
    with torch.no_grad():
        assert torch.allclose(pruned(x), net(x), atol=1e-5, rtol=1e-5)
    gm2 = install_gates(copy.deepcopy(model), mode="unstructured", head="fc", example=x[:2])  # unstructured still works
    assert "body.0.conv1" in gm2.gates


def test_ffw_search_on_a_resnet_exports_the_selected_hard_model():
    gen = torch.Generator().manual_seed(0)

    def data(n, name):
        y = torch.randint(0, 2, (n,), generator=gen)
        b = torch.randint(0, 2, (n,), generator=gen)
        images = (torch.rand(n, *SHAPE, generator=gen) * 255).to(torch.uint8)
        images[:, 0] = torch.where(b[:, None, None] == 1, 255, 0).to(torch.uint8)  # channel 0 carries b
        return BiasDataset(
            images=images, y=y, b=b, num_classes=2, num_bias_classes=2, name=name, aligned=(b == y), mean=0.5, std=0.5
        )

    train, val = data(64, "u_train"), data(32, "u_val")
    torch.manual_seed(0)
    model = randomise_batchnorm(ResNet18(num_classes=2, in_channels=3, stem="cifar", width=4))
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
    )
    assert set(res.masks) == set(INTERNAL) | set(STREAMS)
    assert res.sparsity["ungated"] == {} and res.sparsity["parameters_after"] <= res.sparsity["parameters_before"]
    res.gated.state.hard = True
    x = val.x[:8]
    with torch.no_grad():
        assert torch.allclose(res.model(x), res.gated.model(x), atol=1e-5, rtol=1e-5)
