"""Shared pieces of the command line: the app, the console and parameter parsing."""
from __future__ import annotations

from typing import List, Optional

import typer
from rich.console import Console

from ..errors import ConfigError

app = typer.Typer(help="Find and remove shortcut biases in trained neural networks.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
console = Console()
TRUST_CODE_HELP = ("import the user model (package.module:factory) that RUN_DIR names although its record is not signed "
                   "with your key - review that code first (without this flag the refusal shows it); `debiaskit trust "
                   "RUN_DIR` trusts it for good")


def parse_params(rho: Optional[float], params: Optional[List[str]], *, text_keys: tuple[str, ...] = (),
                 names: Optional[tuple[str, tuple[str, ...]]] = None) -> dict:
    """``--rho 0.99 --param rho_right=0.95`` -> {"rho": 0.99, "rho_right": 0.95}.

    Keys in ``text_keys`` keep their value as text (``--param root=DIR`` of celeba); all others are numbers.
    ``names`` = (owner, allowed names) of the dataset (``debiaskit.data.param_names``): every key is checked
    against them before any value is parsed, so ``--param bais=sex`` says there is no parameter 'bais' (and
    lists the valid ones) rather than that 'sex' is not a number.
    """
    from .._validate import check_param_names
    pairs = [] if rho is None else [("rho", rho)]
    for item in params or []:
        if "=" not in item:
            raise ConfigError(f"--param takes KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        pairs.append((key.strip(), value))
    if names is not None:
        owner, allowed = names
        check_param_names(dict(pairs), allowed, owner=owner)
    out: dict = {}
    for key, value in pairs:
        if key in text_keys or not isinstance(value, str):
            out[key] = value
            continue
        try:
            out[key] = float(value)
        except ValueError as exc:
            raise ConfigError(f"--param {key}: {value!r} is not a number") from exc
    return out
