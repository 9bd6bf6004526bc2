"""Naming the classifier head of any nn.Module, and reading the bottleneck (the head's input)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import ModelError


def default_head_name(model: nn.Module) -> str | None:
    return getattr(model, "head_name", None)


def resolve_head(model: nn.Module, head: str | None = None) -> tuple[str, nn.Module]:
    """Return ``(name, module)`` of the classifier head. ``head`` defaults to ``model.head_name``.

    A wrong name raises an error listing the module names the user can choose from.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel):  # under torchrun: the user's module inside
        model = model.module
    name = head or default_head_name(model)
    modules = dict(model.named_modules())
    if name is None:
        raise ModelError(
            "name the classifier head module (head=...); modules of this model: " + ", ".join(n for n in modules if n)
        )
    if name not in modules or name == "":
        raise ModelError(
            f"no module named {name!r} in the model; available module names: " + ", ".join(n for n in modules if n)
        )
    return name, modules[name]


class BottleneckTap:
    """Captures the input of the head module (the bottleneck z) during forward passes."""

    def __init__(self, model: nn.Module, head: str | None = None) -> None:
        self.name, self.module = resolve_head(model, head)
        self.z: torch.Tensor | None = None
        self._handle = self.module.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args) -> None:
        self.z = args[0]

    def remove(self) -> None:
        self._handle.remove()


@contextmanager
def tap_bottleneck(model: nn.Module, head: str | None = None) -> Iterator[BottleneckTap]:
    """Context manager: ``with tap_bottleneck(model) as tap: logits = model(x); z = tap.z``."""
    tap = BottleneckTap(model, head)
    try:
        yield tap
    finally:
        tap.remove()


def forward_with_bottleneck(
    model: nn.Module, x: torch.Tensor, head: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(logits, z)`` for a batch; z is flattened to (N, d)."""
    with tap_bottleneck(model, head) as tap:
        logits = model(x)
    if tap.z is None:
        raise ModelError(f"the head module {tap.name!r} was not called in the forward pass")
    return logits, tap.z.flatten(1)


def head_shape(model: nn.Module, head: str | None = None) -> tuple[int, int]:
    """(in_features, out_features) of a linear head, used to build a same-shaped privacy head."""
    name, module = resolve_head(model, head)
    if not isinstance(module, nn.Linear):
        raise ModelError(not_linear_head(name, module))
    return module.in_features, module.out_features


def not_linear_head(name: str, module: nn.Module) -> str:
    """Why ``module`` cannot be the head, and the exact name to use instead when it holds nn.Linear layers (a
    ``Sequential(Dropout, Linear)`` head: name its Linear, ``classifier.1``)."""
    inner = [f"{name}.{n}" for n, m in module.named_modules() if n and isinstance(m, nn.Linear)]
    text = f"the head {name!r} is a {type(module).__name__}; debiaskit needs an nn.Linear head (the layer that computes the logits"
    if not inner:
        return text + "; wrap any other head so that its linear layer is a named module)"
    last = inner[-1]
    text += f"): name the Linear inside it, --head {last} when training (head={last!r} in Python)"
    if len(inner) > 1:
        text += (
            f"; {name!r} holds {len(inner)} Linear layers ({', '.join(inner)}), the last computes the logits "
            "and its input is the bottleneck"
        )
    return text
