"""The ``debiaskit`` command line: thin parsing and printing over the Python API.

Each command group lives in its own module (``cmd_*.py``) and registers itself on ``app`` when
imported; this package imports them all. The command modules import the library (and so torch) inside
each command function, not at the top: ``debiaskit --help`` and argument errors then answer at once. That is
the one place where imports are deferred on purpose; the layers below import at module level.
"""
from __future__ import annotations

import importlib
import pkgutil
import sys
import warnings

from rich.console import Console

from ..errors import DebiaskitError, DebiaskitWarning
from ._common import app, console

for _mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _mod.name.startswith("cmd_"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["app", "main"]


INTERRUPTED = ("[yellow]interrupted[/yellow] (Ctrl-C): the command stopped before finishing; its output folder "
               "was not written (an existing one is unchanged)")


def _show_warning(message, category, filename, lineno, file=None, line=None, *, _default=warnings.showwarning):
    """debiaskit's own warnings as plain ``warning: ...`` lines (they carry their numbers and remedies; the
    source line would only be noise); every other warning as Python shows it."""
    if issubclass(category, DebiaskitWarning):
        Console(stderr=True).print(f"[bold yellow]warning:[/bold yellow] {message}", highlight=False)
    else:
        _default(message, category, filename, lineno, file, line)


def main() -> None:
    from .. import _dist   # late: it loads torch, which `debiaskit --help` does not need
    warnings.showwarning = _show_warning
    where = ""
    try:
        if _dist.init_from_env():   # started by torchrun: one process per rank
            rank, world = _dist.rank_and_world()
            where = f" (rank {rank} of {world})"
            console.quiet = rank != 0   # rank 0 speaks for all; errors still come from every rank
        app()
    except DebiaskitError as exc:
        Console(stderr=True).print(f"[bold red]error{where}:[/bold red] {exc}", highlight=False)
        sys.exit(getattr(exc, "exit_code", 2))   # 2: bad input; NoImprovementError: errors.NO_IMPROVEMENT_EXIT
    except KeyboardInterrupt:
        Console(stderr=True).print(INTERRUPTED, highlight=False)
        sys.exit(130)
    except SystemExit as exc:
        if exc.code == 130 and _from_keyboard_interrupt(exc):  # typer turns Ctrl-C into a silent exit 130
            Console(stderr=True).print(INTERRUPTED, highlight=False)
        raise
    finally:
        _dist.shutdown()


def _from_keyboard_interrupt(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


if __name__ == "__main__":
    main()
