"""A researcher's own model, as in issue 10 - not debiaskit code: `debiaskit train --model byo_user_model:residual_cnn`.

A small residual CNN: blocks call torch.relu functionally, the skip is a 1x1 convolution when the width or
stride changes, dropout before the head, and the head is named ``classifier``.
"""

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm_a = nn.BatchNorm2d(c_out)
        self.conv_b = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.norm_b = nn.BatchNorm2d(c_out)
        self.skip = nn.Conv2d(c_in, c_out, 1, stride, bias=False) if (stride != 1 or c_in != c_out) else nn.Identity()

    def forward(self, x):
        out = torch.relu(self.norm_a(self.conv_a(x)))
        return torch.relu(self.norm_b(self.conv_b(out)) + self.skip(x))


class ResidualCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16, dropout: float = 0.2) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, 2, 1, bias=False)
        self.stem_norm = nn.BatchNorm2d(width)
        self.block1 = Block(width, width)
        self.block2 = Block(width, 2 * width, stride=2)
        self.block3 = Block(2 * width, 4 * width, stride=2)
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        x = torch.relu(self.stem_norm(self.stem(x)))
        x = self.block3(self.block2(self.block1(x)))
        return self.classifier(self.drop(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))


def residual_cnn(num_classes: int = 10, in_channels: int = 1, width: int = 16, dropout: float = 0.2) -> nn.Module:
    return ResidualCNN(num_classes=num_classes, in_channels=in_channels, width=width, dropout=dropout)
