"""Export FFW's hard masks as plain networks that load without any gate class.

- unstructured: the original architecture with the pruned weights set to 0 (kept weights unchanged);
- structured: a physically smaller network. For each gate group found by ``_structure.py`` the
  pruned units are removed from the conv/linear layers that produce them, from every per-channel
  module on the way (BatchNorm, depthwise conv) and from the inputs of every conv/linear that reads
  them (the head included). In a ResNet the channels of a residual stream are one group: a pruned
  stream channel disappears from the stem, every block that adds into it, and every layer that reads it.

Why the structured surgery is exact: ``_structure.py`` only gates a unit when it has proved, on the
traced graph, that the hard-masked unit reaches every layer that reads it as an exact zero; its
input columns there then only ever multiply zeros, and everything upstream of the gate fed nothing
else. A linear layer after a flatten of a (C, H, W) map reads channel c in columns [c*H*W, (c+1)*H*W).
:func:`prune_structured` also checks the export against the hard-masked model on the example batch.

A structured export is saved as a plain state_dict (safetensors) plus its per-module sizes
(:func:`module_shapes`); :func:`resize_like` re-shapes a freshly built copy of the original model - any
model made of standard conv/linear/BatchNorm layers, a user's own included - so that the state_dict
loads into it. No pickle, no gate class.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._io import save_tensors
from ..errors import ModelError
from ._gates import freeze, install_gates
from ._structure import CONV_TYPES, NORM_TYPES, analyse_structure


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


Layer = nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d  # what structured FFW slices (LAYER_TYPES)


def _layer(module: nn.Module, name: str) -> Layer:
    """``module`` as a conv/linear layer (the structure analysis only names such layers; anything else is a bug)."""
    if not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        raise ModelError(f"structured export: {name!r} is a {type(module).__name__}, not a conv/linear layer")
    return module


def _param(module: nn.Module, name: str, value: Tensor) -> None:
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(value.contiguous(), requires_grad=old.requires_grad))


def _slice_out(module: Layer, keep: Tensor) -> None:
    """Keep only output units ``keep`` of a conv/linear (in place)."""
    with torch.no_grad():
        _param(module, "weight", module.weight[keep])
        if module.bias is not None:
            _param(module, "bias", module.bias[keep])
    if isinstance(module, nn.Linear):
        module.out_features = len(keep)
    else:
        module.out_channels = len(keep)


def _slice_in(module: Layer, cols: Tensor, zero: Tensor | None) -> None:
    """Keep only input channels/columns ``cols`` of a conv/linear (in place); columns at positions
    ``zero`` (within ``cols``) are set to 0 (a group whose units were all pruned keeps one dead unit)."""
    with torch.no_grad():
        weight = module.weight[:, cols].clone()
        if zero is not None and len(zero):
            weight[:, zero] = 0
        _param(module, "weight", weight)
    if isinstance(module, nn.Linear):
        module.in_features = len(cols)
    else:
        module.in_channels = len(cols)


def _slice_channels(module: nn.Module, keep: Tensor) -> None:
    """Keep only channels ``keep`` of a BatchNorm or depthwise conv (in place)."""
    with torch.no_grad():
        if isinstance(module, NORM_TYPES):
            for attr in ("weight", "bias"):
                if getattr(module, attr) is not None:
                    _param(module, attr, getattr(module, attr)[keep])
            for attr in ("running_mean", "running_var"):
                if getattr(module, attr) is not None:
                    setattr(module, attr, getattr(module, attr)[keep].clone())
            module.num_features = len(keep)
            return
        module = _layer(module, "a depthwise conv")
        _param(module, "weight", module.weight[keep])
        if module.bias is not None:
            _param(module, "bias", module.bias[keep])
        module.in_channels = module.out_channels = module.groups = len(keep)


def prune_structured(
    model: nn.Module, masks: dict[str, Tensor], *, head: str, example: Tensor, check: bool = True
) -> tuple[nn.Module, dict[str, Any]]:
    """Physically remove the pruned units of a structured FFW result (see module docstring).

    ``masks`` maps a gate's name (the first layer of its group, as in :func:`install_gates`) to a 0/1
    vector over its units; groups without a mask are kept whole. Masks named ``"<layer>.weight"``
    (``install_gates(input_weights=True)``) are weight masks of the layers that read the model's
    input: their zeros are baked in before the units are removed. Returns the smaller model (a deep
    copy: ``model`` is not modified) and its ``shapes`` (module name -> sizes), which
    :func:`resize_like` uses to rebuild the architecture before loading the weights. With ``check``
    the export is compared with the hard-masked gated model on ``example`` (a ModelError if they differ).

    Example::

        pruned, shapes = prune_structured(vanilla, gated.hard_masks(), head="fc", example=x[:2])
        count_parameters(pruned) < count_parameters(vanilla)
    """
    structure = analyse_structure(model, example, head)
    weight_masks = {k: v for k, v in masks.items() if k.endswith(".weight") and k not in structure.points}
    for key in weight_masks:
        if key[: -len(".weight")] not in structure.input_layers:
            raise ModelError(
                f"weight mask {key!r}: structured FFW gates weights only in the layers that read the "
                f"model's input ({', '.join(structure.input_layers) or 'none'})"
            )
    outs: dict[str, Tensor] = {}
    chans: dict[str, Tensor] = {}
    ins: dict[str, tuple[Tensor, Tensor | None]] = {}
    for layer, mask in ((k, v) for k, v in masks.items() if k not in weight_masks):
        if layer not in structure.points:
            why = structure.ungated.get(layer)
            raise ModelError(
                f"structured mask {layer!r} names no gate of this model"
                + (f" ({why})" if why else f"; its gates are {', '.join(structure.points)}")
            )
        point = structure.points[layer]
        mask = mask.bool().flatten()
        if mask.numel() != point.units:
            raise ModelError(f"structured mask {layer!r} has {mask.numel()} units, the layer {point.units}")
        keep = torch.nonzero(mask).flatten()
        dead = None
        if len(keep) == 0:  # keep one unit so every layer stays valid; its readers' columns are zeroed
            keep, dead = torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)
        for name in point.producers:
            outs[name] = keep
        for name in point.channel_modules:
            chans[name] = keep
        for name in point.consumers:
            fan = point.fans.get(name, 1)
            spread = torch.arange(fan)[None, :]
            cols = (keep[:, None] * fan + spread).flatten()
            zero = (dead[:, None] * fan + spread).flatten() if dead is not None else None
            ins[name] = (cols, zero)
    out = apply_unstructured_masks(model, weight_masks, copy_model=True)
    for name, keep in outs.items():
        _slice_out(_layer(out.get_submodule(name), name), keep)
    for name, keep in chans.items():
        _slice_channels(out.get_submodule(name), keep)
    for name, (cols, zero) in ins.items():
        _slice_in(_layer(out.get_submodule(name), name), cols, zero)
    out.eval()
    if check:
        _check_export(model, out, masks, head=head, example=example, input_weights=bool(weight_masks))
    return out, module_shapes(out)


@torch.no_grad()
def _check_export(
    model: nn.Module, pruned: nn.Module, masks: dict[str, Tensor], *, head: str, example: Tensor, input_weights: bool
) -> None:
    """The export must equal the hard-masked gated model on ``example`` (a bug otherwise: say so)."""
    net = copy.deepcopy(model)
    freeze(net)
    gated = install_gates(net, mode="structured", head=head, example=example, input_weights=input_weights)
    for name, gate in gated.gates.items():
        if name in masks:
            gate.m.copy_(torch.where(masks[name].bool().reshape(gate.m.shape), 0.0, -1.0))
    gated.state.hard = True
    want, got = net(example), pruned(example)
    scale = float(want.abs().max()) + 1e-6
    diff = float((want - got).abs().max()) if want.shape == got.shape else math.inf
    if not diff <= 1e-4 * scale + 1e-5:
        raise ModelError(
            f"the structured export differs from the hard-masked model on the example batch (max |diff| "
            f"{diff:.3g}): a debiaskit bug - please report it with the model's code; "
            "use mode='unstructured' meanwhile"
        )


def module_shapes(model: nn.Module) -> dict[str, dict[str, int]]:
    """Sizes of every conv/linear/BatchNorm (what differs in a pruned network)."""
    shapes = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            shapes[name] = {"in_features": m.in_features, "out_features": m.out_features}
        elif isinstance(m, CONV_TYPES):
            shapes[name] = {"in_channels": m.in_channels, "out_channels": m.out_channels, "groups": m.groups}
        elif isinstance(m, NORM_TYPES):
            shapes[name] = {"num_features": m.num_features}
    return shapes


def resize_like(model: nn.Module, shapes: dict[str, dict[str, int]]) -> nn.Module:
    """Re-shape the conv/linear/BatchNorm modules of a freshly built ``model`` to ``shapes`` (in place),
    so that a structured FFW export's state_dict loads into it. Works on any model whose pruned
    modules are torch conv/linear/BatchNorm layers (subclasses included): the modules keep their type
    and settings, only their sizes and the shapes of their parameters and buffers change."""
    for name, size in shapes.items():
        try:
            m = model.get_submodule(name)
        except AttributeError as err:
            raise ModelError(
                f"cannot resize {name!r}: the rebuilt model has no such module (was it built with "
                "the same code and arguments as the exported one?)"
            ) from err
        if isinstance(m, nn.Linear):
            m.in_features, m.out_features = size["in_features"], size["out_features"]
            shape = {"weight": (m.out_features, m.in_features), "bias": (m.out_features,)}
        elif isinstance(m, CONV_TYPES):
            m.in_channels, m.out_channels = size["in_channels"], size["out_channels"]
            m.groups = size.get("groups", m.groups)
            shape = {"weight": (m.out_channels, m.in_channels // m.groups, *m.kernel_size), "bias": (m.out_channels,)}
        elif isinstance(m, NORM_TYPES):
            m.num_features = size["num_features"]
            shape = {k: (m.num_features,) for k in ("weight", "bias", "running_mean", "running_var")}
        else:
            raise ModelError(f"cannot resize module {name!r} of type {type(m).__name__}")
        for attr, dims in shape.items():
            old = getattr(m, attr, None)
            if isinstance(old, nn.Parameter):
                setattr(m, attr, nn.Parameter(torch.zeros(dims, dtype=old.dtype), requires_grad=old.requires_grad))
            elif isinstance(old, Tensor):
                setattr(m, attr, torch.zeros(dims, dtype=old.dtype))
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model`` (every element of every parameter tensor, pruned ones included)."""
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
    """Share of gated units removed (overall, per gate) and, with the exported network, of parameters;
    weight masks of input layers (``"<layer>.weight"``, n-d) are counted apart."""
    units = {k: m for k, m in masks.items() if m.ndim == 1}
    weights = {k: m for k, m in masks.items() if m.ndim != 1}
    per_layer = {k: 1.0 - float(m.float().mean()) for k, m in units.items()}
    total = sum(m.numel() for m in units.values())
    zeros = sum(int((m == 0).sum()) for m in units.values())
    out: dict[str, Any] = {
        "overall": zeros / max(total, 1),
        "per_layer": per_layer,
        "gated_units": total,
        "pruned_units": zeros,
        "unit": "units (channels / neurons)",
    }
    if weights:
        out["input_weights"] = unstructured_sparsity(weights)
    if pruned is not None:
        before, after = count_parameters(model), count_parameters(pruned)
        out.update(parameters_before=before, parameters_after=after, parameter_sparsity=1.0 - after / before)
    return out


def save_masks(masks: dict[str, Tensor], path: Path) -> str:
    """Write FFW masks (``{layer: mask}``, uint8, 1 = kept) as one safetensors file, atomically; returns the file's
    SHA-256 (ffw.json records it)."""
    return save_tensors(path, {k: v.to(torch.uint8) for k, v in masks.items()})


def load_masks(path: Path) -> dict[str, Tensor]:
    """The masks :func:`save_masks` wrote (``masks.safetensors`` of an FFW folder): ``{layer: uint8 mask}``."""
    from safetensors.torch import load_file

    return dict(load_file(str(path)))
