"""One exception family for user-facing mistakes.

The CLI catches :class:`BenchError`, prints its message as one line and exits with code 2.
Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class BenchError(Exception):
    """A user mistake or bad input; the message says what is wrong and how to fix it."""


class DatasetError(BenchError):
    """A dataset is missing, unreadable or malformed."""


class UnknownPluginError(BenchError):
    """A plugin name that no registry knows."""


class ConfigError(BenchError):
    """An invalid configuration or hyper-parameter value."""


class TrainingError(BenchError):
    """Training diverged (NaN/inf loss) or cannot proceed."""


class BundleError(BenchError):
    """A run bundle that cannot be written, or one refused on unpacking (a hash that does not
    match its manifest, a path outside the results folder, a member that is not a stage file)."""
