"""Bias recipes: turn grayscale images + labels into biased samples (x, y, b).

A recipe has two halves, kept apart so that counterfactual pairs come for free:
``assign_bias`` draws bias labels for targets at a correlation rho, and ``render`` draws an image
for given (digit, bias) pairs. Any grayscale image source can be combined with any recipe.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from .._validate import UNIT_INTERVAL, check_param_names, require
from ..errors import ConfigError
from ._corrupted import draw_corrupted

# Bahng et al. (ReBias) palette; note 225 (not 255) in entries 3 and 4, as in the original.
BIASED_MNIST_PALETTE = (
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (225, 225, 0),
    (225, 0, 225),
    (0, 255, 255),
    (255, 128, 0),
    (255, 0, 128),
    (128, 0, 255),
    (128, 128, 128),
)
# LfF Colored MNIST mean foreground colours (RGB in [0, 1]).
COLORED_MNIST_MEANS = (
    (0.984, 0.313, 0.169),
    (0.991, 0.916, 0.352),
    (0.673, 0.461, 0.580),
    (0.783, 0.832, 0.601),
    (0.088, 0.778, 0.982),
    (0.321, 0.961, 0.446),
    (0.025, 0.236, 0.759),
    (0.555, 0.102, 0.762),
    (0.208, 0.393, 0.019),
    (0.834, 0.202, 0.267),
)
COLORED_MNIST_SIGMA = {1: 0.05, 2: 0.02, 3: 0.01, 4: 0.005, 5: 0.002}
# Right-half palette of Multi-Color MNIST: distinct from the left one so the two biases differ.
MULTICOLOR_RIGHT_PALETTE = (
    (128, 0, 0),
    (0, 128, 0),
    (0, 0, 128),
    (255, 255, 255),
    (64, 64, 64),
    (0, 128, 128),
    (128, 128, 0),
    (255, 192, 203),
    (160, 82, 45),
    (173, 216, 230),
)


def assign_by_rho(y: np.ndarray, *, rho: float, num_bias: int, rng: np.random.Generator) -> np.ndarray:
    """Bahng et al.'s rule, per class: shuffle the class's indices; the first int(n * rho) get the
    class's own bias value; the rest are spread evenly, in chunks of ceil(rest / (N_B - 1)), over
    bias values (y + 1 .. y + N_B - 1) mod N_B. rho = 1 / N_B gives uniform bias labels."""
    b = np.empty(len(y), dtype=np.int64)
    for k in np.unique(y):
        idx = np.flatnonzero(y == k)
        rng.shuffle(idx)
        n_aligned = int(len(idx) * rho)
        b[idx[:n_aligned]] = k % num_bias
        rest = idx[n_aligned:]
        if len(rest):
            chunk = math.ceil(len(rest) / (num_bias - 1))
            for j in range(num_bias - 1):
                b[rest[j * chunk : (j + 1) * chunk]] = (k + 1 + j) % num_bias
    return b


def _check_rho(name: str, value: float, num_bias: int) -> float:
    return float(require(name, value, UNIT_INTERVAL, hint="the share of bias-aligned samples"))


def _check_unit(name: str, value: float, param: Param) -> float:
    return float(require(name, value, UNIT_INTERVAL, hint=param.help))


@dataclass(frozen=True)
class Param:
    default: float
    help: str


@dataclass(frozen=True)
class Recipe:
    """A bias recipe. ``params`` are the knobs of ``assign`` (rho-like, in [0, 1])."""

    name: str
    description: str
    bias_names: tuple[str, ...]
    channels: int
    mean: float
    std: float
    params: dict[str, Param]
    assign: Callable[[np.ndarray, dict, int, np.random.Generator], np.ndarray]
    draw: Callable[[Tensor, Tensor, torch.Generator], Tensor]
    unbiased: dict[str, float] = field(default_factory=dict)  # params giving uniform bias
    color_input: bool = False  # True when ``draw`` also accepts colour images (N, H, W, 3) / (N, 3, H, W)
    # params of the image, not of the correlation (e.g. texture contrast): passed to ``draw`` as keywords and
    # kept as given in the unbiased splits, which only make the correlation params uniform
    render_params: tuple[str, ...] = ()

    def resolve(self, params: dict | None, num_bias: int) -> dict[str, float]:
        params = check_param_names(params, self.params, owner=f"recipe {self.name}")
        out = {k: p.default for k, p in self.params.items()}
        out.update(
            {
                k: _check_rho(k, v, num_bias) if k not in self.render_params else _check_unit(k, v, self.params[k])
                for k, v in params.items()
            }
        )
        return out

    def uniform_params(self, num_bias: int, resolved: dict | None = None) -> dict[str, float]:
        """The params of the unbiased splits: uniform bias, the image params of ``resolved`` (default theirs)."""
        resolved = resolved or {}
        return {
            k: (resolved.get(k, p.default) if k in self.render_params else 1.0 / num_bias)
            for k, p in self.params.items()
        }

    def assign_bias(self, y: np.ndarray, *, params: dict, num_bias: int, seed: int) -> np.ndarray:
        return self.assign(np.asarray(y), self.resolve(params, num_bias), num_bias, np.random.default_rng(seed))

    def render(self, digits: Tensor, b: Tensor, *, seed: int, params: dict | None = None) -> Tensor:
        """uint8 (N, C, H, W) images of ``digits`` (uint8 N x H x W) with bias labels ``b``; ``params``: the
        resolved params, of which the ``render_params`` reach ``draw`` (defaults when absent)."""
        gen = torch.Generator().manual_seed(int(seed))
        kwargs = {k: (params or {}).get(k, self.params[k].default) for k in self.render_params}
        return self.draw(digits, b, gen, **kwargs)


def _single(rho_key: str = "rho"):
    def assign(y, params, num_bias, rng):
        return assign_by_rho(y, rho=params[rho_key], num_bias=num_bias, rng=rng)

    return assign


def _draw_background(digits: Tensor, b: Tensor, gen: torch.Generator) -> Tensor:
    """Biased MNIST: digit binarised to white, background (pixels == 0) in the bias colour."""
    palette = torch.tensor(BIASED_MNIST_PALETTE, dtype=torch.uint8)
    colour = palette[b % len(palette)][:, :, None, None]  # N,3,1,1
    fg = (digits > 0)[:, None]
    return torch.where(fg, torch.full_like(colour, 255), colour).expand(-1, -1, *digits.shape[1:]).contiguous()


def _draw_foreground(severity: int) -> Callable:
    sigma = COLORED_MNIST_SIGMA[severity]

    def draw(digits: Tensor, b: Tensor, gen: torch.Generator) -> Tensor:
        """Colored MNIST (LfF): clamp(mean colour + N(0, sigma^2) per image, 0, 1) * digit."""
        means = torch.tensor(COLORED_MNIST_MEANS)[b % 10]
        colour = (means + sigma * torch.randn(means.shape, generator=gen)).clamp(0, 1)
        img = colour[:, :, None, None] * (digits.float() / 255.0)[:, None]
        return (img * 255).round().clamp(0, 255).to(torch.uint8)

    return draw


def _assign_two(y, params, num_bias, rng):
    left = assign_by_rho(y, rho=params["rho"], num_bias=num_bias, rng=rng)
    right = assign_by_rho(y, rho=params["rho_right"], num_bias=num_bias, rng=rng)
    return np.stack([left, right], axis=1)


def _draw_two_backgrounds(digits: Tensor, b: Tensor, gen: torch.Generator) -> Tensor:
    """Multi-Color MNIST: left half of the background in colour b_L, right half in colour b_R."""
    left = torch.tensor(BIASED_MNIST_PALETTE, dtype=torch.uint8)[b[:, 0] % 10]
    right = torch.tensor(MULTICOLOR_RIGHT_PALETTE, dtype=torch.uint8)[b[:, 1] % 10]
    w = digits.shape[-1]
    bg = torch.empty((len(digits), 3, *digits.shape[1:]), dtype=torch.uint8)
    bg[..., : w // 2] = left[:, :, None, None]
    bg[..., w // 2 :] = right[:, :, None, None]
    fg = (digits > 0)[:, None].expand_as(bg)
    return torch.where(fg, torch.full_like(bg, 255), bg)


# Texture bias: stripes at 5 orientations x 2 periods (px); texture k is the bias value k.
TEXTURE_STRIPES = tuple((angle, period) for period in (3.0, 6.0) for angle in (0.0, 36.0, 72.0, 108.0, 144.0))


def _draw_texture(digits: Tensor, b: Tensor, gen: torch.Generator, *, contrast: float = 0.5) -> Tensor:
    """Texture bias: binary stripes (orientation and period set by b, random phase per image) laid over the
    whole grayscale image, x = (1 - contrast) * image + contrast * 255 * stripes (default 0.5: both at half
    contrast). A texture a convolution picks up in one layer, while the shape is only partly visible. On
    ``texture-toy`` a short vanilla run learns the texture almost exclusively (the case FFW cannot repair - no
    debiased sub-network; tests/test_ffw_diagnosis.py); on fashion-mnist see docs/design/ffw-diagnosis.md
    for the contrast that leaves FFW nothing to find."""
    n, h, w = digits.shape
    angle, period = (torch.tensor(v, dtype=torch.float32)[b % len(TEXTURE_STRIPES)] for v in zip(*TEXTURE_STRIPES))
    theta = torch.deg2rad(angle)[:, None, None]
    ii, jj = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    phase = torch.rand(n, generator=gen)[:, None, None] * period[:, None, None]
    coord = ii * torch.cos(theta) + jj * torch.sin(theta) + phase
    stripes = (torch.remainder(coord, period[:, None, None]) < period[:, None, None] / 2).float()
    img = (1.0 - contrast) * digits.float() + (255.0 * contrast) * stripes
    return img.round().clamp(0, 255).to(torch.uint8)[:, None]


# Position bias: a bright 4 x 4 patch at one of 10 places on the image border, the place set by b (fractions of
# (H - 4, W - 4), clockwise from the top-left corner). Every patch has the same size and brightness: only where it
# sits tells b, a shortcut that is neither a colour nor a texture.
WATERMARK_SIZE = 4
WATERMARK_PLACES = (
    (0.0, 0.0),
    (0.0, 1 / 3),
    (0.0, 2 / 3),
    (0.0, 1.0),
    (0.5, 1.0),
    (1.0, 1.0),
    (1.0, 2 / 3),
    (1.0, 1 / 3),
    (1.0, 0.0),
    (0.5, 0.0),
)


def watermark_corners(h: int, w: int) -> list[tuple[int, int]]:
    """Top-left (row, col) of the patch of each bias value on an H x W image."""
    return [(round(fy * (h - WATERMARK_SIZE)), round(fx * (w - WATERMARK_SIZE))) for fy, fx in WATERMARK_PLACES]


def _draw_watermark(digits: Tensor, b: Tensor, gen: torch.Generator) -> Tensor:
    """Watermark bias: the grayscale image with a white 4 x 4 patch at the border place of b."""
    out = digits.clone()
    corners = watermark_corners(*digits.shape[1:])
    for value, (r, c) in enumerate(corners):
        rows = (b % len(corners)) == value
        out[rows, r : r + WATERMARK_SIZE, c : c + WATERMARK_SIZE] = 255
    return out[:, None]


def stripes_grating(b: int, h: int = 28, w: int = 28) -> Tensor:
    """The bias texture of BENCHMARKS.md, "Your own model and data": a sinusoidal grating in [0, 1], orientation 36 deg * (b mod 5),
    period 4 px (b < 5) or 7 px (b >= 5)."""
    angle = math.radians(36 * (b % 5))
    period = 4.0 if b % 10 < 5 else 7.0
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return 0.5 + 0.5 * torch.sin(2 * math.pi * (u * math.cos(angle) + v * math.sin(angle)) / period)


def _draw_stripes(digits: Tensor, b: Tensor, gen: torch.Generator) -> Tensor:
    """Striped background (BENCHMARKS.md, "Your own model and data"): pixel = max(item, 110 * grating of b): the texture shows where the item is
    darker."""
    gratings = torch.stack([stripes_grating(k, *digits.shape[1:]) for k in range(10)]) * 110.0
    img = torch.maximum(digits.float(), gratings[b % 10])
    return img.round().clamp(0, 255).to(torch.uint8)[:, None]


RECIPES: dict[str, Recipe] = {}


def register_recipe(recipe: Recipe) -> Recipe:
    RECIPES[recipe.name] = recipe
    return recipe


register_recipe(
    Recipe(
        name="biased",
        description="Biased MNIST (Bahng et al. 2020): background colour correlated with the class at rho",
        bias_names=("background",),
        channels=3,
        mean=0.5,
        std=0.5,
        params={"rho": Param(0.99, "share of samples whose background has their class's colour")},
        assign=_single(),
        draw=_draw_background,
    )
)
register_recipe(
    Recipe(
        name="colored",
        description="Colored MNIST (Nam et al. 2020, LfF): noisy foreground colour, severity 4 (sigma 0.005)",
        bias_names=("foreground",),
        channels=3,
        mean=0.0,
        std=1.0,
        params={"rho": Param(0.99, "share of bias-aligned samples (1 - conflicting ratio)")},
        assign=_single(),
        draw=_draw_foreground(4),
    )
)
register_recipe(
    Recipe(
        name="multicolor",
        description="Multi-Color MNIST (Li et al. 2022, DebiAN): left/right background colours, two biases",
        bias_names=("left", "right"),
        channels=3,
        mean=0.5,
        std=0.5,
        params={
            "rho": Param(0.99, "rho_L, correlation of the left colour"),
            "rho_right": Param(0.95, "rho_R, correlation of the right colour"),
        },
        assign=_assign_two,
        draw=_draw_two_backgrounds,
    )
)
register_recipe(
    Recipe(
        name="texture",
        description="Texture bias: stripes (5 orientations x 2 periods) over the whole image, correlated with the "
        "class at rho; the vanilla model leans on the texture almost exclusively (on texture-toy, and on "
        "texture-fashion-mnist with contrast=0.8 after 1 epoch: no debiased sub-network for FFW)",
        bias_names=("texture",),
        channels=1,
        mean=0.5,
        std=0.5,
        params={
            "rho": Param(0.995, "share of samples carrying their class's texture"),
            "contrast": Param(0.5, "weight of the stripes in the image, 1 - that of the item (all splits)"),
        },
        assign=_single(),
        draw=_draw_texture,
        render_params=("contrast",),
    )
)
register_recipe(
    Recipe(
        name="watermark",
        description="Watermark position bias: a white 4x4 patch at one of 10 border places, the place correlated with "
        "the class at rho (same size and brightness everywhere: a position shortcut, not a colour)",
        bias_names=("watermark",),
        channels=1,
        mean=0.5,
        std=0.5,
        params={"rho": Param(0.99, "share of samples whose patch sits at their class's place")},
        assign=_single(),
        draw=_draw_watermark,
    )
)
register_recipe(
    Recipe(
        name="stripes",
        description="Striped background (BENCHMARKS.md, 'Your own model and data'): a sinusoidal grating (5 orientations x 2 periods) "
        "drawn where the item is darker, correlated with the class at rho",
        bias_names=("stripes",),
        channels=1,
        mean=0.5,
        std=0.5,
        params={"rho": Param(0.99, "share of samples carrying their class's grating")},
        assign=_single(),
        draw=_draw_stripes,
    )
)
register_recipe(
    Recipe(
        name="corrupted",
        description="Corrupted CIFAR-10 protocol (Nam et al. 2020, LfF): corruption family k paired with class k "
        "(gaussian/shot/impulse noise, gaussian/motion blur, contrast, brightness, pixelate, fog, wave)",
        bias_names=("corruption",),
        channels=3,
        mean=0.5,
        std=0.5,
        params={
            "rho": Param(
                0.99, "share of samples corrupted with their class's family (0.95/0.98/0.99/0.995 in the benchmark)"
            )
        },
        assign=_single(),
        draw=draw_corrupted,
        color_input=True,
    )
)


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; available: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]
