"""Run folders: safetensors weights and a typed ``run.json`` that rebuilds model and data exactly.

A finished run folder holds ``run.json`` (a :class:`~debiaskit._schema.RunRecord`, validated on every
read) and ``model.safetensors``. It is written through :func:`debiaskit._io.atomic_folder` (atomic,
exclusive, never replacing anything but a finished run, and that only with ``force``) by
:func:`save_run`, the one writer of run folders.

Example::

    run = load_run("runs/r1")
    run.record.model.num_classes, run.head, run.splits().test
"""
from __future__ import annotations

import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy
import safetensors
import torch
from safetensors.torch import load_file
from torch import nn

from . import __version__
from ._io import FolderIdentity, atomic_folder, folder_identity, read_json, save_tensors, write_json, write_text
from ._schema import (SCHEMA_VERSION, DataRecord, FFWRecord, MethodRecord, ModelRecord, Record, RunRecord, SchemaError,
                      TrainRecord, migrate)
from .data import splits_from_spec
from .errors import DamagedError, DataError, ModelError
from .models import rebuild_model

RUN_FILE = "run.json"
WEIGHTS_FILE = "model.safetensors"

__all__ = ["RUN_FILE", "WEIGHTS_FILE", "SCHEMA_VERSION", "Run", "RunRecord", "ModelRecord", "DataRecord",
           "TrainRecord", "MethodRecord", "FFWRecord", "SchemaError", "is_finished", "load_run", "load_weights",
           "read_run_record", "save_run", "save_weights"]
# also importable, internal (for debiaskit's packages): atomic_folder, check_finite, inner_path, package_versions,
# read_json, read_record, write_json, write_record, write_text


def package_versions() -> dict[str, str]:
    return {"debiaskit": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "safetensors": safetensors.__version__, "python": sys.version.split()[0], "platform": platform.platform()}


# -- weights -------------------------------------------------------------------------------------------------------

def check_finite(model: nn.Module, *, what: str = "model") -> None:
    for name, tensor in list(model.state_dict().items()):
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ModelError(f"{what} has NaN/inf values in {name!r}; the weights are unusable (training diverged?)")


def save_weights(model: nn.Module, path: Path) -> None:
    """safetensors weights (no pickle), written atomically; NaN weights are refused."""
    check_finite(model)
    save_tensors(path, model.state_dict())


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    """Load safetensors weights (no pickle) strictly into ``model``; NaN weights are an error."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {path} is missing")
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise ModelError(f"cannot read {path}: {exc}; the file is damaged or not a safetensors file") from exc
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches are raised even with strict=False
        raise ModelError(f"{path} does not match the model: {exc}") from exc
    if missing or unexpected:
        raise ModelError(f"{path} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    check_finite(model, what=str(path))
    return model


# -- records -------------------------------------------------------------------------------------------------------

def inner_path(folder: Path, relative: str, *, file: Path, key: str) -> Path:
    """``folder / relative``, refused when it leaves ``folder`` (``..``, absolute, or through a symlink)."""
    folder = Path(folder)
    path = folder / relative
    if not path.resolve().is_relative_to(folder.resolve()):
        raise SchemaError(f"{file}: {key} is {relative!r}, expected a path inside {folder} (it leads outside)")
    return path


def read_record(path: Path, cls: type[Record], *, default_kind: str) -> Record:
    """Read, migrate and validate one record file (``run.json``, ``ffw.json``)."""
    obj = migrate(read_json(path), file=path, default_kind=default_kind)
    if obj.get("status", "finished") != "finished":
        raise DataError(f"{path.parent} is not a finished debiaskit folder ({path.name} says status "
                        f"{obj.get('status')!r}); rerun the command that writes it")
    return cls.from_dict(obj, file=path)


def write_record(path: Path, record: Record) -> None:
    """Validate ``record`` exactly as a reader will, then write it atomically."""
    write_json(path, record.validate(file=path).to_dict())


def read_run_record(folder: Path) -> RunRecord:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"run folder {folder} does not exist")
    if not (folder / RUN_FILE).is_file():
        raise DataError(f"{folder} is not a finished debiaskit run (no {RUN_FILE}); train one with `debiaskit train`")
    return read_record(folder / RUN_FILE, RunRecord, default_kind="train")


def is_finished(folder: Path) -> bool:
    """True for a folder holding a finished run (a damaged ``run.json`` is not finished)."""
    try:
        read_run_record(folder)
    except (DataError, DamagedError):
        return False
    return True


def save_run(staging: Path, *, model: nn.Module, record: RunRecord) -> None:
    """The one writer of run folders: weights + validated ``run.json`` into ``staging`` (an atomic_folder)."""
    record.schema_version = SCHEMA_VERSION
    record.versions = record.versions or package_versions()
    save_weights(model, inner_path(staging, record.weights, file=staging / RUN_FILE, key="weights"))
    write_record(Path(staging) / RUN_FILE, record)


@dataclass
class Run:
    """A loaded run: its folder, typed record and (rebuilt) model."""

    folder: Path
    record: RunRecord
    model: nn.Module
    given_splits: Any = None   # the splits passed to load_run (a run trained on data given in Python)
    identity: FolderIdentity | None = None   # the folder as read: a command writing from it re-checks it at commit

    @property
    def meta(self) -> dict[str, Any]:
        """``run.json`` as a plain dict (the validated, migrated record)."""
        return self.record.to_dict()

    @property
    def head(self) -> str:
        return self.record.model.head

    def splits(self):
        """The run's splits: rebuilt from its record, or the ones given to :func:`load_run`."""
        if self.given_splits is not None:
            return self.given_splits
        return splits_from_spec(self.record.data.spec())


def load_run(folder: Path, *, model: nn.Module | None = None, splits: Any = None, source_changed: str = "warn") -> Run:
    """Rebuild the model of a finished run folder and load its weights (``run.json`` validated first).

    A user model (``package.module:factory``) is re-imported (see :func:`debiaskit.models.rebuild_model`:
    ``source_changed`` = "warn" or "refuse" when its source file changed since training); ``model``: your
    own instance (or factory) for a run whose model was given in Python; ``splits``: the splits of a run
    whose data was given in Python (``debiaskit.data.user_splits``), which the folder cannot rebuild.
    """
    folder = Path(folder)
    identity = folder_identity(folder, RUN_FILE)
    record = read_run_record(folder)
    weights = inner_path(folder, record.weights, file=folder / RUN_FILE, key="weights")
    net = rebuild_model(record.model, load=lambda m: load_weights(m, weights), source_changed=source_changed,
                        model=model)
    net.eval()
    if folder_identity(folder, RUN_FILE) != identity:
        raise DataError(f"{folder} was moved or replaced while debiaskit was reading it; run the command again")
    return Run(folder=folder, record=record, model=net, given_splits=splits, identity=identity)
