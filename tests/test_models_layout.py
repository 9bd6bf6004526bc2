"""Channels-last image batches (models/_layout.py): used where the model takes them unchanged, never elsewhere."""

from __future__ import annotations

import torch
from torch import nn

from debiaskit.data import BiasDataset
from debiaskit.models import MLP, SimpleConvNet, batch_memory_format, collect_outputs, laid_out
from debiaskit.train import TrainConfig, fit


class ViewsItsActivation(nn.Module):
    """Old-style code: ``.view`` on a 4-D activation, which a channels-last tensor cannot do."""

    head_name = "fc"

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(self.conv(x).view(x.shape[0], -1))


class AssertsContiguous(ViewsItsActivation):
    """Refuses any input that is not in the default layout, with a plain assert."""

    def forward(self, x):
        assert x.is_contiguous()
        return super().forward(x)


def _images(n: int = 64, seed: int = 0) -> BiasDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    return BiasDataset(
        images=torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8),
        y=y,
        b=y.clone(),
        num_classes=10,
        num_bias_classes=10,
        name="tiny",
    )


def test_a_conv_net_on_the_cpu_gets_channels_last_and_the_same_outputs():
    model = SimpleConvNet(num_classes=10, in_channels=3).train()
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    stats = bn.running_mean.clone()
    x = torch.randn(4, 3, 8, 8)
    assert batch_memory_format(model, x) == torch.channels_last
    assert model.training and torch.equal(bn.running_mean, stats)  # the check moved nothing, restored the mode
    assert laid_out(x, torch.channels_last).is_contiguous(memory_format=torch.channels_last)
    data = _images()
    fast = collect_outputs(model, data, head="fc")
    model.eval()
    with torch.no_grad():
        plain = model(data.to_float(data.images))
    assert torch.allclose(fast.logits, plain, rtol=1e-4, atol=1e-5)


def test_models_that_cannot_take_channels_last_keep_the_default_layout():
    x = torch.randn(4, 3, 8, 8)
    assert batch_memory_format(ViewsItsActivation(), x) == torch.contiguous_format  # the .view fails: fallback
    assert batch_memory_format(AssertsContiguous(), x) == torch.contiguous_format  # any error: fallback
    assert batch_memory_format(MLP(in_features=3 * 8 * 8, num_classes=10), x) == torch.contiguous_format  # no conv
    conv = SimpleConvNet(num_classes=10, in_channels=3)
    assert batch_memory_format(conv, torch.randn(4, 3 * 64)) == torch.contiguous_format  # not an image batch
    assert batch_memory_format(conv, x, device="meta") == torch.contiguous_format  # not a CPU
    flat = torch.randn(4, 7)
    assert laid_out(flat, torch.channels_last) is flat and laid_out(x, None) is x


def test_training_and_collecting_work_for_a_model_that_needs_the_default_layout():
    data = _images()
    model = ViewsItsActivation()
    fit(model, data, config=TrainConfig(epochs=1, batch_size=16, seed=0), progress=False)
    out = collect_outputs(model, data, head="fc")
    assert out.logits.shape == (len(data), 10) and torch.isfinite(out.logits).all()
