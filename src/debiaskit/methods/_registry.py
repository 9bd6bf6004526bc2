"""The method registry: one entry per debiasing method, with everything the harness needs to know.

Each method module registers itself with :func:`register_method`; hyper-parameter defaults live
next to it, per dataset family, each with its source (paper, public code, or our tuning on
validation data). The benchmark harnesses read only this entry and the method object: the
selection rule and its text, budget overrides per protocol, extra epochs, diagnostics renderers.
A method is therefore one file: its class and its :class:`MethodInfo`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..data import DATASETS, RECIPES
from ..errors import ConfigError

# Plain ERM: the first row of every table and the trained model that post-hoc methods start from.
REFERENCE_METHOD = "vanilla"


@dataclass(frozen=True)
class Default:
    """A hyper-parameter default and where it comes from."""

    value: Any
    source: str  # "paper", "public code", "ours (tuned on D^u_val)", ...


SELECTION_RULES = {
    "last": "last epoch (label-free)",
    "val_worst_group": "best worst-group accuracy on D^u_val (uses bias labels)",
    "own": "",  # the method selects by its own rule; MethodInfo.selection_text says which
}
PROTOCOLS = ("default", "full")  # the comparison harness's budgets: CPU-sized suites, the papers' (--full)


@dataclass(frozen=True)
class MethodInfo:
    """A registered method.

    ``selection`` is a key of ``SELECTION_RULES``: ``"last"`` (the harness keeps the last epoch),
    ``"val_worst_group"`` (the harness selects the epoch with the best worst-group accuracy on D^u_val)
    or ``"own"`` (the method selects by itself; ``selection_text`` says how). ``budgets`` maps a
    protocol of ``PROTOCOLS`` to hyper-parameter overrides (e.g. more mask iterations under ``--full``).
    ``extra_epochs(config)``: epochs the method trains before the reported model starts (VCBA's
    stage 1, after which it re-initialises the network); a benchmark adds them to the budget so that
    the reported model gets the same number of epochs as every other method.
    ``report(settings, pm=...)``: Markdown lines of method-specific diagnostics from finished cells, given
    ``[(setting label, [method state of each seed])]`` and the tables' mean +- std formatter (FMD's
    unlearning step), or None.

    Example::

        register_method(MethodInfo(name="mine", description="...", factory=Mine,
                                   defaults={"*": {"alpha": Default(0.5, "paper")}}))
    """

    name: str
    description: str
    factory: Callable[..., Any]
    uses_bias_labels: bool = False  # reads true bias labels anywhere (training or selection)
    uses_unbiased_data: bool = False  # needs D^u
    retrains: bool = True  # trains weights (vs post-hoc surgery)
    post_hoc: bool = False  # applied to a trained vanilla model
    defaults: dict[str, dict[str, Default]] = field(default_factory=dict)  # dataset family -> name -> Default
    uses_counterfactuals: bool = False  # needs the recipe's counterfactual renderer (pairs differing only in b)
    selection: str = "last"  # a key of SELECTION_RULES
    selection_text: str = ""  # the rule in words when selection == "own"
    apply: Callable[..., Any] | None = (
        None  # post-hoc: apply(model, *, splits, head, seed, device, **config) -> (model, info)
    )
    reference: str = ""  # paper the method comes from
    budgets: dict[str, dict[str, Any]] = field(default_factory=dict)  # protocol -> hyper-parameter overrides
    extra_epochs: Callable[[dict[str, Any]], int] | None = None
    report: Callable[..., list[str]] | None = None

    def __post_init__(self) -> None:
        if self.selection not in SELECTION_RULES:
            raise ConfigError(
                f"method {self.name}: selection must be one of {', '.join(SELECTION_RULES)}, got {self.selection!r}"
            )
        if self.selection == "own" and not self.selection_text:
            raise ConfigError(f"method {self.name}: selection 'own' needs selection_text (the rule in words)")
        unknown = set(self.budgets) - set(PROTOCOLS)
        if unknown:
            raise ConfigError(
                f"method {self.name}: budgets for unknown protocol(s) {sorted(unknown)}; "
                f"protocols: {', '.join(PROTOCOLS)}"
            )

    @property
    def selection_rule(self) -> str:
        """The selection rule in words, for tables."""
        return self.selection_text or SELECTION_RULES[self.selection]

    def budget(self, protocol: str) -> dict[str, Any]:
        """Hyper-parameter overrides of ``protocol`` (``"default"`` or ``"full"``)."""
        if protocol not in PROTOCOLS:
            raise ConfigError(f"unknown protocol {protocol!r}; protocols: {', '.join(PROTOCOLS)}")
        return dict(self.budgets.get(protocol, {}))

    def epochs_before_model(self, config: dict[str, Any]) -> int:
        """Epochs trained before the reported model starts (0 for most methods; see ``extra_epochs``)."""
        return int(self.extra_epochs(config)) if self.extra_epochs is not None else 0


METHODS: dict[str, MethodInfo] = {}


def register_method(info: MethodInfo) -> MethodInfo:
    """Add ``info`` to the registry. When its factory is a :class:`~debiaskit.train.TrainingMethod`
    subclass, the class learns its name and flags from ``info`` (declared once, here)."""
    if info.name in METHODS:
        raise ConfigError(f"method {info.name!r} is registered twice")
    if isinstance(info.factory, type):
        if vars(info.factory).get("info") is not None:
            raise ConfigError(f"class {info.factory.__name__} is already registered as {info.factory.info.name!r}")
        info.factory.info = info
    METHODS[info.name] = info
    return info


def dataset_family(dataset: str) -> str:
    """'biased-mnist' -> 'biased', 'colored-fashion-mnist' -> 'colored'; your own data from disk
    ('tensors:PATH', 'folder:DIR') -> 'tensors' / 'folder'."""
    if ":" in dataset:
        return dataset.split(":", 1)[0]
    return dataset.split("-", 1)[0]


def defaults_note(name: str, dataset: str) -> str | None:
    """Which defaults ``name`` uses on ``dataset`` when its family has none of its own (None otherwise):
    printed by build_method (a warning) and recorded in run.json (``method.defaults``)."""
    info = get_method(name)
    fam = dataset_family(dataset)
    if fam in info.defaults or fam in RECIPES or fam in DATASETS or not info.defaults.get("*"):
        return None  # defaults of its own, or the generic ones made for our datasets, or nothing to choose
    families = sorted(set(k for k in info.defaults if k != "*") | set(RECIPES) | set(DATASETS))
    used = ", ".join(f"{k}={d.value!r}" for k, d in info.defaults["*"].items())
    return (
        f"{name} has no defaults for dataset family {fam!r} ({dataset}); it uses its generic '*' defaults, "
        f"made on debiaskit's datasets ({', '.join(families)}): {used} (each value's source: "
        f"debiaskit.methods.METHODS[{name!r}].defaults). Tune them on your D^u_val if they do not fit your data"
    )


def method_defaults(name: str, dataset: str) -> dict[str, Default]:
    """Defaults of ``name`` for ``dataset``: the '*' entries overridden by the dataset family's."""
    info = get_method(name)
    fam = dataset_family(dataset)
    return {**info.defaults.get("*", {}), **info.defaults.get(fam, {})}


