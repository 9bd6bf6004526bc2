"""`debiaskit trust FOLDER`: review what a run / FFW folder would run, and trust it (sign its record with your key)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from ._common import app, console

# debiaskit's library (torch) is imported inside each command, so that `debiaskit --help` and argument errors stay fast

_STATE = {
    "signed": "signed with your key",
    "changed": "signed with your key, but changed after it was signed",
    "other-key": "signed with another key than yours",
    "unsigned": "not signed",
}


@app.command()
def trust(
    folder: Path = typer.Argument(..., help="a run folder (run.json) or FFW folder (ffw.json) you received"),
    show: bool = typer.Option(False, "--show", help="only show what the folder would run; sign nothing"),
) -> None:
    """Show what a folder you received would run, and trust it: sign its record with your key.

    Shows the code its record names (import path, arguments, source file, SHA-256s) and signs the record, so that
    audit / ffw / discover / unlearn load it without --trust-code. Folders you write yourself are signed already;
    review the code before trusting anyone else's."""
    from ..runs import trust_folder

    report = trust_folder(folder, sign=not show)
    console.print(f"{escape(str(report.file))}: {_STATE[report.before]}", highlight=False)
    what = "loading it runs:" if report.needs_code else "loading it runs no code from the folder:"
    console.print(what, highlight=False)
    for line in report.lines:
        console.print(f"  - {escape(line)}", highlight=False)
    if report.signed:
        console.print(
            f"[green]trusted[/green]: {escape(str(report.file))} is now signed with your key", highlight=False
        )
    else:
        console.print(
            f"nothing signed (--show); trust it with `debiaskit trust {escape(str(folder))}`", highlight=False
        )
