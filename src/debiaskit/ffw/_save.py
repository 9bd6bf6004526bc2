"""Save an FFW result to a folder and load the pruned network back: one documented pair of functions.

A folder written by :func:`save_result` (or by ``debiaskit ffw`` / :func:`debiaskit.ffw.ffw_run`) holds
``model.safetensors`` (the exported network: unstructured = the original architecture with the zeros baked
in; structured = the physically smaller network), ``masks.safetensors`` (1 = kept) and ``ffw.json``
(how to rebuild the architecture - a zoo name or your ``package.module:factory`` with its arguments and
source checksum -, the new layer widths of a structured export, the head, the search settings and its
D^u_val selection). :func:`load_pruned_model` rebuilds the architecture, re-shapes it and loads the
weights (safetensors: no pickle).

Example::

    from debiaskit.ffw import find_fantastic_weights, save_result, load_pruned_model
    result = find_fantastic_weights(model, head="classifier", train=d_u_train, val=d_u_val, mode="structured")
    save_result(result, "runs/mine-ffw")
    pruned = load_pruned_model("runs/mine-ffw")      # plain nn.Module, physically smaller
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from .._io import atomic_folder
from ..errors import ModelError
from ..models import import_path_reference, model_reference
from ..runs import (
    FFWRecord,
    load_state,
    package_versions,
    read_trusted_record,
    read_weights,
    rebuild_from_record,
    save_weights,
    weights_file,
    write_record,
)
from ._erase import attach_empty_eraser
from ._export import resize_like, save_masks
from ._folders import FFW_FOLDER

FFW_FILE = "ffw.json"


def _model_record(result, model: str | Callable | None, model_args: dict | None) -> dict[str, Any]:
    head = result.model.get_submodule(result.head)
    if isinstance(model, str):
        spec = import_path_reference(model, args=model_args)
    elif model is not None:
        spec = {**model_reference(model), "args": dict(model_args or {})}
    else:
        spec = model_reference(result.model)
    spec.setdefault("num_classes", getattr(head, "out_features", None))
    spec["head"] = result.head
    spec["shapes"] = result.shapes
    spec["eraser"] = None if result.eraser is None else result.eraser.to_json()
    return spec


def save_result(
    result,
    folder: Path | str,
    *,
    model: str | Callable | None = None,
    model_args: dict | None = None,
    force: bool = False,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``result`` (an :class:`~debiaskit.ffw.FFWResult`) to ``folder`` atomically (a finished folder is
    replaced only with ``force``).

    The architecture is recorded from how the model was built (zoo, ``package.module:factory`` through
    debiaskit); for a model you built yourself, its class is recorded (rebuilt without arguments) unless you
    name the factory: ``model="mynets:resnet", model_args={...}`` (or the factory itself).
    """
    folder = Path(folder)
    spec = _model_record(result, model, model_args)
    info = {
        "kind": "ffw",
        "status": "finished",
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "mode": result.mode,
        "model": spec,
        "search": result.summary(),
        "history": result.history,
        "selection": (
            "hard-masked model with the lowest J = CE + gamma * MI on D^u_val"
            if result.config.selection == "objective"
            else "hard-masked model with the highest task accuracy on D^u_val"
        ),
        "versions": package_versions(),
        "weights": "model.safetensors",
        "masks": "masks.safetensors",
        **(extra or {}),
    }
    with atomic_folder(folder, kind=FFW_FOLDER, force=force) as staging:
        info["weights_sha256"] = save_weights(result.model, staging / "model.safetensors")
        info["masks_sha256"] = save_masks(result.masks, staging / "masks.safetensors")
        write_record(staging / FFW_FILE, FFWRecord.from_dict(info, file=staging / FFW_FILE))
    return folder


def load_pruned_model(
    folder: Path | str,
    *,
    model: nn.Module | Callable[..., nn.Module] | None = None,
    source_changed: str = "warn",
    trust_code: bool = False,
) -> nn.Module:
    """The exported network of an FFW folder (:func:`save_result`, ``debiaskit ffw``), in eval mode.

    ``model``: a fresh instance (or factory) of the original architecture, for a folder whose model was
    given in Python and cannot be rebuilt from the record alone; ``source_changed``: see
    :func:`debiaskit.models.rebuild_model`; ``trust_code``: import a user model named by an ``ffw.json`` that is
    not signed with your key (see :func:`debiaskit.runs.load_run`).
    """
    folder = Path(folder)
    if not (folder / FFW_FILE).is_file():
        raise ModelError(f"{folder} is not a finished FFW folder (no {FFW_FILE})")
    record, trust = read_trusted_record(
        folder / FFW_FILE, FFWRecord, default_kind="ffw", trust_code=trust_code, model_given=model is not None
    )
    assert isinstance(record, FFWRecord)  # read as the class asked for
    weights = weights_file(folder, record.weights, file=folder / FFW_FILE)
    state, _ = read_weights(weights, sha256=record.weights_sha256, record=folder / FFW_FILE)

    def load(net: nn.Module) -> None:
        if record.model.shapes:
            resize_like(net, record.model.shapes)
        if record.model.eraser:
            attach_empty_eraser(net, record.model.eraser)
        load_state(net, state, weights)

    # runs.rebuild_from_record is annotated with a module only; it hands ``model`` to rebuild_model, which also
    # takes a factory (runs.py is not type-checked yet: docs/design/static-checks.md)
    rebuild = rebuild_from_record(
        record,
        trust=trust,
        load=load,
        source_changed=source_changed,
        model=model,  # type: ignore[arg-type]
    )
    return rebuild.eval()
