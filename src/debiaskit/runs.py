"""Run folders: atomic writes, safetensors weights, and JSON metadata that rebuilds model and data.

A finished run folder holds ``run.json`` (with ``"status": "finished"``) and ``model.safetensors``.
Folders are written into a hidden sibling and renamed into place only when complete, so an
interrupted or failed command never leaves a half-written run behind, and a finished run is never
replaced without ``force``.
"""
from __future__ import annotations

import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import DataError, ModelError, RunExistsError

RUN_FILE = "run.json"
WEIGHTS_FILE = "model.safetensors"


def package_versions() -> dict[str, str]:
    import numpy
    import safetensors

    from . import __version__
    return {"debiaskit": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "safetensors": safetensors.__version__, "python": sys.version.split()[0], "platform": platform.platform()}


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temp file + rename); NaN becomes null so any JSON reader can load it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(_json_safe(obj), f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _json_safe(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def read_json(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); the run folder is damaged") from exc


def is_finished(folder: Path) -> bool:
    f = Path(folder) / RUN_FILE
    if not f.is_file():
        return False
    try:
        return json.loads(f.read_text()).get("status") == "finished"
    except (json.JSONDecodeError, OSError):
        return False


def check_writable(out: Path, *, force: bool) -> None:
    """Refuse early (before any work) to overwrite a finished run without ``force``."""
    out = Path(out)
    if out.exists() and not force:
        what = "a finished run" if is_finished(out) else "an existing folder"
        raise RunExistsError(f"{out} is {what}; choose another --out or pass --force to replace it")


@contextmanager
def atomic_folder(out: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a staging folder; on success it replaces ``out`` in one rename, on failure it is removed."""
    out = Path(out)
    check_writable(out, force=force)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.staging-"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes 0700; a run folder gets the usual permissions
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        trash = out.with_name(f".{out.name}.old-{os.getpid()}-{int(time.time())}")
        out.rename(trash)
        staging.rename(out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        staging.rename(out)


def check_finite(model: nn.Module, *, what: str = "model") -> None:
    for name, tensor in list(model.state_dict().items()):
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ModelError(f"{what} has NaN/inf values in {name!r}; the weights are unusable (training diverged?)")


def save_weights(model: nn.Module, path: Path) -> None:
    check_finite(model)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path))


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    """Load safetensors weights (no pickle) strictly into ``model``; NaN weights are an error."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {path} is missing")
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise ModelError(f"cannot read {path}: {exc}") from exc
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches are raised even with strict=False
        raise ModelError(f"{path} does not match the model: {exc}") from exc
    if missing or unexpected:
        raise ModelError(f"{path} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    check_finite(model, what=str(path))
    return model


@dataclass
class Run:
    """A loaded run: its folder, metadata and (rebuilt) model."""

    folder: Path
    meta: dict[str, Any]
    model: nn.Module

    @property
    def head(self) -> str:
        return self.meta["model"]["head"]

    def splits(self):
        from .data import splits_from_spec
        return splits_from_spec(self.meta["data"])


def load_run(folder: Path, *, model: nn.Module | None = None, source_changed: str = "warn") -> Run:
    """Rebuild the model of a finished run folder and load its weights.

    A user model (``package.module:factory``) is re-imported (see :func:`debiaskit.models.rebuild_model`:
    ``source_changed`` = "warn" or "refuse" when its source file changed since training); ``model``: your
    own instance (or factory) for a run whose model was given in Python.
    """
    from .models import rebuild_model

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"run folder {folder} does not exist")
    if not is_finished(folder):
        raise DataError(f"{folder} is not a finished debiaskit run (no {RUN_FILE} with status 'finished')")
    meta = read_json(folder / RUN_FILE)
    weights = folder / meta.get("weights", WEIGHTS_FILE)
    net = rebuild_model(meta["model"], load=lambda m: load_weights(m, weights), source_changed=source_changed,
                        model=model)
    net.eval()
    return Run(folder=folder, meta=meta, model=net)
