"""Validation at the edge: the same rules for CLI options, Python arguments and stored records.

A parameter is checked with :func:`require` against one of the rules of :mod:`debiaskit._schema`
(``SEED``, ``POSITIVE``, ``NON_NEGATIVE``, ...), so ``--seed -1``, ``TrainConfig(seed=-1)`` and a
``run.json`` holding ``"seed": -1`` are refused with the same words. Devices and training data have
their own checks here; every one runs before any compute.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

import torch

from ._schema import COUNT, MAX_SEED, NON_NEGATIVE, NUMBER, POSITIVE, POSITIVE_INT, SEED, Check  # noqa: F401 - re-exported
from .errors import ConfigError, DataError

UNIT_INTERVAL = Check("a number in [0, 1]", lambda v: NUMBER.ok(v) and 0 <= v <= 1)
OPEN_UNIT_INTERVAL = Check("a number in (0, 1)", lambda v: NUMBER.ok(v) and 0 < v < 1)


def require(name: str, value: Any, rule: Check, *, hint: str = "") -> Any:
    """Return ``value`` when it satisfies ``rule``; otherwise a ConfigError naming it, what was found and
    what is expected (``seed is -1, expected an integer in [0, 9007199254740991]``)."""
    if not rule.ok(value):
        shown = f"{value!r}" if not isinstance(value, float) or math.isfinite(value) else str(value)
        raise ConfigError(f"{name} is {shown}, expected {rule.expected}" + (f"; {hint}" if hint else ""))
    return value


def check_param_names(params: dict | None, allowed, *, owner: str) -> dict:
    """A copy of ``params`` (None: empty) after refusing names ``owner`` does not take, in one wording for
    every dataset and recipe (``dataset adult has no parameter(s) ['bais']; it takes: bias, holdout (did you mean
    bias?)``). Only the names are looked at, so the CLI can call it before it parses any value."""
    params = dict(params or {})
    unknown = set(params) - set(allowed)
    if unknown:
        close = [m for name in sorted(unknown) for m in difflib.get_close_matches(name, list(allowed), n=1)]
        raise ConfigError(
            f"{owner} has no parameter(s) {sorted(unknown)}; it takes: {', '.join(allowed)}"
            + (f" (did you mean {', '.join(close)}?)" if close else "")
        )
    return params


def check_device(device: Any) -> torch.device:
    """A device that exists on this machine, checked before any data is loaded."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(f"--device {device!r} is not a device name ({exc}); use cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            built = (
                "this torch build has no CUDA" if not torch.backends.cuda.is_built() else "no CUDA device is visible"
            )
            raise ConfigError(f"--device {device}: {built}; use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise ConfigError(
                f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to "
                f"cuda:{count - 1}; pick one of them"
            )
        return dev
    if dev.type == "mps" and torch.backends.mps.is_available():
        return dev
    raise ConfigError(f"--device {device}: not available here; use --device cpu (or cuda / cuda:N on a GPU machine)")


def check_not_empty(data: Any, *, what: str = "training data") -> None:
    if len(data) == 0:
        raise DataError(f"the {what} is empty: nothing to train on; check the dataset and its sizes")


def check_training_data(data: Any, *, num_classes: int, what: str = "training data") -> None:
    """Non-empty, targets in [0, num_classes), finite inputs (when the dataset holds them in memory)."""
    check_not_empty(data, what=what)
    y = getattr(data, "y", None)
    if isinstance(y, torch.Tensor):
        check_targets(y, num_classes=num_classes, index=torch.arange(len(y)), what=what)
    bad = _non_finite_samples(getattr(data, "images", None))
    if bad:
        raise DataError(
            f"the {what} holds NaN/inf inputs (samples {bad[:3]}{' ...' if len(bad) > 3 else ''}); "
            "clean or drop them before training"
        )


def check_targets(y: torch.Tensor, *, num_classes: int, index: torch.Tensor, what: str = "training data") -> None:
    """Targets in [0, num_classes); for in-memory data once, for other datasets one batch at a time."""
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        bad = ((y < 0) | (y >= num_classes)).nonzero()[:3, 0]
        raise DataError(
            f"{what} targets must lie in [0, {num_classes - 1}] (the model has {num_classes} classes); "
            f"samples {index[bad].tolist()} have {y[bad].tolist()}"
        )


def _non_finite_samples(x: Any) -> list[int]:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return []
    bad = ~torch.isfinite(x.reshape(len(x), -1)).all(dim=1)
    return bad.nonzero()[:, 0].tolist()


def describe_divergence(data: Any, epoch: int, record: dict) -> str:
    """Why training produced non-finite numbers: bad inputs if the data has them, else the optimisation."""
    bad = _non_finite_samples(getattr(data, "images", None))
    if not bad and not hasattr(data, "images"):  # any dataset of (x, y, b): look at every input once
        bad = [i for i in range(len(data)) if not torch.isfinite(torch.as_tensor(data[i][0])).all()][:3]
    if bad:
        return (
            f"training produced NaN/inf at epoch {epoch} because the training inputs hold NaN/inf values "
            f"(samples {bad[:3]}); clean or drop them"
        )
    return (
        f"training diverged at epoch {epoch} (NaN/inf in {record}) although the inputs are finite; "
        "lower the learning rate"
    )
