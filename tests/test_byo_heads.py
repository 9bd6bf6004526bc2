"""What a user meets with their own model in FFW: a Sequential head (the error names the Linear to use), the gated
model as an nn.Module, and a small ViT built from nn.TransformerEncoderLayer under structured and unstructured FFW
(every layer left ungated is listed with a true reason)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from debiaskit.errors import ModelError
from debiaskit.ffw import analyse_structure, find_fantastic_weights
from debiaskit.models import head_shape

FAST = dict(
    max_levels=1,
    max_epochs_per_level=1,
    head_pretrain_epochs=1,
    tune_epochs=0,
    erase="none",
    refit_head=False,
    progress=False,
)


class SequentialHead(nn.Module):
    """A CNN whose classifier is ``Sequential(Dropout, Linear)``, as many user models are written."""

    def __init__(self, num_classes: int = 10, two_linears: bool = False) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        layers = (
            [nn.Dropout(0.1), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, num_classes)]
            if two_linears
            else [nn.Dropout(0.1), nn.Linear(8, num_classes)]
        )
        self.classifier = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class TinyViT(nn.Module):
    """Patches (a strided conv), a positional embedding, two nn.TransformerEncoderLayer (d_model 16), mean over
    tokens, a pre-logits Linear + Tanh (as in the original ViT) and the head."""

    def __init__(self, num_classes: int = 10, d: int = 16, patch: int = 7, size: int = 28) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, d, patch, stride=patch)
        self.pos = nn.Parameter(torch.zeros(1, (size // patch) ** 2, d))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d, 2, 32, dropout=0.0, batch_first=True) for _ in range(2)
        )
        self.norm = nn.LayerNorm(d)
        self.pre_logits = nn.Linear(d, d)
        self.act = nn.Tanh()
        self.head = nn.Linear(d, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        for block in self.blocks:
            z = block(z)
        return self.head(self.act(self.pre_logits(self.norm(z).mean(1))))


def test_a_sequential_head_error_names_its_linear(toy_splits):
    model = SequentialHead().eval()
    with pytest.raises(ModelError, match=r"'classifier' is a Sequential.*--head classifier\.1 when training"):
        head_shape(model, "classifier")
    with pytest.raises(ModelError, match=r"--head classifier\.1"):  # refused before any compute
        find_fantastic_weights(
            model, head="classifier", train=toy_splits.unbiased_train, val=toy_splits.unbiased_val, **FAST
        )
    two = SequentialHead(two_linears=True)
    with pytest.raises(ModelError, match=r"--head classifier\.3 .*classifier\.1, classifier\.3"):
        head_shape(two, "classifier")
    assert head_shape(model, "classifier.1") == (8, 10)


def test_the_gated_model_is_an_nn_module(toy_splits, allow_harm):  # mechanics on a near-chance toy model
    model = SequentialHead().eval()
    result = find_fantastic_weights(
        model,
        head="classifier.1",
        train=toy_splits.unbiased_train,
        val=toy_splits.unbiased_val,
        mode="unstructured",
        **FAST,
    )
    gated = result.gated
    assert isinstance(gated, nn.Module) and gated.to("cpu") is gated
    x = toy_splits.test.x[:8]
    gated.state.hard = True
    with torch.no_grad():
        assert torch.allclose(gated(x), result.model(x), atol=1e-5)  # calling it runs the hard-masked model
    assert {name for name in gated.state_dict() if name.startswith("gate_modules.")} == {
        f"gate_modules.{k.replace('.', '__')}.m" for k in gated.gates
    }
    assert [p.requires_grad for p in gated.gate_parameters()] == [True] * len(gated.gates)
    assert len(list(gated.parameters())) > len(gated.gate_parameters())  # nn.Module's: frozen weights too


def test_transformer_layers_are_listed_as_opaque_never_as_uncalled(toy_splits):
    model = TinyViT().eval()
    s = analyse_structure(model, toy_splits.test.x[:2], "head")
    assert set(s.points) == {"pre_logits"}
    for layer in ("linear1", "linear2", "self_attn.out_proj"):
        for i in (0, 1):
            why = s.ungated[f"blocks.{i}.{layer}"]
            assert f"inside blocks.{i} (TransformerEncoderLayer)" in why and "opaque" in why, why
    assert not any("not called" in why for why in s.ungated.values()), s.ungated


@pytest.mark.parametrize("mode", ["structured", "unstructured"])
def test_ffw_on_a_tiny_vit(toy_splits, mode, allow_harm):  # mechanics on a near-chance toy model
    torch.manual_seed(0)
    model = TinyViT().eval()
    result = find_fantastic_weights(
        model, head="head", train=toy_splits.unbiased_train, val=toy_splits.unbiased_val, mode=mode, **FAST
    )
    x = toy_splits.test.x[:4]
    assert result.model(x).shape == (4, 10)
    ungated = result.sparsity["ungated"]
    if mode == "structured":
        assert set(result.masks) == {"pre_logits"}
        assert "TransformerEncoderLayer" in ungated["blocks.1.linear2"]
    else:
        # the attention's packed q/k/v projection is a raw Parameter, not a Linear: kept whole, and said so
        assert {"blocks.0.self_attn.in_proj_weight", "blocks.1.self_attn.in_proj_weight", "pos"} <= set(ungated)
        assert "MultiheadAttention" in ungated["blocks.0.self_attn.in_proj_weight"]
        assert "blocks.0.self_attn.out_proj" in result.masks  # a Linear: gated
        assert not any(k.startswith(("blocks.0.norm", "head")) or k.endswith("bias") for k in ungated), ungated
