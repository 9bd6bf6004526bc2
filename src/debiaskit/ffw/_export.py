"""Export FFW's hard masks as plain networks that load without any gate class.

- unstructured: the original architecture with the pruned weights set to 0 (kept weights unchanged);
- structured: a physically smaller network: the pruned units (conv out-channels / linear neurons) are
  removed from their layer, from the BatchNorm between the layer and its activation, and the matching
  input channels / columns are removed from the next conv/linear (the head included). In a ResNet
  (debiaskit's BasicBlock) these are each block's internal channels: conv1's outputs, bn1, conv2's
  inputs; the residual stream keeps its width (see ``_structure.py``).

Why the structured surgery is exact: a structured gate multiplies the *activation output* of a unit
by 0, so the unit feeds exactly 0 into whatever comes next - whatever the BatchNorm shift before the
activation was. Between the activation and the next conv/linear only zero-preserving, channel-wise
layers are allowed (pooling, flatten, dropout), so the unit's input column in the next layer only
ever multiplies zeros and can be deleted. A linear layer after a flatten of a (C, H, W) map reads
channel c in columns [c*H*W, (c+1)*H*W).
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ModelError
from ._gates import NORM_TYPES


def apply_unstructured_masks(model: nn.Module, masks: dict[str, Tensor], *, copy_model: bool = True) -> nn.Module:
    """Return ``model`` with ``weight * mask`` baked into every masked layer (zeros stay plain zeros).

    ``masks`` maps a module name to a 0/1 tensor of its weight's shape (keys may end in ``.weight``).
    """
    out = copy.deepcopy(model) if copy_model else model
    modules = dict(out.named_modules())
    with torch.no_grad():
        for key, mask in masks.items():
            name = key[: -len(".weight")] if key.endswith(".weight") else key
            if name not in modules or not hasattr(modules[name], "weight"):
                raise ModelError(f"mask {key!r} names no layer with a weight in this model")
            weight = modules[name].weight
            if weight.shape != mask.shape:
                raise ModelError(f"mask {key!r} has shape {tuple(mask.shape)}, the weight {tuple(weight.shape)}")
            weight.mul_(mask.to(weight.dtype))
    return out


def _units(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _slice_out(module: nn.Module, keep: Tensor) -> nn.Module:
    """A copy of conv/linear/BatchNorm ``module`` with only the output units ``keep``."""
    new = copy.deepcopy(module)
    with torch.no_grad():
        if isinstance(module, NORM_TYPES):
            new.num_features = len(keep)
            for attr in ("weight", "bias"):
                if getattr(module, attr) is not None:
                    setattr(new, attr, nn.Parameter(getattr(module, attr)[keep].clone()))
            for attr in ("running_mean", "running_var"):
                if getattr(module, attr) is not None:
                    setattr(new, attr, getattr(module, attr)[keep].clone())
            return new
        new.weight = nn.Parameter(module.weight[keep].clone())
        if module.bias is not None:
            new.bias = nn.Parameter(module.bias[keep].clone())
        if isinstance(module, nn.Linear):
            new.out_features = len(keep)
        else:
            new.out_channels = len(keep)
    return new


def _slice_in(module: nn.Module, cols: Tensor, zero: Tensor | None = None) -> nn.Module:
    """A copy of conv/linear ``module`` reading only input channels/columns ``cols``; columns listed
    in ``zero`` (positions within ``cols``) are set to 0 (a layer whose units were all pruned keeps one
    dead unit, and its consumer must ignore it)."""
    new = copy.deepcopy(module)
    with torch.no_grad():
        weight = module.weight[:, cols].clone()
        if zero is not None and len(zero):
            weight[:, zero] = 0
        new.weight = nn.Parameter(weight)
        if isinstance(module, nn.Linear):
            new.in_features = len(cols)
        else:
            new.in_channels = len(cols)
    return new


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def prune_structured(model: nn.Module, masks: dict[str, Tensor], *, head: str, example: Tensor) -> tuple[nn.Module, dict[str, Any]]:
    """Physically remove the pruned units of a structured FFW result (see module docstring).

    ``masks`` maps a gated layer's name to a 0/1 vector over its output units (the gate points of
    :func:`install_gates`: every layer of a chain-shaped encoder; the internal conv1 channels of each
    residual BasicBlock). Returns the smaller model (a deep copy: ``model`` is not modified) and its
    ``shapes`` (module name -> new sizes), which :func:`resize_like` uses to rebuild the architecture
    before loading the weights.

    Example::

        pruned, shapes = prune_structured(vanilla, gated.hard_masks(), head="fc", example=x[:2])
        count_parameters(pruned) < count_parameters(vanilla)
    """
    from ._structure import analyse_structure
    structure = analyse_structure(model, example, head)
    out = copy.deepcopy(model)
    modules = dict(model.named_modules())
    for layer, mask in masks.items():
        if layer not in structure.points:
            why = structure.ungated.get(layer)
            raise ModelError(f"structured mask {layer!r} names no gated layer of this model"
                             + (f" (it is not gated: {why})" if why else ""))
        point = structure.points[layer]
        mask = mask.bool()
        if mask.numel() != _units(modules[layer]):
            raise ModelError(f"structured mask {layer!r} has {mask.numel()} units, the layer {_units(modules[layer])}")
        keep = torch.nonzero(mask).flatten()
        dead = torch.zeros(0, dtype=torch.long)
        if len(keep) == 0:  # keep one unit so every layer stays valid; its consumer column is zeroed
            keep, dead = torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)
        _set_module(out, layer, _slice_out(out.get_submodule(layer), keep))
        for norm in point.norms:
            _set_module(out, norm, _slice_out(out.get_submodule(norm), keep))
        consumer = point.consumer
        target = out.get_submodule(consumer)
        units = _units(modules[layer])
        if isinstance(target, nn.Linear):
            fan = target.in_features // units   # spatial positions per channel after a flatten
            if fan * units != target.in_features:
                raise ModelError(f"cannot map the units of {layer!r} onto the inputs of {consumer!r}")
            cols = (keep[:, None] * fan + torch.arange(fan)[None, :]).flatten()
            zero = (dead[:, None] * fan + torch.arange(fan)[None, :]).flatten() if len(dead) else None
        else:
            cols, zero = keep, (dead if len(dead) else None)
        _set_module(out, consumer, _slice_in(target, cols, zero))
    out.eval()
    return out, module_shapes(out)


def module_shapes(model: nn.Module) -> dict[str, dict[str, int]]:
    """Sizes of every conv/linear/BatchNorm (what differs in a pruned network)."""
    shapes = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            shapes[name] = {"in_features": m.in_features, "out_features": m.out_features}
        elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            shapes[name] = {"in_channels": m.in_channels, "out_channels": m.out_channels}
        elif isinstance(m, NORM_TYPES):
            shapes[name] = {"num_features": m.num_features}
    return shapes


def resize_like(model: nn.Module, shapes: dict[str, dict[str, int]]) -> nn.Module:
    """Shrink the conv/linear/BatchNorm modules of a freshly built ``model`` to ``shapes`` (in place),
    so that a structured FFW export's state_dict loads into it. Plain torch modules only."""
    for name, size in shapes.items():
        m = model.get_submodule(name)
        if isinstance(m, nn.Linear):
            new = nn.Linear(size["in_features"], size["out_features"], bias=m.bias is not None)
        elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            new = type(m)(size["in_channels"], size["out_channels"], m.kernel_size, stride=m.stride,
                          padding=m.padding, dilation=m.dilation, groups=m.groups, bias=m.bias is not None,
                          padding_mode=m.padding_mode)
        elif isinstance(m, NORM_TYPES):
            new = type(m)(size["num_features"], eps=m.eps, momentum=m.momentum, affine=m.affine,
                          track_running_stats=m.track_running_stats)
        else:
            raise ModelError(f"cannot resize module {name!r} of type {type(m).__name__}")
        _set_module(model, name, new)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def inference_time(model: nn.Module, x: Tensor, *, repeats: int | None = None, budget_s: float = 0.5) -> float:
    """Median seconds of one forward pass of ``model`` on ``x`` (eval mode, current thread count).

    Without ``repeats``, as many passes as fit in about ``budget_s`` (3 to 20) after one warm-up pass.
    """
    model.eval()
    t0 = time.perf_counter()
    model(x)
    first = time.perf_counter() - t0
    n = repeats if repeats is not None else int(min(20, max(3, budget_s / max(first, 1e-6))))
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def unstructured_sparsity(masks: dict[str, Tensor]) -> dict[str, Any]:
    """Share of gated weights set to 0, overall and per layer."""
    per_layer = {k: 1.0 - float(m.float().mean()) for k, m in masks.items()}
    total = sum(m.numel() for m in masks.values())
    zeros = sum(int((m == 0).sum()) for m in masks.values())
    return {"overall": zeros / max(total, 1), "per_layer": per_layer, "gated": total, "zeros": zeros}


def structured_sparsity(masks: dict[str, Tensor], model: nn.Module, pruned: nn.Module | None = None) -> dict[str, Any]:
    """Share of gated units removed (overall, per layer) and, with the exported network, of parameters."""
    per_layer = {k: 1.0 - float(m.float().mean()) for k, m in masks.items()}
    total = sum(m.numel() for m in masks.values())
    zeros = sum(int((m == 0).sum()) for m in masks.values())
    out: dict[str, Any] = {"overall": zeros / max(total, 1), "per_layer": per_layer, "gated_units": total,
                           "pruned_units": zeros, "unit": "units (channels / neurons)"}
    if pruned is not None:
        before, after = count_parameters(model), count_parameters(pruned)
        out.update(parameters_before=before, parameters_after=after, parameter_sparsity=1.0 - after / before)
    return out


def save_masks(masks: dict[str, Tensor], path: Path) -> None:
    from safetensors.torch import save_file
    save_file({k: v.contiguous().to(torch.uint8) for k, v in masks.items()}, str(path))


def load_masks(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file
    return dict(load_file(str(path)))