def get_method(name: str) -> MethodInfo:
    """The registered method ``name`` (its :class:`MethodInfo`); an unknown name is a ``ConfigError`` listing them."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def method_config(name: str, *, dataset: str, **overrides) -> dict[str, Any]:
    """The hyper-parameters ``name`` runs with on ``dataset``: its defaults, then ``overrides``."""
    config = {k: d.value for k, d in method_defaults(name, dataset).items()}
    unknown = set(overrides) - set(config)
    if unknown:
        raise ConfigError(
            f"method {name} has no hyper-parameter(s) {sorted(unknown)}; it takes: {', '.join(config) or 'none'}"
        )
    config.update(overrides)
    return config


class DefaultsWarning(UserWarning):
    """A method runs with its generic defaults on a dataset family it has no tuned defaults for."""


def build_method(name: str, *, dataset: str, **overrides):
    """Instantiate a training method with its defaults for ``dataset``; returns (method, config).

    Example::

        method, config = build_method("jtt", dataset="colored-mnist", lambda_up=20)
    """
    config = method_config(name, dataset=dataset, **overrides)
    method = get_method(name).factory(**config)
    note = defaults_note(name, dataset)
    if note is not None:
        warnings.warn(note, DefaultsWarning, stacklevel=2)
        method.defaults_note = note  # train_run records it in run.json
    return method, config
