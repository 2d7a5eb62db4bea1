"""Ctrl-C and SIGTERM at any moment of a search (issue 22, root cause 6): exit 130, one line, the parent KILLED
(never RUNNING), nothing half-written, and the search resumable.

Before: a KeyboardInterrupt raised from the SIGTERM handler while a finalizer ran was dropped ("Exception ignored
in ...") and the search ended FINISHED, deaf to later SIGTERMs; SIGTERM before the driver's handler existed killed
it silently (exit -15); an interrupt while MLflow logged the winner left a PENDING logged model; an interrupted
search printed two lines.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.entities import LoggedModelStatus
from mlflow.tracking import MlflowClient

from search import driver
from search.errors import Interrupted
from search.run import search
from search.tracking import fail_pending_models

ROOT = Path(__file__).parents[1]
SPACE = str(ROOT / "spaces" / "vgg_fashion_mnist.py")


def test_an_interrupt_marks_the_models_mlflow_had_not_finished_logging_failed(sqlite_uri):
    """MLflow 3 records a logged model (PENDING) before it writes its files; a Ctrl-C in between left it PENDING."""
    client = MlflowClient(sqlite_uri)
    experiment = client.create_experiment("search")
    parent, other = client.create_run(experiment).info.run_id, client.create_run(experiment).info.run_id
    halfway = client.create_logged_model(experiment, source_run_id=parent, name="model")
    done = client.create_logged_model(experiment, source_run_id=parent, name="model")
    client.finalize_logged_model(done.model_id, LoggedModelStatus.READY)
    elsewhere = client.create_logged_model(experiment, source_run_id=other, name="model")

    fail_pending_models(client, experiment, parent)

    status = {m: client.get_logged_model(m).status for m in (halfway.model_id, done.model_id, elsewhere.model_id)}
    assert status == {
        halfway.model_id: LoggedModelStatus.FAILED,
        done.model_id: LoggedModelStatus.READY,
        elsewhere.model_id: LoggedModelStatus.PENDING,  # another run's: not this search's to end
    }


class _Finalizer:
    """Sends SIGTERM to this process from its `__del__`, where Python drops the handler's KeyboardInterrupt."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow  # a whole search in this process, and its resume
def test_a_sigterm_whose_interrupt_a_finalizer_swallowed_still_stops_the_search(
    smoke_data_dir, local_ray, sqlite_uri, tmp_path, monkeypatch
):
    """In the adversarial sweep, 1 SIGTERM in 3 during the final evaluation ended the search FINISHED, exit 0."""
    evaluate = driver.evaluate_test

    def sigterm_in_a_finalizer(*args, **kwargs):
        _Finalizer()  # collected at once: the signal arrives inside __del__
        gc.collect()
        return evaluate(*args, **kwargs)

    dropped = []  # what Python printed as "Exception ignored in ..."
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: dropped.append(unraisable.exc_type))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(driver, "evaluate_test", sigterm_in_a_finalizer)
    options = {"smoke": True, "data_dir": str(smoke_data_dir), "storage": str(tmp_path / "runs"), "name": "term",
               "tracking_uri": sqlite_uri, "quiet": True, "sets": {"NUM_SAMPLES": 2, "MAX_EPOCHS": 1}}  # fmt: skip
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted, match="resume with  python -m search.run .* --resume --name term"):
        search(SPACE, **options)
    assert dropped == [KeyboardInterrupt]  # the interrupt was indeed swallowed where it was raised
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # a notebook's, after
    client = MlflowClient(sqlite_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert {r.info.status for r in runs if "mlflow.parentRunId" not in r.data.tags} == {"KILLED"}
    assert "RUNNING" not in {r.info.status for r in runs}

    monkeypatch.setattr(driver, "evaluate_test", evaluate)
    result = search(SPACE, resume=True, **options)
    assert client.get_run(result.parent_run_id).info.status == "FINISHED"
    assert result.summary["trials"] == 2


@pytest.mark.slow  # real processes, each starting a search
@pytest.mark.parametrize(
    ("sent", "after"),
    [(signal.SIGTERM, 1.0), (signal.SIGTERM, 4.0), (signal.SIGTERM, 8.0), (signal.SIGINT, 2.0)],
    ids=["sigterm-checks", "sigterm-data-and-store", "sigterm-ray-starting", "ctrl-c-imports"],
)
def test_sigterm_at_any_moment_of_a_start_is_exit_130_one_line_and_nothing_running(
    sent, after, smoke_data_dir, _empty_store, tmp_path
):
    """From the argument checks through data, store and Ray start to the first trials: `kill PID` during the first
    second exited -15 with no word; later the search said two lines."""
    store = tmp_path / "mlflow.db"
    store.write_bytes(_empty_store.read_bytes())
    cmd = [sys.executable, "-m", "search.run", SPACE, "--smoke", "--quiet", "--name", "term", "--data-dir",
           str(smoke_data_dir), "--storage", str(tmp_path / "runs"),
           "--tracking-uri", f"sqlite:///{store}"]  # fmt: skip
    driver_process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    time.sleep(after)
    driver_process.send_signal(sent)
    _, err = driver_process.communicate(timeout=120)
    lines = err.strip().splitlines()
    if driver_process.returncode == 0:
        pytest.skip(f"the search finished within {after} s")
    assert driver_process.returncode == 130 and lines[-1].startswith("interrupted"), err[-3000:]
    assert "Traceback" not in err and sum(line.startswith("interrupted") for line in lines) == 1, err[-3000:]
    client = MlflowClient(f"sqlite:///{store}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert "RUNNING" not in {r.info.status for r in runs}, [(r.info.run_name, r.info.status) for r in runs]
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    if parents:  # it got that far: KILLED, and the line says how to resume
        assert [p.info.status for p in parents] == ["KILLED"] and "--resume --name term" in lines[-1], err[-3000:]


def test_sigterm_while_the_space_file_runs_is_an_interrupt_not_a_space_error(cli_exit, tmp_path):
    """`kill PID` one second in landed while the space file's `from ray import tune` built a class: Python 3.11
    wraps an exception raised in `__set_name__` in a RuntimeError, and the search said the space file was broken
    (exit 2, "vgg_fashion_mnist.py:11: RuntimeError: Error calling __set_name__ ...") instead of interrupted."""
    from search import run

    space = tmp_path / "space.py"
    space.write_text(
        Path(SPACE).read_text() + "\n\nimport os, signal\n\n\nclass _Field:\n    def __set_name__(self, owner, name):\n"
        "        os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` landing while the file's imports run\n\n\n"
        "class _Model:\n    field = _Field()\n"
    )
    code, _, err = cli_exit(run.main, [space, "--storage", tmp_path / "runs"])
    assert (code, err.strip()) == (130, "interrupted"), err
    assert not (tmp_path / "runs").exists()
