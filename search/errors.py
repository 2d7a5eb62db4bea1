"""The project's own errors: mistakes a user can fix, each with a one-line message naming the culprit.

Imported by every module and importing nothing of the project, so no layer needs another to raise or catch them.
The command lines show these as one line with exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UsageError(Exception):
    """A mistake in what the user asked for; the message is one line and names the file, key or value."""


class DataError(UsageError):
    """A dataset missing, corrupt, unsafe or asked for wrongly; the message says what to do."""


class SpaceError(UsageError):
    """A space file or override that cannot run; the message names the file and the setting."""


class ConfigError(UsageError, ValueError):
    """A training config key with a bad value: the message names the key and the value."""


class CheckpointError(UsageError):
    """A checkpoint that cannot be read back: missing, truncated, or from another model."""


class SearchFailed(UsageError):
    """The search ran but could not finish (every trial failed, or the tracking store failed at the end)."""


class Interrupted(KeyboardInterrupt):
    """A search stopped by Ctrl-C or SIGTERM once it exists: the message says how to resume it."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one line: its last non-empty line (where multi-line errors put the cause), or its type."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1][:limit] if lines else type(exc).__name__
