"""Models written the way researchers write them - not debiaskit's zoo - for the bring-your-own tests.

Importable as ``user_models:FACTORY`` (tests put this folder on ``sys.path`` / ``PYTHONPATH``).
None of them has a ``head_name`` attribute: the head is named by the user (``head=...`` / ``--head``).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class ResBlock(nn.Module):
    """conv-BN-relu-conv-BN + skip, relu; the skip is a 1x1 conv when the width or stride changes.
    The activations are functional (``torch.relu`` / ``F.relu``), not modules."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm_a = nn.BatchNorm2d(c_out)
        self.conv_b = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.norm_b = nn.BatchNorm2d(c_out)
        self.skip = nn.Conv2d(c_in, c_out, 1, stride, bias=False) if (stride != 1 or c_in != c_out) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm_a(self.conv_a(x)))
        out = self.norm_b(self.conv_b(out))
        return F.relu(out + self.skip(x))


class ResidualCNN(nn.Module):
    """The issue's model: a small residual CNN, functional relu, 1x1 skip convs, dropout before the
    head, head named ``classifier``."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 16, dropout: float = 0.2) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.stem_norm = nn.BatchNorm2d(width)
        self.block1 = ResBlock(width, width)
        self.block2 = ResBlock(width, 2 * width, stride=2)
        self.block3 = ResBlock(2 * width, 4 * width, stride=2)
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem_norm(self.stem(x)))
        x = self.block3(self.block2(self.block1(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(self.drop(x))


def residual_cnn(num_classes: int = 10, in_channels: int = 3, width: int = 16, dropout: float = 0.2) -> nn.Module:
    return ResidualCNN(num_classes=num_classes, in_channels=in_channels, width=width, dropout=dropout)


class TabularMLP(nn.Module):
    """Rows of features -> two hidden layers (functional GELU) -> head ``out``."""

    def __init__(self, n_features: int, n_classes: int = 2, hidden: int = 32) -> None:
        super().__init__()
        self.inp = nn.Linear(n_features, hidden)
        self.hidden = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.hidden(F.gelu(self.inp(x)))))


def tabular_mlp(n_features: int, n_classes: int = 2, hidden: int = 32) -> nn.Module:
    """Note the argument names: not debiaskit's ``num_classes`` (they are given with --model-arg)."""
    return TabularMLP(n_features=n_features, n_classes=n_classes, hidden=hidden)


def sequential_cnn(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """A plain nn.Sequential whose head ``fc`` sits inside a sub-Sequential (``head.fc``)."""
    return nn.Sequential(
        OrderedDict(
            [
                (
                    "features",
                    nn.Sequential(
                        nn.Conv2d(in_channels, 8, 3, 2, 1),
                        nn.ReLU(),
                        nn.Conv2d(8, 16, 3, 2, 1),
                        nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(),
                    ),
                ),
                ("head", nn.Sequential(OrderedDict([("drop", nn.Dropout(0.1)), ("fc", nn.Linear(16, num_classes))]))),
            ]
        )
    )


def broken_factory(num_classes: int = 10) -> nn.Module:
    raise RuntimeError("this factory always fails (for the error-message tests)")


class ResidualMLP(nn.Module):
    """Tabular rows -> LayerNorm'd hidden layer, a residual hidden layer (functional GELU) -> head ``fc_out``.
    The factory names its arguments as debiaskit does (``in_features``, ``num_classes``): both are filled in."""

    def __init__(self, in_features: int, num_classes: int = 2, hidden: int = 24) -> None:
        super().__init__()
        self.inp = nn.Linear(in_features, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.hid = nn.Linear(hidden, hidden)
        self.fc_out = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.norm(self.inp(x)))
        return self.fc_out(h + F.gelu(self.hid(h)))


def residual_mlp(in_features: int, num_classes: int = 2, hidden: int = 24) -> nn.Module:
    return ResidualMLP(in_features=in_features, num_classes=num_classes, hidden=hidden)


class SmallVGG(nn.Module):
    """conv-norm-SiLU-maxpool twice, global pooling, head ``logits``; ``norm="group"`` uses GroupNorm, which
    mixes channels (no channel can be removed exactly)."""

    def __init__(self, num_classes: int = 2, in_channels: int = 3, norm: str = "batch") -> None:
        super().__init__()
        make_norm = (lambda c: nn.BatchNorm2d(c)) if norm == "batch" else (lambda c: nn.GroupNorm(2, c))
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1),
            make_norm(8),
            nn.SiLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            make_norm(16),
            nn.SiLU(),
            nn.MaxPool2d(2),
        )
        self.logits = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(torch.flatten(F.adaptive_max_pool2d(self.features(x), 1), 1))


def small_vgg(num_classes: int = 2, in_channels: int = 3, norm: str = "batch") -> nn.Module:
    return SmallVGG(num_classes=num_classes, in_channels=in_channels, norm=norm)
