"""The recorded training dynamics file (``RUN_DIR/dynamics.safetensors``): written by
:class:`debiaskit.train.DynamicsRecorder` (``debiaskit train --record-dynamics``), read by
:func:`~debiaskit.discover.discover_from_dynamics` / ``debiaskit discover``. The format lives here, below
``train``, so that discovery reads it without importing the training loop."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file
from torch import Tensor

from .._io import save_tensors
from ..errors import DataError

DYNAMICS_FILE = "dynamics.safetensors"


def save_dynamics(tensors: dict[str, Tensor], path: Path) -> None:
    save_tensors(path, tensors)


def load_dynamics(run_dir: Path) -> dict[str, Tensor] | None:
    """``RUN_DIR/dynamics.safetensors`` as tensors (loss float32, correct bool-or-255 uint8, attractor), or None."""
    path = Path(run_dir) / DYNAMICS_FILE
    if not path.is_file():
        return None
    try:
        t = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise DataError(f"cannot read {path}: {exc}") from exc
    missing = {"loss", "correct", "attractor"} - set(t)
    if missing:
        raise DataError(f"{path} lacks {sorted(missing)}; it was not written by debiaskit train --record-dynamics")
    return {"loss": t["loss"].float(), "correct": t["correct"], "attractor": t["attractor"].long()}
