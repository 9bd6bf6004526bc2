"""debiaskit: find and remove shortcut biases in trained neural networks.

The public API is small and flat; everything else lives in the sub-packages (``debiaskit.data``,
``debiaskit.models``, ``debiaskit.train``, ``debiaskit.audit``, ``debiaskit.ffw``, ``debiaskit.discover``,
``debiaskit.methods``, ``debiaskit.bench``) for those who need more.

Example::

    from debiaskit import TrainConfig, audit_model, build_model, find_fantastic_weights, fit, make_splits

    splits = make_splits("biased-mnist", params={"rho": 0.99}, seed=0)
    model = build_model("simple-conv-small", num_classes=splits.num_classes, input_shape=splits.train.input_shape)
    fit(model, splits.train, config=TrainConfig(epochs=5))
    report = audit_model(model, test=splits.test, unbiased_train=splits.unbiased_train,
                         unbiased_val=splits.unbiased_val, head="fc")
    result = find_fantastic_weights(model, head="fc", train=splits.unbiased_train, val=splits.unbiased_val)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> sub-package that defines it (imported on first use: `import debiaskit` stays light)
_API = {
    "make_splits": "data",
    "BiasDataset": "data",
    "Splits": "data",
    "build_model": "models",
    "fit": "train",
    "TrainConfig": "train",
    "FitResult": "train",
    "TrainingMethod": "train",
    "audit_model": "audit",
    "AuditReport": "audit",
    "find_fantastic_weights": "ffw",
    "FFWResult": "ffw",
    "discover_pseudo_bias": "discover",
    "Discovery": "discover",
    "build_method": "methods",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
