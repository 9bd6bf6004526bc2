"""The method registry: one entry per debiasing method, with what it needs and its defaults.

Each method module registers itself with :func:`register_method`; hyper-parameter defaults live
next to it, per dataset family, each with its source (paper, public code, or our tuning on
validation data).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import ConfigError


@dataclass(frozen=True)
class Default:
    """A hyper-parameter default and where it comes from."""

    value: Any
    source: str  # "paper", "public code", "ours (tuned on D^u_val)", ...


@dataclass(frozen=True)
class MethodInfo:
    name: str
    description: str
    factory: Callable[..., Any]
    uses_bias_labels: bool = False        # reads true bias labels anywhere (training or selection)
    uses_unbiased_data: bool = False      # needs D^u
    retrains: bool = True                 # trains weights (vs post-hoc surgery)
    post_hoc: bool = False                # applied to a trained vanilla model
    defaults: dict[str, dict[str, Default]] = field(default_factory=dict)  # dataset family -> name -> Default
    # Optional, additive fields (older registrations keep working without them):
    uses_counterfactuals: bool = False    # needs the recipe's counterfactual renderer (pairs differing only in b)
    selection: str = "last"               # model selection: "last" (label-free) or "val_worst_group" (D^u_val, bias labels)
    apply: Callable[..., Any] | None = None  # post-hoc: apply(model, *, splits, head, seed, **config) -> (model, info)
    reference: str = ""                   # paper the method comes from

    @property
    def selection_rule(self) -> str:
        """The selection rule in words, for tables."""
        return SELECTION_RULES.get(self.selection, self.selection)


SELECTION_RULES = {
    "last": "last epoch (label-free)",
    "val_worst_group": "best worst-group accuracy on D^u_val (uses bias labels)",
}


METHODS: dict[str, MethodInfo] = {}


def register_method(info: MethodInfo) -> MethodInfo:
    if info.name in METHODS:
        raise ConfigError(f"method {info.name!r} is registered twice")
    METHODS[info.name] = info
    return info


def dataset_family(dataset: str) -> str:
    """'biased-mnist' -> 'biased', 'colored-fashion-mnist' -> 'colored'."""
    return dataset.split("-", 1)[0]


def method_defaults(name: str, dataset: str) -> dict[str, Default]:
    """Defaults of ``name`` for ``dataset``: the '*' entries overridden by the dataset family's."""
    info = get_method(name)
    fam = dataset_family(dataset)
    return {**info.defaults.get("*", {}), **info.defaults.get(fam, {})}


def get_method(name: str) -> MethodInfo:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def build_method(name: str, *, dataset: str, **overrides):
    """Instantiate a training method with its defaults for ``dataset``; returns (method, config)."""
    info = get_method(name)
    config = {k: d.value for k, d in method_defaults(name, dataset).items()}
    unknown = set(overrides) - set(config)
    if unknown:
        raise ConfigError(f"method {name} has no hyper-parameter(s) {sorted(unknown)}; it takes: {', '.join(config)}")
    config.update(overrides)
    return info.factory(**config), config
