"""Where trials run: connecting to Ray (a private local one, or a cluster within a bounded time), how many trials
fit at once, and whether every node sees the search's storage.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from search.errors import UsageError, one_line
from search.space import Settings

# Ray's own INFO ("Started a local Ray instance") would come before any later error's one line; the cost line
# says what started. Its warnings stay.
RAY_LOG_LEVEL = logging.WARNING

CONNECT_TIMEOUT_S = 30  # a cluster that does not answer within this is reported, not waited on
TOKEN_HELP = "on the head node `ray get-auth-token` prints it"


def connect(address: str, quiet: bool = False) -> None:
    """Starts a private local Ray (no address) or joins the cluster at `address` ("auto": this machine's).

    Without an address this never joins whatever cluster the machine's Ray files (/tmp/ray) or RAY_ADDRESS name,
    dead or alive: a search is private unless asked otherwise. A private Ray has token authentication with a
    token of its own: it never reads nor writes ~/.ray/auth_token (perhaps a remote cluster's), nor warns of it.
    Joining a cluster, the token is sent whenever one is at hand (`ray_token`) and RAY_AUTH_MODE is not set: for
    an address, Ray itself sends it only when RAY_AUTH_MODE=token is set here, which a user's shell rarely has.

    Raises:
        UsageError: the cluster does not answer within CONNECT_TIMEOUT_S, or wants a token that is missing or
            wrong here; one line naming the address.
    """
    if ray.is_initialized():  # a notebook's second search reuses its Ray
        return
    if address:
        if not os.environ.get("RAY_AUTH_MODE") and ray_token()[0]:
            os.environ["RAY_AUTH_MODE"] = "token"  # for this process: the connection lives as long as it does
        _reload_auth()
        _probe(address)
        with _sigterm_as_interrupt():
            ray.init(address=address, log_to_driver=not quiet, include_dashboard=False, logging_level=RAY_LOG_LEVEL)
        return
    # The local Ray started here passes its environment on to its workers. Tune runs each trial in a new thread,
    # and glibc gives new threads new malloc arenas that keep what they freed: a worker would grow by tens of MB
    # per trial (bench/memory.py).
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    private = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_AUTH_TOKEN_PATH": None}
    with scoped_env(private), _sigterm_as_interrupt():
        _reload_auth()
        ray.init(address="local", log_to_driver=not quiet, include_dashboard=False, logging_level=RAY_LOG_LEVEL)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While ray.init runs, its own SIGTERM handlers are installed: the driver's exits with code 15, the new local
    node's stops its processes and exits with 1. Either is the SIGTERM a user or Slurm sent: an interrupt."""
    try:
        yield
    except SystemExit as exc:
        if exc.code in (signal.SIGTERM, 1):
            raise KeyboardInterrupt from None
        raise


def _reload_auth() -> None:
    """Makes this process read RAY_AUTH_MODE and the token again (Ray caches both at its first use)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def ray_token() -> tuple[str, str]:
    """The Ray auth token and where it came from, in Ray's own order; ("", "") when there is none.

    Raises:
        UsageError: RAY_AUTH_TOKEN_PATH names a file that cannot be read or is empty (Ray fails on it too).
    """
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN"
    if path := os.environ.get("RAY_AUTH_TOKEN_PATH"):
        try:
            token = Path(path).expanduser().read_text().strip()
        except OSError as exc:
            raise UsageError(f"RAY_AUTH_TOKEN_PATH={path}: cannot read it ({exc.strerror})") from None
        if not token:
            raise UsageError(f"RAY_AUTH_TOKEN_PATH={path}: the file is empty; {TOKEN_HELP}")
        return token, path
    default = Path.home() / ".ray" / "auth_token"
    if default.is_file() and (token := default.read_text().strip()):
        return token, str(default)
    return "", ""


def token_error(where: str) -> UsageError:
    """What to set when the Ray cluster at `where` refused this process (no token, or not its token)."""
    token, source = ray_token()
    if not token:
        return UsageError(
            f"Ray cluster {where} needs an auth token and none was found: set RAY_AUTH_TOKEN, or "
            f"RAY_AUTH_TOKEN_PATH to a file holding it, or put it in ~/.ray/auth_token ({TOKEN_HELP})"
        )
    return UsageError(
        f"Ray cluster {where} rejected the auth token from {source}: it is not this cluster's token ({TOKEN_HELP})"
    )


@contextlib.contextmanager
def scoped_env(values: dict[str, str | None]) -> Iterator[None]:
    """Sets (or, for None, removes) environment variables for the duration of a block."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        _set_env(values)
        yield
    finally:
        _set_env(saved)


def _set_env(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _probe(address: str) -> None:
    """Fails in seconds when nothing listens where `address` points (Ray itself retries for minutes)."""
    from ray._private.services import canonicalize_bootstrap_address  # resolves "auto" as ray.init would

    target = address.removeprefix("ray://")
    try:
        resolved = canonicalize_bootstrap_address(target if target != "auto" else "auto")
    except (ConnectionError, ValueError) as exc:
        raise UsageError(f"--address {address}: {one_line(exc)}") from None
    if resolved is None:
        raise UsageError(
            f"--address {address}: no running Ray cluster found on this machine (start one with ray start)"
        )
    host, _, port = resolved.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise UsageError(
            f"--address {address}: no Ray cluster answers at {host}:{port} ({exc.strerror or one_line(exc)}); is "
            "it up (`ray status` on its head node) and is this its GCS address? Leave --address out for a "
            "private local Ray"
        ) from None
    if address.startswith("ray://"):
        return
    answer = _gcs_answer(resolved, CONNECT_TIMEOUT_S)
    if answer is None:
        raise UsageError(
            f"--address {address}: something listens at {host}:{port} but no Ray GCS answered within "
            f"{CONNECT_TIMEOUT_S} s; is this the cluster's GCS address (`ray status` on its head node)?"
        )
    if answer == "unauthenticated":  # ray.init would retry for about 40 s, then raise a ConnectionError
        mode = os.environ.get("RAY_AUTH_MODE", "")
        if mode not in ("", "token") and ray_token()[0]:
            raise UsageError(
                f"Ray cluster {address} needs an auth token, and RAY_AUTH_MODE={mode} here keeps the one from "
                f"{ray_token()[1]} from being sent: unset RAY_AUTH_MODE, or set it to token"
            )
        raise token_error(address)


def _gcs_answer(address: str, seconds: float) -> str | None:
    """How a Ray GCS at host:port answers this process within `seconds`: "ok", "unauthenticated" (it wants a
    token this process lacks, or has another one), or None (no answer).

    A port that accepts is not yet a Ray (another service, a GCS that hangs): there ray.init waits in Ray's C++
    client, where no signal reaches it, for as long as it is left (seen: minutes). So a child process, with this
    process's environment (and so its auth mode and token), asks first, and is killed when it takes too long;
    what Ray's client logs meanwhile stays in the child.
    """
    probe = f"from ray._raylet import GcsClient; GcsClient(address={address!r})"
    try:
        child = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=seconds, check=False
        )
    except subprocess.TimeoutExpired:
        return None
    # any other error (a version mismatch, say): ray.init will say what it was
    return "unauthenticated" if "AuthenticationError" in child.stderr else "ok"


def concurrency(settings: Settings) -> int:
    """Trials at once: what the cluster holds for the per-trial resources, capped by MAX_CONCURRENT.

    Raises:
        UsageError: the cluster has fewer CPUs or GPUs than one trial asks for.
    """
    s, total = settings, ray.cluster_resources()
    fits = [int(total.get("CPU", 1) // s.CPUS_PER_TRIAL)]
    if s.GPUS_PER_TRIAL > 0:
        if total.get("GPU", 0) < s.GPUS_PER_TRIAL:
            raise UsageError(f"GPUS_PER_TRIAL={s.GPUS_PER_TRIAL}: the Ray cluster has {total.get('GPU', 0):g} GPUs")
        fits.append(int(round(total["GPU"] / s.GPUS_PER_TRIAL, 6)))
    if fits[0] < 1:
        raise UsageError(f"CPUS_PER_TRIAL={s.CPUS_PER_TRIAL:g}: the Ray cluster has {total.get('CPU', 0):g} CPUs")
    n = min(fits)
    return min(n, s.MAX_CONCURRENT) if s.MAX_CONCURRENT else n


@ray.remote(num_cpus=0)
def _sees(path: str) -> bool:
    return os.path.exists(path)


def check_shared_storage(storage: str) -> None:
    """Every alive node must see `storage`: a marker written here is looked for by a task pinned to each node.

    Raises:
        UsageError: naming the nodes that do not see the path.
    """
    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) < 2 or "://" in storage:
        return
    Path(storage).mkdir(parents=True, exist_ok=True)
    marker = Path(storage, f".shared-{uuid.uuid4().hex}")
    marker.touch()
    try:
        pinned = {
            f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})": _sees.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(str(marker))
            for n in nodes
        }
        blind = [name for name, ref in pinned.items() if not ray.get(ref, timeout=CONNECT_TIMEOUT_S * 2)]
    finally:
        marker.unlink(missing_ok=True)
    if blind:
        raise UsageError(
            f"--storage {storage}: {len(blind)} of {len(nodes)} Ray nodes do not see this path ({', '.join(blind)}); "
            "a multi-node search needs storage every node shares for checkpoints (an NFS path or an s3:// URI)"
        )
