"""FFW progress on the terminal: one line per epoch (what ``debiaskit ffw`` and the Python API print)."""
from __future__ import annotations

from typing import Any


def epoch_line(event: dict[str, Any]) -> str:
    """One epoch of the search: D^u_val numbers of the hard-masked model and, where the schedule evaluated it, of
    the tau-model; sparsity, time."""
    s, h = event["val_soft"], event["val_hard"]
    # the tau-model is evaluated only where it decides something (the level's end, a possible plateau)
    soft = (f"tau-model task {100 * s['task']:5.1f} bias {100 * s['bias']:5.1f}" if s is not None
            else "tau-model  (not evaluated)  ")
    return (f"epoch {event['epoch']:3d}  level {event['level']:2d}  tau {event['tau']:.3g}  | D^u_val "
            f"{soft}  | hard-masked task "
            f"{100 * h['task']:5.1f} bias {100 * h['bias']:5.1f}  | sparsity {100 * event['sparsity']:5.1f}% "
            f"(undecided {100 * event['undecided']:4.1f}%)  {event['time_s']:.0f}s")


def print_epoch(event: dict[str, Any]) -> None:
    """A ``callback`` for :func:`~debiaskit.ffw.find_fantastic_weights` that prints each epoch's line."""
    if event.get("kind") == "epoch":
        from rich.console import Console
        Console().print(epoch_line(event), highlight=False)
