"""`--storage s3://...`: a search's whole record on object storage, against a real S3 server (moto's) on 127.0.0.1.

Tune keeps its snapshot, trial results and checkpoints there, and search.json, best_config.json, --resume (with
and without --name), extending, warm start and `python -m search.tracking sync` read it back through pyarrow,
as on a cluster whose nodes share no disk.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import BUCKET, Link, children, s3_files, wait_for
from mlflow.tracking import MlflowClient

from search import record

ROOT = Path(__file__).parents[1]
SPACE = str(ROOT / "spaces/vgg_fashion_mnist.py")


def run(argv: list[str], env: dict, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def start_until_two_checkpoints(
    cmd: list[str], env: dict, cwd: Path, s3: dict, folder: str
) -> tuple[subprocess.Popen, Path]:
    """Starts the search `cmd` (its output in cwd/driver.log) and returns once two checkpoints are under `folder`
    (bucket/key...) on the S3 server `s3` reaches."""
    log = cwd / "driver.log"
    with open(log, "w") as out:
        driver = subprocess.Popen(cmd, env=env, cwd=cwd, start_new_session=True, stdout=out, stderr=out)
    checkpoints = lambda: [f for f in s3_files(s3, folder) if f.endswith("/checkpoint.pt")]  # noqa: E731
    wait_for(lambda: len(checkpoints()) >= 2, 300, "two checkpoints on S3", log, proc=driver)
    return driver, log


def refused(storage: str, env: dict, cwd: Path) -> str:
    """The one line `search.run` refuses `storage` with, having started nothing."""
    got = run([sys.executable, "-m", "search.run", SPACE, "--smoke", "--storage", storage, "--name", "x"], env, cwd,
              timeout=120)  # fmt: skip
    assert got.returncode == 2 and len(got.stderr.strip().splitlines()) == 1, got.stderr
    assert not list(cwd.iterdir())  # no store, no data folder: nothing started
    return got.stderr.strip()


@pytest.mark.parametrize(
    ("storage", "env_change", "message"),
    [
        ("s3://nobucket/runs", {}, "--storage s3://nobucket/runs: bucket nobucket does not exist"),
        (
            "s3://searches/runs",
            {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"},
            "--storage s3://searches/runs: cannot reach",
        ),
        ("nosuch://searches/runs", {}, "nosuch://searches/runs: storage pyarrow cannot open"),
    ],
    ids=["no-bucket", "no-server", "bad-scheme"],
)
def test_bad_object_storage_is_one_line_before_anything_starts(storage, env_change, message, s3, tmp_path):
    assert refused(storage, {**s3, **env_change}, tmp_path).startswith(f"error: {message}")
    assert not [f for f in s3_files(s3, BUCKET) if "/x/" in f]


def test_credentials_the_store_refuses_are_one_line(s3, tmp_path):
    line = refused(f"s3://{BUCKET}/runs", {**s3, "AWS_SECRET_ACCESS_KEY": "wrong"}, tmp_path)
    assert line.startswith(f"error: --storage s3://{BUCKET}/runs: cannot reach bucket {BUCKET} ("), line


def test_storage_that_does_not_answer_is_told_apart_from_storage_that_does(s3, monkeypatch):
    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(key, s3[key])
    assert record.unreachable(f"s3://{BUCKET}/runs/x") == ""
    link = Link(s3["AWS_ENDPOINT_URL"])
    monkeypatch.setenv("AWS_ENDPOINT_URL", link.url)
    assert record.unreachable(f"s3://{BUCKET}/runs/x") == ""
    link.cut()
    assert "NETWORK_CONNECTION" in record.unreachable(f"s3://{BUCKET}/runs/x")
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers: bounded by the timeout
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        assert record.unreachable(f"s3://{BUCKET}/runs/x", timeout=1) == "no answer within 1 s"


@pytest.mark.slow
def test_a_search_on_s3_survives_an_outage_and_a_killed_driver_resumes_without_name_extends_and_warm_starts(
    s3, smoke_data_dir, tmp_path, sqlite_uri
):
    """A search keeps its whole record on S3, which it reaches through a `Link`. The route is cut mid-search: the
    search stops with one line (exit 1), its parent FAILED, no trial failed. Once S3 is back, a --resume without
    --name (the newest search of the space there) goes on until a SIGKILL ends its driver and its Ray, as a crash
    would; a second --resume completes it from the checkpoints, every epoch once. Then sync changes nothing, a
    --resume with more samples extends it, and a warm start reads it."""
    link = Link(s3["AWS_ENDPOINT_URL"])  # the route to S3, to be cut
    env = {**s3, "AWS_ENDPOINT_URL": link.url}
    uri = sqlite_uri
    storage = f"s3://{BUCKET}/runs"
    cmd = [
        sys.executable, "-m", "search.run", SPACE, "--smoke", "--quiet", "--storage", storage,
        "--tracking-uri", uri, "--data-dir", str(smoke_data_dir),
        "--set", "MAX_EPOCHS=5", "--set", "GRACE_PERIOD=5", "--set", "MAX_CONCURRENT=2",
        "--set", "CHECKPOINT_SECONDS=0",  # a checkpoint every epoch: the outage and the kill come mid-trial
    ]  # fmt: skip
    driver, log = start_until_two_checkpoints(cmd, env, tmp_path, s3, f"{BUCKET}/runs")
    link.cut()  # S3 keeps what it holds; the search can no longer reach it
    try:
        driver.wait(timeout=300)  # bounded: it does not retry into the outage for ever
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    (name,) = {f.split("/")[2] for f in s3_files(s3, f"{BUCKET}/runs") if f.endswith("/search.json")}
    last = log.read_text().strip().splitlines()[-1]
    assert driver.returncode == 1, log.read_text()[-3000:]
    assert last.startswith(f"error: storage {storage} does not answer ("), last
    assert last.endswith(f"resume with  python -m search.run {SPACE} --resume --name {name}"), last
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("vgg_fashion_mnist").experiment_id
    (parent,) = client.search_runs([experiment_id], filter_string="tags.smoke = 'True'")
    assert parent.info.status == "FAILED" and "does not answer" in parent.data.tags["error"]
    for r in children(client, parent.info.run_id):  # an outage is no fault of the trials': none failed
        assert (r.info.status, r.data.tags["outcome"]) in {("KILLED", "interrupted"), ("FINISHED", "completed")}

    link.mend()
    checkpoints = lambda: {f for f in s3_files(s3, storage[5:]) if f.endswith("/checkpoint.pt")}  # noqa: E731
    before = checkpoints()
    with open(log, "w") as out:  # no --name: the newest search of the space on S3
        driver = subprocess.Popen([*cmd, "--resume"], env=env, cwd=tmp_path, start_new_session=True, stdout=out,
                                  stderr=out)  # fmt: skip
    wait_for(lambda: checkpoints() - before, 300, "a checkpoint of the resumed search", log, proc=driver)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and its Ray, as a crash would
    driver.wait()

    resumed = run([*cmd, "--resume"], env, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "snapshotting" not in resumed.stderr  # --quiet: no advice on Tune settings the user does not set
    assert f"config file {storage}/{name}/best_config.json" in resumed.stdout
    assert f"checkpoint  {storage}/{name}/" in resumed.stdout  # where the model is, as a URI that names S3
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED" and "error" not in parent.data.tags
    trial_runs = children(client, parent.info.run_id)
    assert len(trial_runs) == 4
    for r in trial_runs:
        assert (r.info.status, r.data.tags["outcome"]) == ("FINISHED", "completed")
        epochs = [m.step for m in client.get_metric_history(r.info.run_id, "val_acc")]
        assert epochs == [1, 2, 3, 4, 5], epochs  # the trials stopped went on from their checkpoints, none twice

    synced = run([sys.executable, "-m", "search.tracking", "sync", f"{storage}/{name}"], env, tmp_path)
    assert synced.stdout.strip() == "synced: 0 created, 0 epochs, 0 ended, 0 deleted", synced.stderr

    extended = run([*cmd, "--resume", "--name", name, "--set", "NUM_SAMPLES=5"], env, tmp_path)
    assert extended.returncode == 0, extended.stderr[-3000:]
    assert len(children(client, parent.info.run_id)) == 5

    warm = run([*cmd, "--name", "warm", "--warm-start", name, "--set", "NUM_SAMPLES=1"], env, tmp_path)
    assert warm.returncode == 0, warm.stderr[-3000:]
    assert f"of the 5 trials of {name} fit vgg_fashion_mnist.py" in warm.stdout, warm.stdout
