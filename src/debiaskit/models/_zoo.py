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

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        widths=(16, 32, 64, 128),
        kernel_size: int = 7,
        strides=(1, 1, 1, 1),
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for width, stride in zip(widths, strides):
            layers += [
                nn.Conv2d(c_in, width, kernel_size, stride=stride, padding=kernel_size // 2),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=False),
            ]
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
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
            )
        elif stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 7, 2, 3, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.MaxPool2d(3, 2, 1),
            )
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


class TVBasicBlock(nn.Module):
    """torchvision's BasicBlock as written there: one ``self.relu`` (in place) called twice, ``out += identity``,
    a 1x1 ``downsample`` (conv + BN) where the width or stride changes. Kept in that form on purpose: it is the
    shape most user ResNets have, and the one FFW's structure analysis must read (``ffw/_structure.py``)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class TVResNetSmall(nn.Module):
    """A small torchvision-style ResNet for 28 x 28 inputs: 3x3 stem (``conv1``/``bn1``/shared ``relu``), three
    stages of ``blocks`` :class:`TVBasicBlock` each at widths 16/32/64 (stride 1/2/2), average pool, head ``fc``."""

    head_name = "fc"

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, widths=(16, 32, 64), blocks=(1, 1, 1)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages, c_in = [], widths[0]
        for i, (width, n) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            stages.append(
                nn.Sequential(
                    *[TVBasicBlock(c_in if j == 0 else width, width, stride if j == 0 else 1) for j in range(n)]
                )
            )
            c_in = width
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ResidualBlock(nn.Module):
    """The block of the user model of BENCHMARKS.md, "Your own model and data": ``torch.relu`` called functionally, a 1x1 ``skip``
    convolution where the width or stride changes."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm_a = nn.BatchNorm2d(c_out)
        self.conv_b = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.norm_b = nn.BatchNorm2d(c_out)
        self.skip = nn.Conv2d(c_in, c_out, 1, stride, bias=False) if (stride != 1 or c_in != c_out) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm_a(self.conv_a(x)))
        return torch.relu(self.norm_b(self.conv_b(out)) + self.skip(x))


class ResidualCNN(nn.Module):
    """The residual CNN of BENCHMARKS.md, "Your own model and data" (``benchmarks/byo_user_model.py``) in the zoo: stride-2 stem, three
    :class:`ResidualBlock` (width, 2 width stride 2, 4 width stride 2), average pool, dropout, head ``classifier``."""

    head_name = "classifier"

    def __init__(self, *, num_classes: int = 10, in_channels: int = 1, width: int = 16, dropout: float = 0.2) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, 2, 1, bias=False)
        self.stem_norm = nn.BatchNorm2d(width)
        self.block1 = ResidualBlock(width, width)
        self.block2 = ResidualBlock(width, 2 * width, stride=2)
        self.block3 = ResidualBlock(2 * width, 4 * width, stride=2)
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem_norm(self.stem(x)))
        x = self.block3(self.block2(self.block1(x)))
        return self.classifier(self.drop(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)))


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
    "simple-conv": ModelSpec(
        "simple-conv",
        "Bahng's SimpleConvNet (7x7 conv-BN-ReLU x4: 16/32/64/128, GAP, fc)",
        lambda *, num_classes, input_shape: SimpleConvNet(num_classes=num_classes, in_channels=input_shape[0]),
    ),
    "simple-conv-small": ModelSpec(
        "simple-conv-small",
        "CPU-sized SimpleConvNet: same depth and width, stride 2 in every block",
        lambda *, num_classes, input_shape: SimpleConvNet(
            num_classes=num_classes, in_channels=input_shape[0], strides=(2, 2, 2, 2)
        ),
    ),
    "mlp": ModelSpec(
        "mlp",
        "LfF's MLP (flatten, 3 x 100 ReLU, fc): images or tabular rows (adult)",
        lambda *, num_classes, input_shape: MLP(num_classes=num_classes, in_features=_flat_features(input_shape)),
    ),
    "resnet18": ModelSpec(
        "resnet18",
        "ResNet-18, CIFAR stem (3x3, no max-pool)",
        lambda *, num_classes, input_shape: ResNet18(num_classes=num_classes, in_channels=input_shape[0], stem="cifar"),
    ),
    "resnet18-imagenet": ModelSpec(
        "resnet18-imagenet",
        "ResNet-18, ImageNet stem (7x7/2 + max-pool)",
        lambda *, num_classes, input_shape: ResNet18(
            num_classes=num_classes, in_channels=input_shape[0], stem="imagenet"
        ),
    ),
    "tv-resnet-small": ModelSpec(
        "tv-resnet-small",
        "torchvision-style ResNet (shared in-place relu, out += identity, "
        "1x1 downsample): 3x3 stem, one BasicBlock per stage at 16/32/64, fc",
        lambda *, num_classes, input_shape: TVResNetSmall(num_classes=num_classes, in_channels=input_shape[0]),
    ),
    "residual-cnn": ModelSpec(
        "residual-cnn",
        "the residual CNN of BENCHMARKS.md, 'Your own model and data' (functional relu, 1x1 skips, dropout 0.2, head classifier), width 16",
        lambda *, num_classes, input_shape: ResidualCNN(num_classes=num_classes, in_channels=input_shape[0]),
    ),
}
