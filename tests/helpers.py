"""What many test files need: a free port, polling with a deadline, a parent run's trial runs, the smoke data, a
real S3 server (moto's), a real MLflow server, a network link to cut."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

# --smoke trains 512 images and the split holds back 10% for validation: the fakes need a few more.
SMOKE_TRAIN, SMOKE_TEST = 640, 100
SMOKE_DATASETS = ("cifar100", "cifar10", "fashion_mnist")  # what the space files in spaces/ search
# What a poll takes for "not there yet": a server not listening, a file half-written, a line not printed yet.
NOT_YET = (requests.RequestException, OSError, ValueError, KeyError)
BUCKET = "searches"  # the bucket the `s3` fixture makes


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


@contextlib.contextmanager
def moto_server(log: Path) -> Iterator[dict]:
    """A real S3 server (moto) on a free port with the bucket BUCKET, checking credentials as a real store does: the
    environment that reaches it, holding the access key of a user allowed all of S3.

    moto checks credentials once its first four requests are done: the readiness probe, the user, its policy
    and its key.
    """
    endpoint = f"http://127.0.0.1:{free_port()}"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", endpoint.rpartition(":")[2]],
            stdout=out, stderr=out, env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"},
        )  # fmt: skip
    try:
        wait_for(lambda: requests.get(endpoint, timeout=2), 60, "moto's S3 server", log, proc=server)
        iam = aws("iam", {"AWS_ENDPOINT_URL": endpoint})
        iam.create_user(UserName="student")
        allow = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="student", PolicyName="s3", PolicyDocument=json.dumps(allow))
        key = iam.create_access_key(UserName="student")["AccessKey"]
        env = {
            **os.environ, "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"], "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }  # fmt: skip
        aws("s3", env).create_bucket(Bucket=BUCKET)
        yield env
    finally:
        server.terminate()
        server.wait(timeout=30)


def aws(service: str, env: dict):
    """A boto3 client of `service` on the moto server `env` reaches, with the key `env` holds (before there is
    one, any: moto does not check the first requests)."""
    import boto3

    return boto3.client(
        service, endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID", "test"),
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY", "test"),
    )  # fmt: skip


def s3_files(env: dict, prefix: str) -> list[str]:
    """Every object under `prefix` (bucket/key...) on the moto server `env` reaches."""
    import pyarrow.fs

    selector = pyarrow.fs.FileSelector(prefix, recursive=True, allow_not_found=True)
    return [f.path for f in _s3(env).get_file_info(selector)]


def s3_text(env: dict, uri: str) -> str:
    """The text of the object at `uri` (s3://bucket/key) on the moto server `env` reaches."""
    with _s3(env).open_input_stream(uri.removeprefix("s3://")) as f:
        return f.read().decode()


def _s3(env: dict):
    import pyarrow.fs

    return pyarrow.fs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], access_key=env["AWS_ACCESS_KEY_ID"],
                                   secret_key=env["AWS_SECRET_ACCESS_KEY"], region="us-east-1")  # fmt: skip


class MlflowServer:
    """A real `mlflow server` on loopback (one worker, a SQLite store and an artifact folder under `root`) that a
    test can stop (SIGKILL, as a crash) and start again; a second one on the same `root` shares the store."""

    def __init__(self, root: Path) -> None:
        self.port, self.root, self.proc = free_port(), root, None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.launch()
        self.wait()

    def launch(self) -> None:
        """Starts the server without waiting for it (`wait`): two servers boot at once."""
        cmd = [
            str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
            "--backend-store-uri", f"sqlite:///{self.root}/server.db",
            "--artifacts-destination", str(self.root / "art"), "--workers", "1",
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def wait(self) -> None:
        """Returns once the server answers."""
        from mlflow.tracking import MlflowClient

        deadline = time.monotonic() + 120
        while True:
            try:
                MlflowClient(self.uri).search_experiments(max_results=1)
                return
            except Exception:
                assert self.proc.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
                time.sleep(0.5)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class Link:
    """A TCP relay from a port of its own to the server at `url` (http://HOST:PORT) that can be cut and mended: a
    network outage between a client and a server that itself keeps running, and keeps what it holds."""

    def __init__(self, url: str) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.target, self.port = (host, int(port)), free_port()
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self.mend()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def mend(self) -> None:
        """Listens again: new connections reach the target."""
        listener = socket.create_server(("127.0.0.1", self.port))
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def retarget(self, url: str) -> None:
        """New connections reach the server at `url` instead: another server came back at the same address."""
        host, _, port = url.removeprefix("http://").partition(":")
        self.target = (host, int(port))

    def cut(self) -> None:
        """Refuses new connections and breaks every open one, as a lost route does."""
        listener, self._listener = self._listener, None
        if listener is not None:  # else cut already
            with contextlib.suppress(OSError):  # wakes the accept() waiting on it, which close() alone does not:
                listener.shutdown(socket.SHUT_RDWR)  # that accept took one more connection and relayed it
            listener.close()
        for conn in self._open:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # cut
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            self._open += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
