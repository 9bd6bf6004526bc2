"""FFW progress on the terminal: one line per epoch (what ``debiaskit ffw`` and the Python API print)."""

from __future__ import annotations

from typing import Any


def epoch_line(event: dict[str, Any]) -> str:
    """One epoch of the search: D^u_val numbers of the hard-masked model and, where the schedule evaluated it, of
    the tau-model; sparsity, time."""
    s, h = event["val_soft"], event["val_hard"]
    # the tau-model is evaluated only where it decides something (the level's end, a possible plateau)
    soft = (
        f"tau-model task {100 * s['task']:5.1f} bias {100 * s['bias']:5.1f}"
        if s is not None
        else "tau-model  (not evaluated)  "
    )
    return (
        f"epoch {event['epoch']:3d}  level {event['level']:2d}  tau {event['tau']:.3g}  | D^u_val "
        f"{soft}  | hard-masked task "
        f"{100 * h['task']:5.1f} bias {100 * h['bias']:5.1f}  | sparsity {100 * event['sparsity']:5.1f}% "
        f"(undecided {100 * event['undecided']:4.1f}%)  {event['time_s']:.0f}s"
    )


def tune_line(event: dict[str, Any]) -> str:
    """One epoch of training the kept weights under J (after the gates): D^u_val task, bias term, J."""
    v = event["val"]
    return (
        f"tune {event['epoch']:2d}/{event['epochs']}  kept weights under J  | D^u_val task "
        f"{100 * v['task']:5.1f}  bias term {v['dependence']:.4f}  J {v['objective']:.4f}  {event['time_s']:.0f}s"
    )


def progress_line(event: dict[str, Any]) -> str | None:
    """The line an event prints (None: a step, which prints nothing)."""
    line = {"epoch": epoch_line, "tune": tune_line}.get(event.get("kind", ""))
    return None if line is None else line(event)


def print_epoch(event: dict[str, Any]) -> None:
    """A ``callback`` for :func:`~debiaskit.ffw.find_fantastic_weights` that prints each epoch's line."""
    line = progress_line(event)
    if line is not None:
        from rich.console import Console

        Console(emoji=False).print(line, highlight=False, markup=False)  # text: a layer may be named [x]
