"""`debiaskit methods list`: the registered methods, what each needs, and where its defaults come from."""
from __future__ import annotations

import typer
from rich.table import Table

from ._common import app, console, esc
# debiaskit's library (torch) is imported inside each command, so that `debiaskit --help` and argument errors stay fast

methods_app = typer.Typer(help="The debiasing methods (training-time and post-hoc).", no_args_is_help=True)
app.add_typer(methods_app, name="methods")


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


@methods_app.command("list")
def methods_list(dataset: str = typer.Option("biased-mnist", help="dataset whose family's defaults are shown"),
                 verbose: bool = typer.Option(False, "--verbose", "-v", help="every default with its value and source")) -> None:
    """List the methods: bias labels, unbiased data D^u, post hoc, selection rule and the source of the defaults."""
    from ..methods import METHODS, REFERENCE_METHOD, method_defaults
    table = Table(title=f"debiaskit methods (defaults for {esc(dataset)})")
    for col in ("name", "uses bias labels", "uses D^u", "post hoc", "selection", "defaults from", "reference"):
        table.add_column(col)
    names = [REFERENCE_METHOD] + sorted(n for n in METHODS if n != REFERENCE_METHOD)
    for name in names:
        info = METHODS[name]
        defaults = method_defaults(name, dataset)
        table.add_row(esc(name), _yes(info.uses_bias_labels), _yes(info.uses_unbiased_data), _yes(info.post_hoc),
                      esc(info.selection_rule), esc(_sources(defaults)), esc(info.reference or "-"))
    console.print(table)
    if verbose:
        for name in names:
            defaults = method_defaults(name, dataset)
            console.print(f"\n[bold]{esc(name)}[/bold]: {esc(METHODS[name].description)}")
            for key, d in defaults.items():
                console.print(f"  {key} = {d.value!r}  ({d.source})", highlight=False, markup=False)
    console.print("train one: `debiaskit train --method NAME --method-param KEY=VALUE ...`; post-hoc ones run on a "
                  "trained run (`debiaskit ffw RUN_DIR`, `debiaskit unlearn RUN_DIR`)")
