"""Python arguments that used to fail with a raw TypeError or AttributeError (gaps found by mypy): each now gets a
specific error saying what was wrong (docs/reliability.md, "Parameters and data")."""

import pytest
import torch
from torch import nn

from debiaskit.audit._probe import converged_linear_probe
from debiaskit.data import BiasDataset, make_splits
from debiaskit.errors import ConfigError, DataError, ModelError
from debiaskit.models import accuracy, collect_outputs


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.25, 0.25, 0.25, 0.25)])
def test_unbiased_fractions_need_three_shares(fractions):
    with pytest.raises(ConfigError, match=r"three positive shares summing to 1, got \(0\.(5|25), "):
        make_splits("biased-toy", seed=0, unbiased_size=600, unbiased_fractions=fractions)


def test_accuracy_of_inputs_without_targets():
    with pytest.raises(DataError, match="accuracy needs targets: pass a dataset, not a tensor of inputs"):
        accuracy(nn.Linear(4, 2), torch.zeros(3, 4))


def test_bias_labels_without_a_number_of_bias_classes():
    with pytest.raises(DataError, match="bias labels without a number of bias classes; give num_bias_classes"):
        BiasDataset(
            images=torch.zeros(4, 3),
            y=torch.tensor([0, 1, 0, 1]),
            b=torch.tensor([0, 0, 1, 1]),
            num_classes=2,
            num_bias_classes=None,
        )


class _SkipsItsHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.unused = nn.Linear(4, 2), nn.Linear(2, 2)

    def forward(self, x):
        return self.body(x)  # the module named as the head below is never called


def test_bottleneck_of_a_head_never_called():
    with pytest.raises(ModelError, match="the head module 'unused' was not called in the forward pass"):
        collect_outputs(_SkipsItsHead(), torch.zeros(3, 4), head="unused")


def test_linear_probe_needs_an_l2_strength():
    z, b = torch.randn(8, 3), torch.tensor([0, 1] * 4)
    with pytest.raises(ConfigError, match="at least one L2 strength"):
        converged_linear_probe(z, b, z, b, num_bias=2, l2_grid=())
