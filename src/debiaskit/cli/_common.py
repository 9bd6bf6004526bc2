"""Shared pieces of the command line: the app, the consoles, safe printing and parameter parsing.

Every printed string the user chose (a path, a name, a value) goes through :func:`esc` (or is printed with
``markup=False``): a folder named ``x[bold]y`` must print as ``x[bold]y``, not as ``xy`` in bold, so that
the path the user copies exists. The consoles have emoji codes off (``a:smile:b`` stays text).
"""

from __future__ import annotations

import math

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import ConfigError

app = typer.Typer(
    help="Find and remove shortcut biases in trained neural networks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def make_console(*, stderr: bool = False) -> Console:
    """A console that prints ``:name:`` as text (no emoji); markup stays on for our own styling."""
    return Console(stderr=stderr, emoji=False)


console = make_console()


def esc(value: object) -> str:
    """``value`` as text that rich prints literally (its ``[`` markup escaped)."""
    return escape(str(value))


def say(text: object) -> None:
    """Print text that is not ours to style (a library message, a report file) exactly as it is."""
    console.print(str(text), markup=False, highlight=False)


def finite_number(option: str, key: str, value: str) -> float:
    """``value`` as a finite float, or a ConfigError naming ``option KEY`` (nan, inf, '' and words refused)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{option} {key}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise ConfigError(f"{option} {key}: {value!r} is not a finite number")
    return number


def _refuse_twice(pairs: list, *, rho_option: bool) -> None:
    """One value per key: ``--rho 0.99 --param rho=0.5`` (or a --param repeated) is refused, never one silently
    winning."""
    said = {}
    for i, (key, value) in enumerate(pairs):
        text = f"--rho {value}" if i == 0 and rho_option else f"--param {key}={value}"
        if key in said:
            raise ConfigError(f"{said[key]} and {text} both set {key}: give it once")
        said[key] = text


TRUST_CODE_HELP = (
    "import the user model (package.module:factory) that RUN_DIR names although its record is not signed "
    "with your key - review that code first (without this flag the refusal shows it); `debiaskit trust "
    "RUN_DIR` trusts it for good"
)


def parse_params(
    rho: float | None,
    params: list[str] | None,
    *,
    text_keys: tuple[str, ...] = (),
    names: tuple[str, tuple[str, ...]] | None = None,
) -> dict:
    """``--rho 0.99 --param rho_right=0.95`` -> {"rho": 0.99, "rho_right": 0.95}.

    Keys in ``text_keys`` keep their value as text (``--param root=DIR`` of celeba); all others are numbers.
    ``names`` = (owner, allowed names) of the dataset (``debiaskit.data.param_names``): every key is checked
    against them before any value is parsed, so ``--param bais=sex`` says there is no parameter 'bais' (and
    lists the valid ones) rather than that 'sex' is not a number.
    """
    from .._validate import check_param_names

    pairs = [] if rho is None else [("rho", rho)]
    for item in params or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--param takes KEY=VALUE, got {item!r}")
        pairs.append((key.strip(), value))
    _refuse_twice(pairs, rho_option=rho is not None)
    if names is not None:
        owner, allowed = names
        check_param_names(dict(pairs), allowed, owner=owner)
    out: dict = {}
    for key, value in pairs:
        if key in text_keys and isinstance(value, str) and not value.strip():
            raise ConfigError(f"--param {key}: the value is empty")
        if key in text_keys or not isinstance(value, str):
            out[key] = value
            continue
        out[key] = finite_number("--param", key, value)
    return out
