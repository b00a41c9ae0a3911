"""The base class of every error b-hive reports to users.

A :class:`BHiveError` carries a message that names the file, branch or parameter at fault
and says what to do; the law tasks show it without a Python traceback (tasks/base.py).
Every module defines its own subclasses (``ConfigError``, ``InputError``, ``ExportError``,
...), so callers can still catch them by kind.
"""

from __future__ import annotations


class BHiveError(Exception):
    """An expected failure with a message meant for the user (no traceback needed)."""


class DiskFullError(BHiveError, OSError):
    """Writing a file failed because its file system is full (or over quota)."""


class InterruptedRun(BHiveError):
    """A run was stopped by SIGINT (Ctrl-C) or SIGTERM; its completed steps are kept."""
