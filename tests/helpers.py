"""What many test files need: a free port, polling with a deadline, a parent run's trial runs, the smoke data."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

# --smoke trains 512 images and the split holds back 10% for validation: the fakes need a few more.
SMOKE_TRAIN, SMOKE_TEST = 640, 100
SMOKE_DATASETS = ("cifar100", "cifar10", "fashion_mnist")  # what the space files in spaces/ search
# What a poll takes for "not there yet": a server not listening, a file half-written, a line not printed yet.
NOT_YET = (requests.RequestException, OSError, ValueError, KeyError)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(
    check: Callable[[], object],
    timeout: float,
    what: str,
    log: Path | None = None,
    *,
    proc: subprocess.Popen | None = None,
    interval: float = 0.5,
) -> object:
    """Polls `check` until it returns something truthy, and returns that. Fails naming `what` (with the tail of
    `log`) on timeout, or as soon as `proc`, the process that should make it happen, has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if result := check():
                return result
        except NOT_YET:
            pass
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"waiting for {what}: the process ended first (exit code {proc.returncode})\n{_tail(log)}")
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{_tail(log)}")


def _tail(log: Path | None) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-30:]) if log and log.exists() else ""


def children(client, parent_run_id: str) -> list:
    """The runs whose MLflow parent is `parent_run_id`: a search's trial runs (and its final retrains)."""
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'")
