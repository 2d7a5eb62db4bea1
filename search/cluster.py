"""Where trials run: connecting to Ray (a private local one, or a cluster within a bounded time), how many trials
fit at once, and whether every node sees the search's storage.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from search.errors import UsageError, one_line
from search.space import Settings

CONNECT_TIMEOUT_S = 30  # a cluster that does not answer within this is reported, not waited on


def connect(address: str, quiet: bool = False) -> None:
    """Starts a private local Ray (no address) or joins the cluster at `address` ("auto": this machine's).

    Without an address this never joins whatever cluster the machine's Ray files (/tmp/ray) or RAY_ADDRESS name,
    dead or alive: a search is private unless asked otherwise.

    Raises:
        UsageError: the cluster does not answer within CONNECT_TIMEOUT_S; one line naming the address.
    """
    if ray.is_initialized():  # a notebook's second search reuses its Ray
        return
    if address:
        _probe(address)
    else:  # the local Ray started here passes its environment on to its workers
        # Tune runs each trial in a new thread, and glibc gives new threads new malloc arenas that keep what they
        # freed: a worker would grow by tens of MB per trial (bench/memory.py).
        os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    ray.init(address=address or "local", log_to_driver=not quiet, include_dashboard=False)


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
    if not address.startswith("ray://") and not _gcs_answers(resolved, CONNECT_TIMEOUT_S):
        raise UsageError(
            f"--address {address}: something listens at {host}:{port} but no Ray GCS answered within "
            f"{CONNECT_TIMEOUT_S} s; is this the cluster's GCS address (`ray status` on its head node)?"
        )


def _gcs_answers(address: str, seconds: float) -> bool:
    """Whether a Ray GCS answers at host:port within `seconds`.

    A port that accepts is not yet a Ray (another service, a GCS that hangs): there ray.init waits in Ray's C++
    client, where no signal reaches it, for as long as it is left (seen: minutes). So a child process asks first,
    and is killed when it takes too long; what Ray's client logs meanwhile stays in the child.
    """
    probe = f"from ray._raylet import GcsClient; GcsClient(address={address!r})"
    try:
        subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=seconds, check=False)
    except subprocess.TimeoutExpired:
        return False
    return True  # an answer, even an error (a refused token, say): ray.init will say what it was


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


def check_writable(storage: str) -> None:
    """Fails before anything starts when checkpoints could not be written (URIs are left to Ray).

    Raises:
        UsageError: naming the path and why.
    """
    if "://" in storage:
        return
    existing = Path(storage)
    while not existing.exists():  # checked without creating anything: nothing is written before the search
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"--storage {storage}: cannot write there ({existing} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--storage {storage}: cannot write there (no write permission on {existing})")


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
