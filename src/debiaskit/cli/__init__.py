"""The ``debiaskit`` command line: thin parsing and printing over the Python API.

Each command group lives in its own module (``cmd_*.py``) and registers itself on ``app`` when
imported; this package imports them all.
"""
from __future__ import annotations

import importlib
import pkgutil
import sys

from rich.console import Console

from ..errors import DebiaskitError
from ._common import app

for _mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _mod.name.startswith("cmd_"):
        importlib.import_module(f"{__name__}.{_mod.name}")

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
