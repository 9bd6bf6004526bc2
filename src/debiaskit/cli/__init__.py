"""The ``debiaskit`` command line: thin parsing and printing over the Python API.

Each command group lives in its own module and registers itself on ``app`` when imported.
"""
from __future__ import annotations

import sys

from rich.console import Console

from ..errors import DebiaskitError
from . import _data, _train  # noqa: F401  (register commands)
from ._common import app

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except DebiaskitError as exc:
        Console(stderr=True).print(f"[bold red]error:[/bold red] {exc}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        Console(stderr=True).print("[yellow]interrupted[/yellow]")
        sys.exit(130)


if __name__ == "__main__":
    main()
