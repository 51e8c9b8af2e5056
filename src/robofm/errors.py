"""Error types that the CLI reports as one clear line instead of a traceback."""

from __future__ import annotations


class RobofmError(Exception):
    """Base class for errors caused by user input (files, configs, observations), not by bugs.

    The message always names the file, episode, field or message at fault.
    """


class SpaceError(RobofmError, ValueError):
    """An ActionSpace or StateSpace is malformed (bad field) or two spaces do not match."""


class ConfigError(RobofmError, ValueError):
    """A config or preset is unknown or has a bad field."""


class NotAvailableError(RobofmError):
    """A capability is part of the design but has not landed in this build."""
