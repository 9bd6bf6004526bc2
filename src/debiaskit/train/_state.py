"""Nested training state <-> (flat tensors, JSON): what a checkpoint file can hold without pickle.

A ``state_dict`` of a model is flat already; a method's also holds optimiser states (nested dicts with
integer keys, tuples, tensors) and JSON-able diagnostics. :func:`flatten_state` moves every tensor into
a flat ``{name: tensor}`` dict (safetensors) and leaves a JSON skeleton that points at them;
:func:`unflatten_state` rebuilds the original structure exactly (integer keys, tuples, non-finite floats).

Example::

    tensors, skeleton = flatten_state({"optimizer": opt.state_dict(), "epoch": 3})
    state = unflatten_state(tensors, skeleton)
    opt.load_state_dict(state["optimizer"])
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError

_TENSOR, _ITEMS, _TUPLE, _FLOAT = "__tensor__", "__items__", "__tuple__", "__float__"


def flatten_state(obj: Any, *, prefix: str = "") -> tuple[dict[str, Tensor], Any]:
    """``obj`` (tensors, numbers, strings, None, lists, tuples, dicts) as (tensors, JSON skeleton)."""
    tensors: dict[str, Tensor] = {}
    return tensors, _flatten(obj, prefix or "state", tensors)


def _flatten(obj: Any, path: str, tensors: dict[str, Tensor]) -> Any:
    if isinstance(obj, Tensor):
        tensors[path] = obj.detach().cpu().contiguous()
        return {_TENSOR: path}
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {_FLOAT: repr(obj)}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _flatten(v, f"{path}.{k}", tensors) for k, v in obj.items()}
        if not all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in obj):
            raise ConfigError(
                f"cannot checkpoint {path}: dict keys must be strings or integers, got "
                f"{sorted({type(k).__name__ for k in obj})}"
            )
        return {_ITEMS: [[k, _flatten(v, f"{path}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [_flatten(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]
        return {_TUPLE: items} if isinstance(obj, tuple) else items
    raise ConfigError(
        f"cannot checkpoint {path}: a {type(obj).__name__} is not a tensor, number, string, list or "
        "dict; keep such objects in private attributes (leading underscore) or give them a state_dict"
    )


def unflatten_state(tensors: dict[str, Tensor], skeleton: Any) -> Any:
    """Inverse of :func:`flatten_state`."""
    if isinstance(skeleton, list):
        return [unflatten_state(tensors, v) for v in skeleton]
    if not isinstance(skeleton, dict):
        return skeleton
    if _TENSOR in skeleton:
        return tensors[skeleton[_TENSOR]]
    if _FLOAT in skeleton:
        return float(skeleton[_FLOAT])
    if _TUPLE in skeleton:
        return tuple(unflatten_state(tensors, v) for v in skeleton[_TUPLE])
    if _ITEMS in skeleton:
        return {k: unflatten_state(tensors, v) for k, v in skeleton[_ITEMS]}
    return {k: unflatten_state(tensors, v) for k, v in skeleton.items()}


def rng_state(generator: torch.Generator) -> dict[str, Tensor]:
    """The loop's generator and torch's global CPU (and CUDA) generators, for a bit-identical resume."""
    state = {"loop": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(generator: torch.Generator, state: dict[str, Tensor]) -> None:
    generator.set_state(state["loop"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))
