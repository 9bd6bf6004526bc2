"""Shared pieces of the command line: the app, the console and parameter parsing."""
from __future__ import annotations

from typing import List, Optional

import typer
from rich.console import Console

from ..errors import ConfigError

app = typer.Typer(help="Find and remove shortcut biases in trained neural networks.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
console = Console()


def parse_params(rho: Optional[float], params: Optional[List[str]], *, text_keys: tuple[str, ...] = ()) -> dict:
    """``--rho 0.99 --param rho_right=0.95`` -> {"rho": 0.99, "rho_right": 0.95}.

    Keys in ``text_keys`` keep their value as text (``--param root=DIR`` of celeba); all others are numbers.
    """
    out: dict = {}
    if rho is not None:
        out["rho"] = rho
    for item in params or []:
        if "=" not in item:
            raise ConfigError(f"--param takes KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        if key.strip() in text_keys:
            out[key.strip()] = value
            continue
        try:
            out[key.strip()] = float(value)
        except ValueError as exc:
            raise ConfigError(f"--param {key}: {value!r} is not a number") from exc
    return out


