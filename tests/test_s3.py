"""`--storage s3://...`: a search's whole record on object storage, against a real S3 server (moto's) on 127.0.0.1.

Tune keeps its snapshot, trial results and checkpoints there, and search.json, best_config.json, --resume (with
and without --name), extending, warm start and `python -m search.tracking sync` read it back through pyarrow,
as on a cluster whose nodes share no disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pyarrow.fs
import pytest
import requests
from helpers import children, free_port, wait_for
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).parents[1]
SPACE = str(ROOT / "spaces/vgg_fashion_mnist.py")
BUCKET = "searches"


@contextlib.contextmanager
def moto_server(log: Path, **server_env: str) -> Iterator[dict]:
    """A real S3 server (moto) on a free port: the environment that reaches it, with test credentials."""
    port = free_port()
    env = {
        **os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
    }  # fmt: skip
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out, stderr=out, env={**os.environ, **server_env},
        )  # fmt: skip
    try:
        wait_for(lambda: requests.get(env["AWS_ENDPOINT_URL"], timeout=2), 60, "moto's S3 server", log, proc=server)
        yield env
    finally:
        server.terminate()
        server.wait(timeout=30)


def aws(service: str, env: dict, **keys: str):
    keys = {"aws_access_key_id": "test", "aws_secret_access_key": "test", **keys}
    return boto3.client(service, endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1", **keys)


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Iterator[dict]:
    """moto's S3 server with the bucket BUCKET."""
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as env:
        aws("s3", env).create_bucket(Bucket=BUCKET)
        yield env


def s3_files(env: dict, prefix: str) -> list[str]:
    fs = pyarrow.fs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], access_key="test", secret_key="test",
                                 region="us-east-1")  # fmt: skip
    return [f.path for f in fs.get_file_info(pyarrow.fs.FileSelector(prefix, recursive=True, allow_not_found=True))]


def run(argv: list[str], env: dict, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


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


def test_credentials_the_store_refuses_are_one_line(tmp_path):
    """moto checks credentials once its first four requests are done (the readiness probe, a user, its policy and
    its key); the bucket is made with that key, the search given a wrong secret."""
    (tmp_path / "cwd").mkdir()
    with moto_server(tmp_path / "moto.log", INITIAL_NO_AUTH_ACTION_COUNT="4") as env:
        iam = aws("iam", env)
        iam.create_user(UserName="student")
        allow = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="student", PolicyName="s3", PolicyDocument=json.dumps(allow))
        key = iam.create_access_key(UserName="student")["AccessKey"]
        mine = {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}
        aws("s3", env, **mine).create_bucket(Bucket=BUCKET)  # the key works
        wrong = {**env, "AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": "wrong"}
        line = refused(f"s3://{BUCKET}/runs", wrong, tmp_path / "cwd")
    assert line.startswith(f"error: --storage s3://{BUCKET}/runs: cannot reach bucket {BUCKET} ("), line


@pytest.mark.slow
def test_a_search_on_s3_survives_a_killed_driver_resumes_without_name_extends_and_warm_starts(
    s3, smoke_data_dir, tmp_path
):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    storage = f"s3://{BUCKET}/runs"
    cmd = [
        sys.executable, "-m", "search.run", SPACE, "--smoke", "--quiet", "--storage", storage, "--tracking-uri", uri,
        "--data-dir", str(smoke_data_dir), "--set", "MAX_EPOCHS=3", "--set", "MAX_CONCURRENT=1",
    ]  # fmt: skip
    log = tmp_path / "driver.log"
    with open(log, "w") as out:
        driver = subprocess.Popen(cmd, env=s3, cwd=tmp_path, start_new_session=True, stdout=out, stderr=out)
    checkpoints = lambda: [f for f in s3_files(s3, f"{BUCKET}/runs") if f.endswith("/checkpoint.pt")]  # noqa: E731
    wait_for(lambda: len(checkpoints()) >= 2, 300, "two checkpoints on S3", log, proc=driver)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and its Ray, as a crash would
    driver.wait()
    (name,) = {f.split("/")[2] for f in s3_files(s3, f"{BUCKET}/runs") if f.endswith("/search.json")}

    resumed = run([*cmd, "--resume"], s3, tmp_path)  # no --name: the newest search of the space on S3
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"config file {storage}/{name}/best_config.json" in resumed.stdout
    assert f"checkpoint  {storage}/{name}/" in resumed.stdout  # where the model is, as a URI that names S3
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("vgg_fashion_mnist").experiment_id
    (parent,) = client.search_runs([experiment_id], filter_string="tags.smoke = 'True'")
    trial_runs = children(client, parent.info.run_id)
    assert parent.info.status == "FINISHED" and len(trial_runs) == 4
    for r in trial_runs:
        assert r.info.status != "RUNNING"
        epochs = [m.step for m in client.get_metric_history(r.info.run_id, "val_acc")]
        assert epochs == list(range(1, int(r.data.tags["epoch"]) + 1)), epochs  # none lost, none twice

    synced = run([sys.executable, "-m", "search.tracking", "sync", f"{storage}/{name}"], s3, tmp_path)
    assert synced.stdout.strip() == "synced: 0 created, 0 epochs, 0 ended, 0 deleted", synced.stderr

    extended = run([*cmd, "--resume", "--name", name, "--set", "NUM_SAMPLES=5"], s3, tmp_path)
    assert extended.returncode == 0, extended.stderr[-3000:]
    assert len(children(client, parent.info.run_id)) == 5

    warm = run([*cmd, "--name", "warm", "--warm-start", name, "--set", "NUM_SAMPLES=1"], s3, tmp_path)
    assert warm.returncode == 0, warm.stderr[-3000:]
    assert f"of the 5 trials of {name} fit vgg_fashion_mnist.py" in warm.stdout, warm.stdout
