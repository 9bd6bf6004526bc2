"""Build a network from what a user names: a zoo name, ``package.module:factory``, a factory or an instance;
and rebuild the one a record describes. Above both the zoo (``_zoo``) and user models (``_user``)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from ..errors import ConfigError, ModelError
from ._user import (
    SPEC_ATTRIBUTE,
    SourceChangedWarning,
    build_user_model,
    factory_arguments,
    is_import_path,
    model_reference,
    rebuild_user_model,
)
from ._zoo import MODELS


def build_model(name: str, *, num_classes: int, input_shape: tuple[int, ...], args: dict | None = None) -> nn.Module:
    """Build a zoo model by name, or your own by import path ``package.module:factory`` (``args`` for the
    factory; see :mod:`debiaskit.models._user`).

    Example: ``build_model("simple-conv", num_classes=10, input_shape=(3, 28, 28))``,
    ``build_model("mynets:resnet", num_classes=2, input_shape=(3, 64, 64), args={"width": 32})``.
    """
    if is_import_path(name):
        return build_user_model(name, args=args, num_classes=num_classes, input_shape=tuple(input_shape))
    if name not in MODELS:
        raise ConfigError(
            f"unknown model {name!r}; available: {', '.join(MODELS)}, or your own as package.module:factory"
        )
    if args:
        raise ConfigError(
            f"zoo model {name!r} takes no arguments (got {', '.join(args)}); --model-arg is for "
            "package.module:factory models"
        )
    model = MODELS[name].factory(num_classes=num_classes, input_shape=tuple(input_shape))
    # how to rebuild it (read by run writers and debiaskit.ffw.save_result)
    spec = {"source": "zoo", "name": name, "args": {}, "num_classes": num_classes, "input_shape": list(input_shape)}
    # torch types Module.__setattr__ for tensors and modules only; any other value is a plain attribute at runtime
    model.debiaskit_model_spec = spec  # type: ignore[assignment]
    return model


def rebuild_model(
    spec: Mapping[str, Any] | Any,
    *,
    load: Callable[[nn.Module], Any] | None = None,
    source_changed: str = "warn",
    model: nn.Module | Callable[..., nn.Module] | None = None,
) -> nn.Module:
    """The network a record describes (zoo name, user import path), with ``load(model)`` applied (weights).

    ``model``: your own instance (or factory, called with the recorded arguments) instead of rebuilding;
    what a run of a model given in Python needs. A user model whose source changed since training is
    used with a :class:`SourceChangedWarning` when the weights still load exactly, refused otherwise
    (and always with ``source_changed="refuse"``).
    """
    spec = spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)
    changed = None
    if model is not None:
        net = model if isinstance(model, nn.Module) else model(**dict(spec.get("args") or {}))
        if not isinstance(net, nn.Module):
            raise ModelError(f"model= must be an nn.Module or a factory returning one, got {type(net).__name__}")
    elif spec.get("source", "zoo") == "zoo":
        if spec.get("name") not in MODELS:  # never an import path: only source="import" may name code (and is trusted)
            raise ModelError(
                f"the recorded zoo model {spec.get('name')!r} is not in debiaskit's zoo (available: "
                f"{', '.join(MODELS)}); the record is damaged, or was written by a newer debiaskit"
            )
        net = build_model(spec["name"], num_classes=spec["num_classes"], input_shape=tuple(spec["input_shape"]))
    else:
        net, changed = rebuild_user_model(spec, source_changed=source_changed)
    if load is not None:
        try:
            load(net)
        except ModelError as exc:
            if changed:
                raise ModelError(
                    f"{changed}, and the recorded weights no longer fit the network it builds ({exc}); "
                    "refusing: restore the source file the run was trained with"
                ) from exc
            if spec.get("note") and model is None:
                raise ModelError(
                    f"{exc} - the model was {spec['note']}; pass model=<an instance built like the "
                    "trained one> (or train with package.module:factory and its arguments)"
                ) from exc
            raise
    if changed:
        warnings.warn(
            f"{changed}; the recorded weights still fit the network it builds exactly, so it is used - "
            "if the forward pass changed, results differ from the run's",
            SourceChangedWarning,
            stacklevel=2,
        )
    return net


def instantiate(
    model: str | nn.Module | Callable[..., nn.Module],
    *,
    args: Mapping[str, Any] | None = None,
    num_classes: int,
    input_shape: tuple[int, ...],
) -> tuple[nn.Module, dict[str, Any]]:
    """A network from what a user gives (zoo name, ``pkg.mod:factory``, a factory, an instance) and the
    record fields that rebuild it (``source``, ``name``, ``args``, ``sha256``, ``source_file``, ...)."""
    if isinstance(model, str):
        net = build_model(model, num_classes=num_classes, input_shape=input_shape, args=dict(args or {}))
        spec = getattr(net, SPEC_ATTRIBUTE, None) or {"source": "zoo", "name": model, "args": {}}
        return net, dict(spec)
    if isinstance(model, nn.Module):
        if args:
            raise ConfigError("model_args are for a factory or an import path, not for a model instance")
        return model, model_reference(model)
    if callable(model):
        full, filled = factory_arguments(model, args, num_classes=num_classes, input_shape=input_shape)
        net = model(**full)
        if not isinstance(net, nn.Module):
            raise ModelError(
                f"{getattr(model, '__qualname__', model)} returned a {type(net).__name__}, expected an nn.Module"
            )
        spec = model_reference(model)
        spec.update({"args": full, "filled_args": filled})
        spec.pop("note", None) if spec["source"] == "import" else None
        setattr(net, SPEC_ATTRIBUTE, {k: v for k, v in spec.items() if k != "note"})
        return net, spec
    raise ConfigError(
        f"model must be a zoo name, package.module:factory, a factory or an nn.Module, got {type(model).__name__}"
    )
