"""Exceptions and warnings raised by debiaskit.

Every error says what was wrong and what to do about it; the CLI prints the message
without a traceback. A warning (:class:`DebiaskitWarning`) is said before any compute and the work goes on;
``warnings.simplefilter("error", SmallSplitWarning)`` turns one into an error in Python.
"""


class DebiaskitError(Exception):
    """Base class of debiaskit's user-facing errors."""


class DataError(DebiaskitError):
    """Missing, corrupt or inconsistent data."""


class ConfigError(DebiaskitError, ValueError):
    """An argument or configuration value is invalid."""


class ModelError(DebiaskitError):
    """A model, head or checkpoint cannot be used as asked."""


class RunExistsError(DebiaskitError):
    """An output folder exists and would be replaced without ``force`` (or cannot be replaced at all)."""


class OutputError(DebiaskitError):
    """An output cannot be written: refused destination, busy, read-only, disk full."""


class OutputBusyError(OutputError):
    """Another process is writing the same output right now."""


class DamagedError(DataError):
    """A file debiaskit wrote earlier is truncated, invalid or inconsistent."""


class DebiaskitWarning(UserWarning):
    """Base class of debiaskit's warnings (the CLI prints them as ``warning: ...``, without a source line)."""


class SmallSplitWarning(DebiaskitWarning):
    """D^u_train or D^u_val is too small for what is selected or fitted on it (numbers and remedies inside)."""


class UntrustedCodeError(ModelError):
    """A record names code to import (a user model) and is neither signed by this user nor trusted explicitly."""


# `debiaskit ffw` (and any command that refuses to write a model worse than its input): the exit status that says
# "nothing was written because no output was better than the input" - not bad input (2), not a crash (1)
NO_IMPROVEMENT_EXIT = 3


class NoImprovementError(DebiaskitError):
    """A post-hoc step found no output that is not worse than the model it was given (do no harm: FFW,
    ``ffw/_harm.py``; FMD's ``unlearn``, its step choice): no model is returned or written. ``record``: what
    each stage reached against the input (JSON-able); ``result``: the refused :class:`~debiaskit.ffw.FFWResult`,
    for inspection only (FFW). The CLI exits with :data:`NO_IMPROVEMENT_EXIT`."""

    exit_code = NO_IMPROVEMENT_EXIT

    def __init__(self, message: str, *, record: dict | None = None, result=None) -> None:
        super().__init__(message)
        self.record = record or {}
        self.result = result
