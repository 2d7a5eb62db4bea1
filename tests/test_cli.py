"""search.cli: `--set` parsing, and which errors are one line (the project's own) and which keep a traceback."""

from __future__ import annotations

import os
import signal
import time

import pytest

from search import cli
from search.errors import DataError, SearchFailed, UsageError, one_line


def test_parse_sets_reads_python_literals_and_keeps_the_rest_as_strings():
    assert cli.parse_sets(["lr=0.1", "aug=true", "ms=[1, 2]", "name=vgg7", "x=none", "s= spaced "]) == {
        "lr": 0.1, "aug": True, "ms": [1, 2], "name": "vgg7", "x": None, "s": " spaced ",
    }  # fmt: skip
    with pytest.raises(UsageError, match="--set 'lr': expected key=value"):
        cli.parse_sets(["lr"])
    with pytest.raises(UsageError, match="expected key=value"):
        cli.parse_sets(["=3"])


@pytest.mark.parametrize(("error", "code"), [(UsageError("bad"), 2), (DataError("bad"), 2), (SearchFailed("x"), 1)])
def test_the_projects_own_errors_are_one_line(error, code, capsys):
    def main(argv):
        raise error

    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(main, [])
    assert exit_info.value.code == code
    assert capsys.readouterr().err == f"error: {error}\n"


@pytest.mark.parametrize("error", [ValueError("deep in pandas"), FileNotFoundError("a bug"), KeyError("val_top5")])
def test_any_other_error_is_a_bug_and_keeps_its_traceback(error):
    def main(argv):
        raise error

    with pytest.raises(type(error)):
        cli.run_main(main, [])


def test_a_bad_flag_is_one_line_not_a_usage_block():
    parser = cli.ArgumentParser(prog="prog")
    parser.add_argument("--n", type=cli.at_least(1))
    with pytest.raises(UsageError, match=r"^prog: argument --n: must be an integer >= 1, got 'abc' \(see --help\)$"):
        parser.parse_args(["--n", "abc"])


def test_one_line_takes_the_cause_from_the_last_line():
    assert one_line(RuntimeError("Traceback:\n  frame\nOSError: disk full\n")) == "OSError: disk full"
    assert one_line(RuntimeError()) == "RuntimeError"


@pytest.mark.parametrize("sent", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupt_that_an_extension_wrapped_in_its_own_error_is_still_an_interrupt(sent, capsys):
    """Seen in CI: Ctrl-C while `import mlflow` ran reached pydantic's schema builder, which raised it as a
    SchemaError: a traceback and exit 1 instead of the one line and 130 of any other interrupt."""

    def main(argv):
        try:
            os.kill(os.getpid(), sent)
            time.sleep(5)  # the handler raises here
        except KeyboardInterrupt as exc:
            raise RuntimeError("Error building `model` serializer") from exc  # what the extension does

    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as exit_:
            cli.run_main(main, [])
        assert exit_.value.code == 130 and capsys.readouterr().err == "interrupted\n"
        with pytest.raises(RuntimeError):  # the same error with no interrupt is a bug, with its traceback
            cli.run_main(lambda argv: (_ for _ in ()).throw(RuntimeError("a bug")), [])
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
