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
    """A finished run would be overwritten without ``force``."""
