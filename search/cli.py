"""What every command line here shares: a parser whose mistakes are one line, `--set key=value` parsing, and
`run_main`, which shows the project's own errors as one line with exit code 2 and lets every other error (a bug)
keep its traceback.
"""

from __future__ import annotations

import argparse
import ast
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import NoReturn
from urllib.parse import SplitResult, urlsplit

from search.errors import SearchFailed, UsageError

# MLflow's HTTP defaults retry for minutes (a store that is down took 268 s to fail a sync): a command line would
# rather say so in seconds, and live tracking rests and leaves the gaps to the end's sync.
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                        "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}  # fmt: skip


def cap_mlflow_retries() -> None:
    """Bounds how long MLflow's HTTP requests retry, unless the environment says otherwise; call it before
    MLflow makes its first request (it reads these per request)."""
    for key, value in MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag or value is a UsageError (one line, exit 2), not a multi-line usage block."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message} (see --help)")


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= minimum, named with the bad value when it is not."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got '{text}'")
        return value

    return parse


def parse_address(flag: str, address: str, schemes: tuple[str, ...]) -> SplitResult:
    """An address, `host:port` or `scheme://host:port`, checked for its form before anything connects.

    Raises:
        UsageError: a scheme not in `schemes`, no host, or a port that is not a number in 1..65535.
    """
    try:
        parts = urlsplit(address if "://" in address else f"{schemes[0]}://{address}")
        port = parts.port  # urlsplit checks ports lazily
        host = parts.hostname
    except ValueError as exc:  # "Port could not be cast to integer value as 'abc'", "Invalid IPv6 URL"
        raise UsageError(f"{flag} {address}: not an address ({exc}); expected {schemes[0]}://HOST:PORT") from None
    if parts.scheme not in schemes:
        raise UsageError(f"{flag} {address}: unknown scheme '{parts.scheme}://'; use {' or '.join(schemes)}")
    if not host or port == 0:
        raise UsageError(f"{flag} {address}: no {'host' if not host else 'port'}; expected {schemes[0]}://HOST:PORT")
    return parts


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


# Ctrl-C or SIGTERM arrived while the command's own handlers were on (before a search installs its own)
_INTERRUPTED = threading.Event()


def _interrupt(signum, frame) -> None:
    _INTERRUPTED.set()
    raise KeyboardInterrupt


def run_main(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Runs a CLI entry point and exits: 0, or main's code; 2 for a UsageError, 1 for a search that failed.

    Only the project's own errors are shown as one line (`--debug` shows their traceback too); anything else is a
    bug and propagates with its traceback.
    """
    argv = sys.argv[1:] if argv is None else argv
    _INTERRUPTED.clear()
    if threading.current_thread() is threading.main_thread():  # SIGTERM (Slurm, `kill`) ends it as Ctrl-C does
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, _interrupt)
    try:
        code = main(argv)
    except UsageError as exc:
        if "--debug" in argv:
            raise
        if _INTERRUPTED.is_set():  # an interrupt inside a space file's code came out as its error (see below)
            _exit_interrupted()
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1 if isinstance(exc, SearchFailed) else 2)
    except KeyboardInterrupt as exc:  # a search that exists says how to resume it (errors.Interrupted)
        _exit_interrupted(str(exc))
    except Exception:
        # An interrupt raised inside an extension's code can come out as that code's own error: pydantic's schema
        # builder, while `import mlflow` runs, turned Ctrl-C into a SchemaError and a traceback; Python 3.11 wraps
        # one raised in a class body's `__set_name__` (a space file's `from ray import tune`) in a RuntimeError,
        # which read_space reported as a broken space file. Still the interrupt.
        if not _INTERRUPTED.is_set():
            raise
        _exit_interrupted()
    sys.exit(code or 0)


def _exit_interrupted(how: str = "") -> NoReturn:
    print(f"interrupted: {how}" if how else "interrupted", file=sys.stderr)
    sys.exit(130)
