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


class NothingBetterError(DebiaskitError):
    """A post-hoc step found no model better than its input under the stated tolerance; nothing was written
    (``debiaskit unlearn`` exits with ``EXIT_CODE``, distinct from the 2 of bad input)."""

    EXIT_CODE = 3


class DamagedError(DataError):
    """A file debiaskit wrote earlier is truncated, invalid or inconsistent."""


class DebiaskitWarning(UserWarning):
    """Base class of debiaskit's warnings (the CLI prints them as ``warning: ...``, without a source line)."""


class SmallSplitWarning(DebiaskitWarning):
    """D^u_train or D^u_val is too small for what is selected or fitted on it (numbers and remedies inside)."""


class UntrustedCodeError(ModelError):
    """A record names code to import (a user model) and is neither signed by this user nor trusted explicitly."""
