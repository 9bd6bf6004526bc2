"""Opt-in mixed precision for the training loop: ``--amp bf16`` or ``--amp fp16``.

``bf16`` autocasts the forward pass to bfloat16 (same exponent range as float32: no loss scaling);
``fp16`` autocasts to float16 and scales the loss with a ``torch.amp.GradScaler`` so that small gradients
do not underflow (steps with inf/NaN gradients are skipped and the scale is lowered). Parameters,
optimiser state and gradients stay float32. On CPU, torch autocasts bf16 and fp16; bf16 is the one
worth using there (fp16 matmuls on CPU are slow).

Methods take part through their :class:`~debiaskit.train.TrainContext`: ``ctx.backward(loss)`` and
``ctx.step_optimizer(optimizer)`` instead of ``loss.backward()`` and ``optimizer.step()`` (identical when AMP is
off), and ``with ctx.full_precision():`` around small auxiliary heads trained on detached features.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

from ..errors import ConfigError

AMP_MODES = ("off", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_amp(amp: str | None) -> str:
    """The AMP mode (``off`` for None); a clear error for anything else."""
    mode = "off" if amp in (None, "", "none", "no") else str(amp)
    if mode not in AMP_MODES:
        raise ConfigError(f"--amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    return mode


class Precision:
    """Autocast context + (fp16 only) a gradient scaler, for one device. ``Precision("off", ...)`` does nothing."""

    def __init__(self, mode: str | None, device: torch.device) -> None:
        self.mode = check_amp(mode)
        self.device_type = torch.device(device).type
        self.dtype = _DTYPES.get(self.mode)
        if self.mode == "fp16" and self.device_type == "cpu" and not torch.cpu.is_available():  # pragma: no cover
            raise ConfigError("--amp fp16 needs a CPU or CUDA device")
        self.scaler = torch.amp.GradScaler(self.device_type) if self.mode == "fp16" else None

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    @contextlib.contextmanager
    def full_precision(self) -> Iterator[None]:
        """Autocast off (float32) inside, e.g. for backward passes and small heads on detached features."""
        if not self.enabled:
            yield
            return
        with torch.autocast(device_type=self.device_type, enabled=False):
            yield

    def backward(self, loss: Tensor) -> None:
        with self.full_precision():
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        with self.full_precision():
            if self.scaler is not None:
                self.scaler.step(optimizer)
            else:
                optimizer.step()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring the gradients of ``optimizer``'s parameters to their true scale before reading them
        (clipping, finiteness checks); a no-op without loss scaling."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def update(self) -> None:
        """Once per training step, after every optimiser of the step has stepped."""
        if self.scaler is not None:
            self.scaler.update()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
