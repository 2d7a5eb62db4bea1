"""What `search.run` reports as the MLflow store failing at the end: only the store's own errors, each made here
by a real MLflow client or a real HTTP request; any other error keeps its traceback."""

from __future__ import annotations

import os
import socket

import pytest
import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from search.driver import _is_store_error


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_only_the_stores_own_failures_are_store_errors(sqlite_uri, tmp_path, monkeypatch):
    with pytest.raises(MlflowException) as no_run:
        MlflowClient(sqlite_uri).get_run("0" * 32)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(MlflowException) as no_server:
        MlflowClient(f"http://127.0.0.1:{closed_port()}").search_experiments()
    with pytest.raises(requests.ConnectionError) as refused:  # an artifact upload's own request
        requests.get(f"http://127.0.0.1:{closed_port()}", timeout=5)
    assert _is_store_error(no_run.value) and _is_store_error(no_server.value) and _is_store_error(refused.value)

    # Seen under a Ray Job whose working folder vanished: Tune's ExperimentAnalysis calls os.getcwd()
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    with pytest.raises(FileNotFoundError) as no_cwd:
        os.getcwd()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(IsADirectoryError) as a_folder:
        open(tmp_path).close()
    assert not _is_store_error(no_cwd.value) and not _is_store_error(a_folder.value)
    assert not _is_store_error(ValueError("a bug")) and not _is_store_error(KeyboardInterrupt())
