"""The reference models of the field, written with plain torch layers (no torchvision)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError


class SimpleConvNet(nn.Module):
    """Bahng et al.'s SimpleConvNet: four 7x7 conv-BN-ReLU blocks (16/32/64/128), global average
    pooling, linear head ``fc``. ``strides`` (1,1,1,1) is the paper's network; the CPU-sized variant
    uses (2,2,2,2): same depth and width, 16x fewer multiply-adds at the first block."""

    head_name = "fc"

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, widths=(16, 32, 64, 128),
                 kernel_size: int = 7, strides=(1, 1, 1, 1)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for width, stride in zip(widths, strides):
            layers += [nn.Conv2d(c_in, width, kernel_size, stride=stride, padding=kernel_size // 2),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=False)]
            c_in = width
        self.extracter = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.extracter(x)), 1))


class MLP(nn.Module):
    """LfF's MLP: flatten, three hidden layers of 100 with ReLU, linear head ``fc``.

    Any input shape: images (flattened) or tabular rows / feature vectors of shape (N, D) (UCI Adult)."""

    head_name = "fc"

    def __init__(self, *, num_classes: int = 10, in_features: int = 3 * 28 * 28, hidden=(100, 100, 100)) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        d = in_features
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        self.feature = nn.Sequential(*layers)
        self.fc = nn.Linear(d, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.feature(x))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU()
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + identity)


class ResNet18(nn.Module):
    """ResNet-18 with a CIFAR stem (3x3 conv, no max-pool) or an ImageNet stem (7x7/2 + max-pool)."""

    head_name = "fc"

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, stem: str = "cifar", width: int = 64) -> None:
        super().__init__()
        if stem == "cifar":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        elif stem == "imagenet":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                                      nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        else:
            raise ConfigError(f"ResNet18 stem must be 'cifar' or 'imagenet', got {stem!r}")
        chans = [width, width * 2, width * 4, width * 8]
        layers, c_in = [], width
        for i, c in enumerate(chans):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(c_in, c, stride), BasicBlock(c, c, 1)))
            c_in = c
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    factory: Callable[..., nn.Module]


def _flat_features(input_shape) -> int:
    n = 1
    for s in input_shape:
        n *= int(s)
    return n


MODELS: dict[str, ModelSpec] = {
    "simple-conv": ModelSpec("simple-conv", "Bahng's SimpleConvNet (7x7 conv-BN-ReLU x4: 16/32/64/128, GAP, fc)",
                             lambda *, num_classes, input_shape: SimpleConvNet(num_classes=num_classes, in_channels=input_shape[0])),
    "simple-conv-small": ModelSpec("simple-conv-small", "CPU-sized SimpleConvNet: same depth and width, stride 2 in every block",
                                   lambda *, num_classes, input_shape: SimpleConvNet(num_classes=num_classes, in_channels=input_shape[0], strides=(2, 2, 2, 2))),
    "mlp": ModelSpec("mlp", "LfF's MLP (flatten, 3 x 100 ReLU, fc): images or tabular rows (adult)",
                     lambda *, num_classes, input_shape: MLP(num_classes=num_classes, in_features=_flat_features(input_shape))),
    "resnet18": ModelSpec("resnet18", "ResNet-18, CIFAR stem (3x3, no max-pool)",
                          lambda *, num_classes, input_shape: ResNet18(num_classes=num_classes, in_channels=input_shape[0], stem="cifar")),
    "resnet18-imagenet": ModelSpec("resnet18-imagenet", "ResNet-18, ImageNet stem (7x7/2 + max-pool)",
                                   lambda *, num_classes, input_shape: ResNet18(num_classes=num_classes, in_channels=input_shape[0], stem="imagenet")),
}
