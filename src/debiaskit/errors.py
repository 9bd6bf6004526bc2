"""Exceptions raised by debiaskit.

Every error says what was wrong and what to do about it; the CLI prints the message
without a traceback.
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
