"""What every command line here shares: `--set key=value` parsing and one-line errors with exit code 2."""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable


class UsageError(Exception):
    """A mistake in what the user asked for; the message is one line and names the culprit."""


def parse_value(text: str) -> object:
    """'0.1' -> 0.1, 'true' -> True, '[1, 2]' -> [1, 2], anything else stays a string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_sets(items: list[str] | None) -> dict[str, object]:
    """Parses repeated `--set key=value` options into a dict.

    Raises:
        UsageError: for an item without '=' or with an empty key.
    """
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {item!r}: expected key=value, for example --set lr=0.01")
        out[key.strip()] = parse_value(value)
    return out


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> None:
    """Runs a CLI entry point: known mistakes become one line on stderr and exit code 2.

    The full traceback is shown only with `--debug`, for bug reports.
    """
    argv = sys.argv[1:] if argv is None else argv
    from search.data import DataError  # the data module is the one place that defines it
    from search.train import CheckpointError

    try:
        code = main(argv)
    except (UsageError, ValueError, DataError, CheckpointError, FileNotFoundError) as exc:
        if "--debug" in argv:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:
        if "--debug" in argv or type(exc).__name__ != "SearchFailed":
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
