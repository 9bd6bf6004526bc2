"""`debiaskit methods list` / `methods show NAME`: the registered methods, what each needs, and where its
defaults come from. `list` is one line per method in any terminal width; `show` has the details."""

from __future__ import annotations

import typer
from rich.table import Table

from ._common import app, console, esc

# debiaskit's library (torch) is imported inside each command, so that `debiaskit --help` and argument errors stay fast

methods_app = typer.Typer(help="The debiasing methods (training-time and post-hoc).", no_args_is_help=True)
app.add_typer(methods_app, name="methods")

_DATASET_HELP = "dataset whose family's defaults are shown"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _sources(defaults) -> str:
    """Where a method's defaults come from, counted: paper / public code / ours / other."""
    kinds: dict[str, int] = {}
    for d in defaults.values():
        text = d.source.lower()
        kind = next((k for k in ("paper", "public code", "ours") if text.startswith(k)), "other")
        kinds[kind] = kinds.get(kind, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in kinds.items()) or "-"


def _summary(description: str) -> str:
    """The description without its leading "NAME: " label: the list truncates it to the terminal's width."""
    head, sep, rest = description.partition(": ")
    return rest if sep and len(head) <= 25 else description


def _names() -> list[str]:
    from ..methods import METHODS, REFERENCE_METHOD

    return [REFERENCE_METHOD] + sorted(n for n in METHODS if n != REFERENCE_METHOD)


@methods_app.command("list")
def methods_list(
    dataset: str = typer.Option("biased-mnist", help=_DATASET_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="every method in full, as `methods show`"),
) -> None:
    """List the methods, one line each: bias labels, unbiased data D^u, post hoc, and what it does."""
    from ..methods import METHODS

    table = Table(title="debiaskit methods", title_justify="left")
    names = _names()
    columns = ("name", "bias labels", "D^u", "post hoc")
    widths = [max(map(len, names)), *map(len, columns[1:])]
    for col, width in zip(columns, widths):
        table.add_column(col, no_wrap=True, min_width=width)
    table.add_column("summary", no_wrap=True)
    # the summary gets what the terminal leaves (3 characters of border and padding per column) and is cut with an
    # ellipsis, never wrapped: one line per method in any width
    room = max(12, console.width - sum(widths) - 3 * (len(widths) + 1) - 1)
    for name in names:
        info = METHODS[name]
        text = _summary(info.description)
        table.add_row(
            esc(name),
            _yes(info.uses_bias_labels),
            _yes(info.uses_unbiased_data),
            _yes(info.post_hoc),
            esc(text if len(text) <= room else text[: room - 1] + "\u2026"),
        )
    console.print(table)
    if verbose:
        for name in names:
            console.print()
            _show(name, dataset)
    console.print(
        "details: `debiaskit methods show NAME`\ntrain one: `debiaskit train --method NAME "
        "[--method-param KEY=VALUE]`\npost hoc: `debiaskit ffw RUN_DIR`, `debiaskit unlearn RUN_DIR`"
    )


@methods_app.command("show")
def methods_show(
    name: str = typer.Argument(..., help="a method of `debiaskit methods list`"),
    dataset: str = typer.Option("biased-mnist", help=_DATASET_HELP),
) -> None:
    """One method in full: what it does and needs, its selection rule, and every default with its source."""
    _show(name, dataset)


def _show(name: str, dataset: str) -> None:
    from ..methods import get_method, method_defaults

    info = get_method(name)  # an unknown name: ConfigError naming the methods (exit 2)
    defaults = method_defaults(name, dataset)
    console.print(f"[bold]{esc(name)}[/bold]: {esc(info.description)}", highlight=False)
    for label, value in (
        ("reference", info.reference or "-"),
        ("uses bias labels", _yes(info.uses_bias_labels)),
        ("uses D^u", _yes(info.uses_unbiased_data)),
        ("post hoc", _yes(info.post_hoc)),
        ("selection", info.selection_rule),
        (f"defaults for {dataset}", _sources(defaults)),
    ):
        console.print(f"  {label}: {esc(value)}", highlight=False)
    for key, d in defaults.items():
        console.print(f"  {key} = {d.value!r}  ({d.source})", highlight=False, markup=False)
