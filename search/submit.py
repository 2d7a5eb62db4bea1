"""`python -m search.submit SPACE --address http://HEAD:8265 [search.run options]`: a search as a Ray Job.

The search runs on the cluster exactly as it would here, `python -m search.run SPACE ...`, submitted through
Ray's Jobs SDK. The project folder is the job's working directory (without data, runs, .venv and other local
folders); the MLflow URI and credentials and the data directory travel in the job's environment, never on its
command line. Python packages come from the cluster's own environment (its image or virtualenv: torch built
for its GPUs, and the Ray that runs the cluster); `--pip` installs this project's other dependencies per job.

    python -m search.submit status JOB_ID --address http://HEAD:8265
    python -m search.submit logs JOB_ID --address http://HEAD:8265 [--follow]
    python -m search.submit stop JOB_ID --address http://HEAD:8265

Ray's token authentication stays on: the token comes from where every Ray command reads it, RAY_AUTH_TOKEN,
the file named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import importlib.metadata
import logging
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from search import cli
from search.cluster import ray_token, scoped_env, token_error
from search.errors import UsageError, one_line

PROJECT = Path(__file__).resolve().parents[1]

# Left out of the job's working directory: data, results and environments are local to this machine, and Ray
# refuses a package over 500 MiB. Patterns are .gitignore-style, relative to the project folder.
EXCLUDES = [
    ".git", ".venv", "venv", "env", "data", "runs", "mlruns", "mlartifacts", "mlflow.db", "*.db", "bench/out",
    "__pycache__", "*.pyc", "*.egg-info", ".pytest_cache", ".ruff_cache", ".ipynb_checkpoints", "*.pt",
    "*.ckpt", "*.tar.gz", "slurm-*.out",
]  # fmt: skip

# The submitter's environment the job needs; values are sent in runtime_env env_vars, never printed.
FORWARDED_ENV = (
    "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_INSECURE_TLS",
    "SEARCH_DATA_DIR",
    # --storage s3://...: the credentials and endpoint pyarrow (and so Tune) reads, for nodes without a role of
    # their own
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL",
)  # fmt: skip

# A submit-time probe of the tracking server answers in seconds; MLflow's own retries take minutes to give up.
PROBE_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
             "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}  # fmt: skip

CONNECT_TIMEOUT_S = 30  # a dashboard that does not answer within this is reported, not waited on
ANSWER_TIMEOUT_S = 10  # a dashboard answers /api/version in milliseconds; the Jobs SDK would wait forever


@contextlib.contextmanager
def _cluster_errors(address: str, job_id: str = "") -> Iterator[None]:
    """Turns what the Jobs SDK raises for a missing token, a wrong token, a dead address or an unknown job into
    one line."""
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as exc:
        if not ray_token()[0] or "Forbidden" in str(exc) or "invalid" in str(exc):
            raise token_error(address) from None
        raise UsageError(f"Ray cluster {address}: {str(exc).strip().splitlines()[0]}") from None
    except ConnectionError as exc:  # the SDK's own, and requests' (a subclass of OSError, like it)
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UsageError(
            f"cannot reach the Ray dashboard at {address} ({reason}); is the cluster up, and is the address "
            "the head node's dashboard, http://HEAD:8265?"
        ) from None
    except RuntimeError as exc:
        if job_id and "404" in str(exc):
            raise UsageError(f"no job {job_id} on the Ray cluster {address}") from None
        raise


def connect(address: str):
    """A JobSubmissionClient for the dashboard at `address`, carrying the Ray auth token.

    The token is sent whenever one is found: the Jobs SDK itself sends it only when RAY_AUTH_MODE=token is set
    here, which a user's laptop rarely has.

    Raises:
        UsageError: no token, wrong token, or nothing listening at the address.
    """
    from ray.job_submission import JobSubmissionClient

    _probe_dashboard(address)
    token, _ = ray_token()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    # The SDK lets RAY_ADDRESS and RAY_API_SERVER_ADDRESS override the address it is given; --address wins here.
    with _cluster_errors(address), scoped_env({"RAY_ADDRESS": None, "RAY_API_SERVER_ADDRESS": None}):
        return JobSubmissionClient(address, headers=headers)


def _probe_dashboard(address: str) -> None:
    """Fails in seconds when nothing listens at the dashboard's address (a silent firewall would hang the SDK), or
    when what listens never answers (the SDK's requests have no timeout)."""
    import requests

    parts = cli.parse_address("--address", address, ("http", "https", "ray"))
    try:
        socket.create_connection((parts.hostname, parts.port or 8265), timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"cannot reach the Ray dashboard at {address} ({one_line(exc)}); is the cluster up, and is the address "
            "the head node's dashboard, http://HEAD:8265?"
        ) from None
    if parts.scheme not in ("http", "https"):
        return
    try:  # whatever else it answers is the SDK's to judge; silence and "no such page" are judged here
        answer = requests.get(f"{parts.scheme}://{parts.netloc}/api/version", timeout=ANSWER_TIMEOUT_S)
    except requests.exceptions.Timeout:
        raise UsageError(
            f"the Ray dashboard at {address} accepted the connection but did not answer within {ANSWER_TIMEOUT_S} s; "
            "is the address the head node's dashboard, http://HEAD:8265?"
        ) from None
    except requests.exceptions.RequestException:
        return
    if answer.status_code == 404:
        raise UsageError(
            f"{address} answers HTTP but has no /api/version (404): not a Ray dashboard; give the head node's "
            "dashboard, http://HEAD:8265"
        )


def git_commit() -> str:
    """The commit of the project folder, with '-dirty' when the uploaded files differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT, capture_output=True, text=True, timeout=5,
        )  # fmt: skip
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def pip_requirements() -> list[str]:
    """This project's runtime dependencies, less Ray: a job runs on the cluster's Ray and must not replace it."""
    try:
        requires = importlib.metadata.requires("vgg-search") or []
    except importlib.metadata.PackageNotFoundError:
        raise UsageError("--pip: the project is not installed here; run `make setup` (pip install -e .)") from None
    return [r for r in requires if "extra ==" not in r and not re.match(r"ray\b", r)]


def runtime_env(tracking_uri: str, pip: bool = False) -> dict:
    """The job's runtime_env: this project as its working directory, and the environment the search needs.

    Args:
        tracking_uri: the shared MLflow server's URI.
        pip: also install the project's dependencies into a per-job virtualenv on each node. Ray builds it on
            top of the cluster's packages, so a requirement already met there (torch) is not installed again.
    """
    env_vars = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    env_vars["MLFLOW_TRACKING_URI"] = tracking_uri
    env_vars["SEARCH_GIT_COMMIT"] = git_commit()  # the working directory carries no .git
    env = {"working_dir": str(PROJECT), "excludes": list(EXCLUDES), "env_vars": env_vars}
    if pip:
        env["pip"] = {"packages": pip_requirements(), "pip_check": False}
    return env


def checked_command(run_argv: list[str], tracking_uri: str) -> list[str]:
    """Checks a search.run command line here, before anything is sent, and returns it as the job runs it.

    Args:
        run_argv: search.run's arguments, SPACE among them (not --address or --tracking-uri: those are the
            submitter's).
        tracking_uri: the MLflow server the job records to.

    Raises:
        UsageError: an option search.run lacks, a space file that does not load, storage, data or tracking
            that would end up in the job's temporary working directory.
    """
    from search import run  # its own parser: an option search.run lacks fails here, not in the job
    from search.space import load_space

    parser = run._parser()
    parser.set_defaults(storage=None)  # search.run's default, ./runs, is no place for a cluster's checkpoints
    args = parser.parse_args(run_argv)
    if args.address:
        raise UsageError("--address is the submitter's (the dashboard); the job joins the cluster it runs on")
    path = Path(args.space).resolve()
    if not path.is_relative_to(PROJECT):
        raise UsageError(f"{args.space}: the space file must be inside {PROJECT}, the folder the job gets")
    load_space(path, {}, args.smoke)  # a typo in the space file fails here, in a second
    if args.storage is None:
        raise UsageError(
            "--storage is required for a cluster search: search.run's default, ./runs, would land in the job's "
            "temporary working directory; pass storage every node shares, e.g. --storage /shared/$USER/runs (an "
            "NFS mount) or an s3:// URI"
        )
    if "://" not in args.storage and not Path(args.storage).is_absolute():
        raise UsageError(
            f"--storage {args.storage}: give storage every node shares, as an absolute path (an NFS mount) or a "
            "URI; a relative path would land in the job's temporary working directory"
        )
    if args.data_dir and not Path(args.data_dir).is_absolute():
        raise UsageError(f"--data-dir {args.data_dir}: give an absolute path on the head node, where the job reads it")
    if not tracking_uri:
        raise UsageError(
            "a cluster search records to a shared MLflow server: set MLFLOW_TRACKING_URI (or --tracking-uri) to "
            "its http(s):// address"
        )
    parts = urlsplit(tracking_uri)
    if parts.password:
        raise UsageError("tracking URI: keep the password out of it, in MLFLOW_TRACKING_PASSWORD")
    # sqlite:///x.db is a relative path, sqlite:////x.db an absolute one; a bare path is a local store too.
    local = {"sqlite": parts.path[1:], "file": parts.path, "": parts.path}.get(parts.scheme)
    if local is not None and not Path(local).is_absolute():
        raise UsageError(
            f"tracking URI {tracking_uri}: the job would write into its temporary working directory; give the "
            "shared MLflow server's http(s):// address"
        )
    if not args.data_dir and not os.environ.get("SEARCH_DATA_DIR"):
        print(
            "note: no --data-dir or SEARCH_DATA_DIR: each node fetches the dataset into the job's temporary "
            "working directory",
            file=sys.stderr,
        )
    command = list(run_argv)
    command[command.index(args.space)] = path.relative_to(PROJECT).as_posix()  # the job runs in the project
    # The job joins the cluster it runs on (Ray sets RAY_ADDRESS for it), not a private Ray of its own.
    return ["python", "-m", "search.run", *command, "--address", "auto"]


def check_tracking(tracking_uri: str) -> None:
    """The job's MLflow server must answer and accept these credentials now, not after the cluster starts work.

    Raises:
        UsageError: one line naming the server and what went wrong.
    """
    from search.tracking import open_store

    with scoped_env({k: os.environ.get(k, v) for k, v in PROBE_ENV.items()}):
        open_store(tracking_uri)


def submit(space: str, run_args: list[str], address: str, tracking_uri: str = "", pip: bool = False) -> str:
    """Submits `python -m search.run SPACE RUN_ARGS...` to the Ray cluster at `address`; returns the job id.

    Args:
        space: the space file, inside this project.
        run_args: search.run's options; --storage, shared by every node, is required.
        address: the head node's dashboard, http://HEAD:8265.
        tracking_uri: the shared MLflow server (default $MLFLOW_TRACKING_URI); its credentials come from
            MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.
        pip: install the project's dependencies per job (see `runtime_env`).

    Raises:
        UsageError: a bad option, a missing or wrong Ray token, an unreachable cluster, or an MLflow server
            that does not answer or rejects the credentials; nothing is submitted then.
    """
    return _submit([space, *run_args], address, tracking_uri, pip)


def _submit(run_argv: list[str], address: str, tracking_uri: str, pip: bool) -> str:
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    command = checked_command(run_argv, tracking_uri)
    client = connect(address)
    check_tracking(tracking_uri)
    metadata = {"space": command[3], "submitted_by": getpass.getuser(), "git_commit": git_commit()}
    with _cluster_errors(address):
        return client.submit_job(
            entrypoint=shlex.join(command), runtime_env=runtime_env(tracking_uri, pip), metadata=metadata
        )


def follow(address: str, job_id: str) -> str:
    """Prints the job's logs as they come until it ends; returns its final status (SUCCEEDED, FAILED, STOPPED)."""
    client = connect(address)

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    with _cluster_errors(address, job_id):
        client.get_job_status(job_id)  # an unknown id fails here, not as a websocket error
        try:
            asyncio.run(tail())
        except KeyboardInterrupt:
            print(
                f"\nstopped following; the job goes on. Stop it with: python -m search.submit stop {job_id} "
                f"--address {address}",
                file=sys.stderr,
            )
            raise
        status = client.get_job_status(job_id)
        while not status.is_terminal():  # the log stream can end a moment before the status does
            time.sleep(1)
            status = client.get_job_status(job_id)
    return str(status)


def _parser(commands: bool) -> cli.ArgumentParser:
    if commands:
        p = cli.ArgumentParser(
            prog="python -m search.submit", description="Follow, inspect or stop a submitted search."
        )
        p.add_argument("command", choices=["status", "logs", "stop"])
        p.add_argument("job_id", help="the id `python -m search.submit SPACE` printed")
        p.add_argument("--follow", action="store_true", help="logs: stream until the job ends, exit with its outcome")
    else:
        # Only the submitter's own options: everything else, SPACE included, is search.run's and is left over.
        p = cli.ArgumentParser(
            prog="python -m search.submit",
            usage="%(prog)s SPACE --address URL [--follow] [--pip] [search.run options]\n"
            "       %(prog)s {status,logs,stop} JOB_ID --address URL",
            description="Submit a search to a Ray cluster as a Ray Job; follow, inspect or stop it.",
            epilog="search.run options: python -m search.run --help (--storage, shared by every node, is required)",
        )
        p.add_argument(
            "--follow", action="store_true", help="stream the logs until the job ends, exit with its outcome"
        )
        p.add_argument("--pip", action="store_true", help="install the project's dependencies per job (never Ray)")
        p.add_argument("--tracking-uri", default="", help="the shared MLflow server (default $MLFLOW_TRACKING_URI)")
    default = os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or None
    p.add_argument(
        "--address", default=default, required=default is None,
        help="the head node's dashboard, http://HEAD:8265 (default $RAY_API_SERVER_ADDRESS, $RAY_ADDRESS)",
    )  # fmt: skip
    return p


# The Jobs SDK's INFO lines (each file it leaves out of the package, each upload, each websocket closed) and its
# warning about the folders it now leaves out by default, which EXCLUDES leaves out too.
QUIET_LOGGERS = (
    "ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk", "ray._private.runtime_env.packaging",
    "ray._private.runtime_env.working_dir",
)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    import ray.job_submission  # noqa: F401 - first: importing it sets its loggers' levels

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    if argv and argv[0] in ("status", "logs", "stop"):
        return _job_command(_parser(commands=True).parse_args(argv))
    args, run_argv = _parser(commands=False).parse_known_args(argv)
    job_id = _submit(run_argv, args.address, args.tracking_uri, args.pip)
    print(f"submitted {job_id} to {args.address}")
    hint = f"python -m search.submit {{}} {job_id} --address {args.address}"
    if not args.follow:
        print(f"follow it:  {hint.format('logs')} --follow")
        print(f"status:     {hint.format('status')}")
        print(f"stop it:    {hint.format('stop')}")
        return 0
    return _outcome(job_id, follow(args.address, job_id))


def _job_command(args: argparse.Namespace) -> int:
    if args.command == "logs" and args.follow:
        return _outcome(args.job_id, follow(args.address, args.job_id))
    client = connect(args.address)
    with _cluster_errors(args.address, args.job_id):
        if args.command == "logs":
            print(client.get_job_logs(args.job_id), end="")
        elif args.command == "status":
            info = client.get_job_info(args.job_id)
            print(f"{args.job_id}: {info.status}" + (f" ({info.message})" if info.message else ""))
        else:
            stopped = client.stop_job(args.job_id)
            status = client.get_job_status(args.job_id)
            print(f"{args.job_id}: {'stop requested' if stopped else 'already ended'} ({status})")
    return 0


def _outcome(job_id: str, status: str) -> int:
    print(f"job {job_id}: {status}", file=sys.stderr)
    return 0 if status == "SUCCEEDED" else 1


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
