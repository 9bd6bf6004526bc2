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

from ..errors import DebiaskitError
from ._common import app, console, esc, make_console

for _mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _mod.name.startswith("cmd_"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["app", "main"]


INTERRUPTED = (
    "[yellow]interrupted[/yellow] (Ctrl-C): the command stopped before finishing; its output folder "
    "was not written (an existing one is unchanged)"
)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Every warning as one ``warning: ...`` line on stderr: debiaskit's carry their numbers and remedies, and a
    source path and line (Python's format) would only be noise in a command's output. Installed by ``main``
    only: the library raises ordinary warnings, which Python code sees and filters as usual."""
    make_console(stderr=True).print(
        f"[bold yellow]warning:[/bold yellow] {esc(message)}", highlight=False, soft_wrap=True
    )


def main() -> None:
    """The ``debiaskit`` console script: runs the command line, errors as one line and exit code 2."""
    from .. import _dist  # late: it loads torch, which `debiaskit --help` does not need

    shown, warnings.showwarning = warnings.showwarning, _show_warning
    where = ""
    try:
        if _dist.init_from_env():  # started by torchrun: one process per rank
            rank, world = _dist.rank_and_world()
            where = f" (rank {rank} of {world})"
            console.quiet = rank != 0  # rank 0 speaks for all; errors still come from every rank
        app()
    except DebiaskitError as exc:
        make_console(stderr=True).print(f"[bold red]error{where}:[/bold red] {esc(exc)}", highlight=False)
        sys.exit(getattr(exc, "exit_code", 2))  # 2: bad input; NoImprovementError: errors.NO_IMPROVEMENT_EXIT
    except KeyboardInterrupt:
        make_console(stderr=True).print(INTERRUPTED, highlight=False)
        sys.exit(130)
    except SystemExit as exc:
        if exc.code == 130 and _from_keyboard_interrupt(exc):  # typer turns Ctrl-C into a silent exit 130
            make_console(stderr=True).print(INTERRUPTED, highlight=False)
        raise
    finally:
        warnings.showwarning = shown  # in-process callers (tests, notebooks) get Python's format back
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
