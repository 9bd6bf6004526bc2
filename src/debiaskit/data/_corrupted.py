"""Corrupted CIFAR-10 protocol (Nam et al. 2020, LfF) on any image source.

The bias is a corruption *family* paired with the class: family k <-> class k, a share rho of each
class is aligned. Ten families at one fixed severity, written as vectorised torch ops; every random
draw comes from the ``torch.Generator`` handed to :func:`draw_corrupted`, so a render is a pure
function of (images, bias labels, seed) and counterfactual re-renders are reproducible.

Inputs may be grayscale (N, H, W), channels-last colour (N, H, W, 3) or channels-first (N, 3, H, W);
the output is always uint8 (N, 3, H, W) (grayscale is replicated to three channels).

Example::

    from debiaskit.data import make_splits
    splits = make_splits("corrupted-mnist", params={"rho": 0.99}, seed=0)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import DataError

_Family = Callable[[Tensor, torch.Generator], Tensor]  # float (n, 3, H, W) in [0, 1] -> same


def _gaussian_noise(x: Tensor, gen: torch.Generator) -> Tensor:
    return x + 0.3 * torch.randn(x.shape, generator=gen)


def _shot_noise(x: Tensor, gen: torch.Generator) -> Tensor:
    # Poisson photon noise at 6 photons per unit intensity (CIFAR-10-C: 60..3, lower = stronger);
    # the +0.1 floor makes a black background noisy too, otherwise MNIST digits would hide it.
    rate = 6.0
    return torch.poisson((x + 0.1) * rate, generator=gen) / rate - 0.1


def _impulse_noise(x: Tensor, gen: torch.Generator) -> Tensor:
    u = torch.rand(x.shape[0], 1, *x.shape[2:], generator=gen).expand_as(x)
    x = torch.where(u < 0.09, torch.zeros_like(x), x)  # pepper
    return torch.where(u > 0.91, torch.ones_like(x), x)  # salt


def _shift_sum(x: Tensor, weights: list[tuple[int, int, float]], radius: int) -> Tensor:
    """sum_k w_k * x shifted by (dy_k, dx_k), replicate padding (size kept).

    Sums of shifted slices are much faster on CPU than a 9 x 9 single-channel conv2d.
    """
    h, w = x.shape[2:]
    padded = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    out = torch.zeros_like(x)
    for dy, dx, wt in weights:
        out += wt * padded[:, :, radius + dy : radius + dy + h, radius + dx : radius + dx + w]
    return out


def _gaussian_blur(x: Tensor, gen: torch.Generator) -> Tensor:
    sigma, radius = 1.5, 4
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    taps: list[float] = (g / g.sum()).tolist()
    # separable: rows, then columns
    x = _shift_sum(x, [(0, d, taps[d + radius]) for d in range(-radius, radius + 1)], radius)
    return _shift_sum(x, [(d, 0, taps[d + radius]) for d in range(-radius, radius + 1)], radius)


def _motion_blur(x: Tensor, gen: torch.Generator) -> Tensor:
    # a 9-pixel diagonal streak: direction differs from gaussian blur's isotropy
    return _shift_sum(x, [(d, d, 1 / 9) for d in range(-4, 5)], 4)


def _contrast(x: Tensor, gen: torch.Generator) -> Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * 0.3 + mean


def _brightness(x: Tensor, gen: torch.Generator) -> Tensor:
    return x * 0.6 + 0.4


def _pixelate(x: Tensor, gen: torch.Generator) -> Tensor:
    h, w = x.shape[2:]
    small = F.adaptive_avg_pool2d(x, (max(1, h // 4), max(1, w // 4)))
    return F.interpolate(small, size=(h, w), mode="nearest")


def _fog(x: Tensor, gen: torch.Generator) -> Tensor:
    # smooth low-frequency haze: coarse noise upsampled bilinearly, same on every channel
    h, w = x.shape[2:]
    coarse = torch.rand(x.shape[0], 1, 4, 4, generator=gen)
    haze = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return (x + 0.8 * haze) / 1.6 + 0.1


def _wave(x: Tensor, gen: torch.Generator) -> Tensor:
    # elastic-like horizontal sine displacement with a random phase per image
    n, _, h, w = x.shape
    phase = 2 * math.pi * torch.rand(n, 1, 1, generator=gen)
    ys = torch.linspace(-1, 1, h).view(1, h, 1).expand(n, h, w)
    xs = torch.linspace(-1, 1, w).view(1, 1, w).expand(n, h, w)
    shifted = xs + 0.25 * torch.sin(ys * 3 * math.pi + phase)
    grid = torch.stack([shifted, ys], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


# Family k is paired with class k. Names follow Hendrycks & Dietterich's corruption names.
CORRUPTIONS: tuple[tuple[str, _Family], ...] = (
    ("gaussian_noise", _gaussian_noise),
    ("shot_noise", _shot_noise),
    ("impulse_noise", _impulse_noise),
    ("gaussian_blur", _gaussian_blur),
    ("motion_blur", _motion_blur),
    ("contrast", _contrast),
    ("brightness", _brightness),
    ("pixelate", _pixelate),
    ("fog", _fog),
    ("wave", _wave),
)
CORRUPTION_NAMES = tuple(name for name, _ in CORRUPTIONS)


def to_rgb_float(images: Tensor) -> Tensor:
    """uint8 (N, H, W), (N, H, W, 3) or (N, 3, H, W) -> float (N, 3, H, W) in [0, 1]."""
    if images.ndim == 3:
        x = images[:, None].expand(-1, 3, -1, -1)
    elif images.ndim == 4 and images.shape[1] == 3:
        x = images
    elif images.ndim == 4 and images.shape[-1] == 3:
        x = images.permute(0, 3, 1, 2)
    else:
        raise DataError(
            f"corrupted recipe: images must be (N, H, W), (N, H, W, 3) or (N, 3, H, W); got shape {tuple(images.shape)}"
        )
    return x.float() / 255.0


def draw_corrupted(images: Tensor, b: Tensor, gen: torch.Generator, *, chunk: int = 4096) -> Tensor:
    """Apply corruption family ``b[i]`` (mod 10) to image i; uint8 (N, 3, H, W).

    Work is chunked (bounded memory on 50k-image splits) and, inside a chunk, vectorised per family;
    the generator is consumed in a fixed order, so equal inputs and seed give equal outputs.
    """
    b = torch.as_tensor(b).long() % len(CORRUPTIONS)
    out = []
    for start in range(0, len(images), chunk):
        x = to_rgb_float(images[start : start + chunk])
        fam = b[start : start + chunk]
        y = torch.empty_like(x)
        for k, (_, fn) in enumerate(CORRUPTIONS):
            sel = torch.nonzero(fam == k).flatten()
            if len(sel):
                y[sel] = fn(x[sel].contiguous(), gen)
        out.append((y.clamp(0, 1) * 255).round().to(torch.uint8))
    if not out:
        return to_rgb_float(images).to(torch.uint8)
    return torch.cat(out)
