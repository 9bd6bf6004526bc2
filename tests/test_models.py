"""Model zoo shapes, head naming and the bottleneck tap on any nn.Module."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from debiaskit.errors import ConfigError, ModelError
from debiaskit.models import (
    MODELS,
    build_model,
    collect_outputs,
    forward_with_bottleneck,
    head_shape,
    resolve_head,
    tap_bottleneck,
)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("input_shape", [(3, 28, 28), (1, 32, 32)])
def test_zoo_forward_shape_and_head(name, input_shape):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, input_shape=input_shape).eval()
    x = torch.randn(2, *input_shape)
    logits, z = forward_with_bottleneck(model, x)
    assert logits.shape == (2, 7)
    head = (
        model.head_name
    )  # "fc", or "classifier" for the residual CNN of BENCHMARKS.md's own-model section (as its user named it)
    assert resolve_head(model)[0] == head and head in ("fc", "classifier")
    d, out = head_shape(model)
    assert out == 7 and z.shape == (2, d)
    assert torch.allclose(model.get_submodule(head)(z), logits, atol=1e-5)  # z really is the head's input


def test_unknown_model_lists_zoo():
    with pytest.raises(ConfigError, match="unknown model 'vgg'; available: .*simple-conv.*resnet18"):
        build_model("vgg", num_classes=10, input_shape=(3, 28, 28))


class Custom(nn.Module):
    """A user network with its own head name and a non-trivial path into the head."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.proj = nn.Linear(16, 5)
        self.classifier = nn.Linear(5, 3)

    def forward(self, x):
        z = torch.tanh(self.proj(self.body(x).flatten(1))) * 2
        return self.classifier(z)


def test_bottleneck_is_head_input_on_user_module():
    torch.manual_seed(0)
    model = Custom().eval()
    x = torch.randn(4, 1, 8, 8)
    expected_z = torch.tanh(model.proj(model.body(x).flatten(1))) * 2
    with tap_bottleneck(model, "classifier") as tap:
        logits = model(x)
    assert torch.allclose(tap.z, expected_z)
    logits2, z = forward_with_bottleneck(model, x, "classifier")
    assert torch.allclose(logits, logits2) and torch.allclose(z, expected_z)
    assert head_shape(model, "classifier") == (5, 3)
    # the hook is removed afterwards: no tap lingers on the module
    assert not model.classifier._forward_pre_hooks


def test_wrong_head_name_lists_modules():
    model = Custom()
    with pytest.raises(ModelError) as err:
        resolve_head(model, "fc")
    msg = str(err.value)
    assert "'fc'" in msg and "classifier" in msg and "proj" in msg and "body.0" in msg
    with pytest.raises(ModelError, match="name the classifier head"):
        resolve_head(model)  # no head_name attribute and no name given
    with pytest.raises(ModelError, match="name the classifier head"):
        resolve_head(model, "")  # the root module is not a head


def test_head_must_be_linear_and_called():
    model = Custom()
    with pytest.raises(ModelError, match="is a Sequential; debiaskit needs an nn.Linear head"):
        head_shape(model, "body")

    class Skips(Custom):
        def forward(self, x):
            return self.proj(self.body(x).flatten(1))

    with pytest.raises(ModelError, match="'classifier' was not called"):
        forward_with_bottleneck(Skips(), torch.randn(1, 1, 8, 8), "classifier")


def test_collect_outputs_restores_training_mode(toy_splits):
    model = build_model("mlp", num_classes=10, input_shape=toy_splits.test.input_shape)
    model.train()
    out = collect_outputs(model, toy_splits.test.subset(torch.arange(50)), head="fc")
    assert model.training
    assert out.logits.shape == (50, 10) and out.z.shape == (50, 100) and out.b.shape == (50,)
