"""A search's folder, on whatever storage Tune keeps it (a local or NFS path, `s3://`, `gs://`): its layout, its
search.json, and Tune's record of its trials read back. Everything that reads or writes the folder comes here.

The folder `STORAGE/NAME` holds search.json (`search.state.SearchState`), best_config.json, and Tune's own record:
experiment_state-*.json (the snapshot a resume continues from), the searcher's state, and one folder per trial
(params.json, result.json with one line per epoch, error.txt, checkpoints). The final retrains are a Tune
experiment of their own beside it, `STORAGE/NAME-final`. Paths and URIs are both plain strings here, read and
written through `pyarrow.fs`, the layer Ray's own storage uses, so that one code path serves every storage.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow
import pyarrow.fs

from search.errors import UsageError, one_line

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

STATE_FILE = "search.json"
BEST_CONFIG_FILE = "best_config.json"
FINAL = "-final"  # the final retrains' experiment: NAME-final, beside the search


def is_remote(uri: str | os.PathLike) -> bool:
    return "://" in str(uri)


def join(folder: str | os.PathLike, *parts: str) -> str:
    """`folder/part/...` for a path or a URI (pathlib would turn s3://b into s3:/b)."""
    return posixpath.join(str(folder), *parts)


def final_folder(folder: str | os.PathLike) -> str:
    return f"{folder}{FINAL}"


def filesystem(uri: str | os.PathLike) -> tuple[pyarrow.fs.FileSystem, str]:
    """pyarrow's filesystem for a path or URI, and the path within it.

    Raises:
        UsageError: a scheme pyarrow cannot open, naming it.
    """
    uri = str(uri)
    if not is_remote(uri):
        return pyarrow.fs.LocalFileSystem(), os.path.abspath(uri)
    try:
        return pyarrow.fs.FileSystem.from_uri(uri)
    except (pyarrow.ArrowInvalid, pyarrow.ArrowNotImplementedError) as exc:
        raise UsageError(
            f"{uri}: storage pyarrow cannot open ({one_line(exc, 200)}); use a path, s3:// or gs://"
        ) from None
    except OSError as exc:  # s3:// asks where its bucket lives: a network or credentials error
        raise UsageError(f"{uri}: cannot reach it ({one_line(exc, 300)})") from None


def unreachable(uri: str | os.PathLike, timeout: float = 15.0) -> str:
    """Why the storage holding `uri` does not answer now, as one line; '' when it does. Within `timeout` seconds:
    a request to an endpoint that is gone can wait far longer (the request goes on in a thread left behind)."""
    answer: list[str] = []

    def probe() -> None:
        try:
            fs, path = filesystem(uri)
            _impatient(fs).get_file_info(path)
            answer.append("")
        except (OSError, UsageError) as exc:  # from_uri's region lookup fails as a UsageError
            answer.append(one_line(exc, 300))

    thread = threading.Thread(target=probe, name="storage-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return answer[0] if answer else f"no answer within {timeout:.0f} s"


# How a check of S3 asks: twice at most. from_uri's S3 retries a refused connection or an unresolved host for ~6 s.
_ASK_TWICE = pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=2)


def _impatient(fs: pyarrow.fs.FileSystem) -> pyarrow.fs.FileSystem:
    """The same filesystem, where it is S3 asking twice at most: from_uri's S3 retries a refused connection for about
    6 s, which a probe of a mistyped endpoint should not wait (a search keeps from_uri's patience)."""
    if not isinstance(fs, pyarrow.fs.S3FileSystem):
        return fs
    _, (options,) = fs.__reduce__()  # the options from_uri resolved (region, endpoint, credentials)
    return pyarrow.fs.S3FileSystem(**options, retry_strategy=_ASK_TWICE)


def read_text(uri: str | os.PathLike) -> str | None:
    """A file's text, or None when there is none."""
    data = read_bytes(uri)
    return None if data is None else data.decode(errors="replace")


def read_bytes(uri: str | os.PathLike) -> bytes | None:
    """A file's bytes, or None when there is none."""
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None


def write_text(uri: str | os.PathLike, text: str) -> None:
    """Writes a file whole or not at all (see `write_bytes`)."""
    write_bytes(uri, text.encode())


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    """Writes a file whole or not at all: a local one is written aside and renamed into place; an object store's
    PUT replaces an object whole anyway."""
    if is_remote(uri):
        fs, path = filesystem(uri)
        with fs.open_output_stream(path) as f:
            f.write(data)
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    aside.write_bytes(data)
    os.replace(aside, path)


def exists(uri: str | os.PathLike) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def listing(folder: str | os.PathLike) -> list[pyarrow.fs.FileInfo]:
    """What `folder` holds (not recursively); nothing when it does not exist."""
    fs, path = filesystem(folder)
    return fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))


@contextmanager
def local_copy(uri: str | os.PathLike) -> Iterator[str]:
    """A local path to a file or folder: itself when local, else a temporary download of it."""
    if not is_remote(uri):
        yield str(uri)
        return
    fs, path = filesystem(uri)
    with tempfile.TemporaryDirectory(prefix="search-") as tmp:
        local = os.path.join(tmp, posixpath.basename(path.rstrip("/")))
        if fs.get_file_info(path).type == pyarrow.fs.FileType.Directory:
            pyarrow.fs.copy_files(path, local, source_filesystem=fs)
        else:
            with fs.open_input_stream(path) as src, open(local, "wb") as dst:
                shutil.copyfileobj(src, dst)
        yield local


@contextmanager
def local_files(folder: str | os.PathLike, pattern: str) -> Iterator[str]:
    """A local folder holding the files of `folder` named like `pattern` (a glob): `folder` itself when local,
    else a temporary download of just those files; what the block changes there is written back."""
    if not is_remote(folder):
        yield os.path.abspath(folder)
        return
    names = [posixpath.basename(f.path) for f in listing(folder) if fnmatch(posixpath.basename(f.path), pattern)]
    with tempfile.TemporaryDirectory(prefix="search-") as tmp:
        before = {}
        for name in names:
            before[name] = read_bytes(join(folder, name))
            Path(tmp, name).write_bytes(before[name])
        yield tmp
        for path in Path(tmp).iterdir():
            if path.is_file() and fnmatch(path.name, pattern) and path.read_bytes() != before.get(path.name):
                write_bytes(join(folder, path.name), path.read_bytes())


def _check_endpoint(storage: str) -> None:
    """Fails in a second where AWS's S3 cannot be reached at all (no network, a host that does not resolve):
    from_uri first asks AWS which region the bucket is in and retries that for about 6 s. Any answer, even an
    error (another region, no permission), is left to the full check. With an endpoint of its own
    (AWS_ENDPOINT_URL) from_uri asks nothing first, and the full check asks twice at most (`_impatient`)."""
    if not storage.startswith("s3://") or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3"):
        return
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    fs = pyarrow.fs.S3FileSystem(region=region, retry_strategy=_ASK_TWICE)
    bucket = storage.removeprefix("s3://").split("/", 1)[0]
    try:
        fs.get_file_info(bucket)
    except OSError as exc:
        if "NETWORK_CONNECTION" in str(exc):
            raise UsageError(f"--storage {storage}: cannot reach it ({one_line(exc, 300)})") from None


def check_storage(storage: str) -> None:
    """Fails before anything starts when a search could not keep its state and checkpoints in `storage`; it
    creates nothing.

    Raises:
        UsageError: a scheme pyarrow cannot open, a bucket that does not exist or cannot be reached (no
            credentials, no permission), or a local path that cannot be written; naming the storage and why.
    """
    if is_remote(storage):
        _check_endpoint(storage)
        fs, path = filesystem(storage)
        bucket = path.split("/", 1)[0]
        try:
            found = _impatient(fs).get_file_info(bucket).type != pyarrow.fs.FileType.NotFound
        except OSError as exc:  # AWS errors: credentials, permission, an endpoint that does not answer
            raise UsageError(f"--storage {storage}: cannot reach bucket {bucket} ({one_line(exc, 300)})") from None
        if not found:
            raise UsageError(
                f"--storage {storage}: bucket {bucket} does not exist (or cannot be seen with these credentials)"
            )
        return
    existing = Path(storage)
    while not existing.exists():  # checked without creating anything: nothing is written before the search
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"--storage {storage}: cannot write there ({existing} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--storage {storage}: cannot write there (no write permission on {existing})")


# search.json


@dataclass
class SearchState:
    """The contents of search.json: which space file (and its fingerprint), the overrides, and where the search's
    MLflow records are, so that --resume and `python -m search.tracking sync` find them."""

    space_path: str
    space_sha: str
    overrides: dict
    smoke: bool = False
    data_dir: str = ""
    experiment: str = ""
    experiment_id: str = ""
    parent_run_id: str = ""
    tracking_uri: str = ""
    max_epochs: int = 0
    metric: str = "val_acc"  # METRIC and MODE, by which each trial's run keeps its best epoch
    mode: str = "max"
    warm_start: str = ""  # the earlier search TPE started from
    claim_id: str = ""  # tags the parent run, so that a search killed before it recorded parent_run_id finds it


def state_path(storage: str, name: str) -> str:
    return join(storage, name, STATE_FILE)


def read_state(folder: str | os.PathLike) -> SearchState:
    """Reads a search folder's search.json.

    Raises:
        UsageError: no search.json there, or one this version cannot read.
    """
    path = join(folder, STATE_FILE)
    text = read_text(path)
    if text is None:
        raise UsageError(f"{folder}: not a search folder (no {STATE_FILE})")
    try:
        return SearchState(**json.loads(text))
    except (TypeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: unreadable search state ({exc})") from None


def write_state(folder: str | os.PathLike, state: SearchState) -> None:
    """Writes search.json whole: a crash leaves the old file or the new one, never half of one."""
    write_text(join(folder, STATE_FILE), json.dumps(asdict(state), indent=2))


@contextmanager
def claim(storage: str, name: str, state: SearchState) -> Iterator[str]:
    """Claims the folder `storage/name` for a new search: its search.json, created exclusively and whole (`state`,
    its parent run still to come), and the block that creates the parent and writes its id with `write_state`.

    Two searches started with one --name both find no search.json; on a file system only one can create it: the
    file is written aside and hard-linked into place, which is atomic and fails when the name exists (on NFS too).
    An object store has no such operation: there the second of two searches started within the same second with
    one name may win too. A search killed inside the block leaves a readable search.json without a
    parent_run_id, which --resume starts afresh. If the block fails instead, the claim is released: the file goes,
    and a local folder too when the claim made it and it is still empty.

    Raises:
        UsageError: a search of that name exists, or is starting this moment.
    """
    path = state_path(storage, name)
    taken = UsageError(f"--name {name}: a search of that name exists in {storage}; use --resume or a new name")
    if is_remote(storage):
        if exists(path):
            raise taken
        write_state(join(storage, name), state)
        made = False
    else:
        local = Path(path)
        made = not local.parent.exists()
        local.parent.mkdir(parents=True, exist_ok=True)
        aside = local.with_name(f".{STATE_FILE}.{uuid.uuid4().hex}")
        aside.write_text(json.dumps(asdict(state), indent=2))
        try:
            os.link(aside, local)
        except FileExistsError:
            raise taken from None
        finally:
            aside.unlink()
    try:
        yield join(storage, name)
    except BaseException:
        if not read_state(join(storage, name)).parent_run_id:  # never recorded: nothing of this search exists
            fs, file = filesystem(path)
            fs.delete_file(file)
            if made:
                with suppress(OSError):  # something else is in it now
                    os.rmdir(os.path.dirname(file))
        raise


def latest(storage: str, space_name: str) -> str:
    """The name of the newest search of a space under `storage` (what --resume without --name continues).

    Raises:
        UsageError: there is none.
    """
    stamped = []
    for info in listing(storage):
        name = posixpath.basename(info.path)
        searched = name.startswith(f"{space_name}-") and not name.endswith(FINAL)
        if info.type == pyarrow.fs.FileType.Directory and searched:
            mtime = _state_mtime(storage, name)
            stamped += [(mtime, name)] if mtime is not None else []
    if not stamped:
        raise UsageError(f"--resume: no search of {space_name} under {storage}; give --name of the search to resume")
    return max(stamped)[1]


def _state_mtime(storage: str, name: str) -> float | None:
    fs, path = filesystem(state_path(storage, name))
    info = fs.get_file_info(path)
    return None if info.type == pyarrow.fs.FileType.NotFound else info.mtime.timestamp()


def write_best_config(folder: str | os.PathLike, config: dict) -> str:
    """Writes a search's winning config, whole and exact, as best_config.json (replacing the last winner's):
    `python -m search.train --config` of it trains that trial again.

    Returns:
        The file's path or URI.
    """
    path = join(folder, BEST_CONFIG_FILE)
    write_text(path, json.dumps(config, indent=2, allow_nan=False) + "\n")
    return path


# Tune's record


def has_snapshot(folder: str | os.PathLike) -> bool:
    """Whether Tune wrote an experiment snapshot in `folder`: what a resume continues from.

    Not `Tuner.can_restore`, which looks for tuner.pkl: Tune writes that when the Tuner is built, before any
    snapshot, and a Tuner restored from it alone starts over with its searcher in whatever state it was pickled.
    """
    return any(posixpath.basename(f.path).startswith("experiment_state-") for f in listing(folder))


def trial_count(folder: str | os.PathLike) -> int:
    """How many trials Tune has created in `folder` (each has its params.json)."""
    dirs = [f.path for f in listing(folder) if f.type == pyarrow.fs.FileType.Directory]
    fs, _ = filesystem(folder)
    return sum(fs.get_file_info(posixpath.join(d, "params.json")).type == pyarrow.fs.FileType.File for d in dirs)


def tune_trials(folder: str | os.PathLike) -> dict[str, Trial]:
    """trial_id -> trial (status, config, max_failures) from Tune's newest experiment snapshot; none before the
    first one.

    Raises:
        UsageError: the snapshot cannot be read (torn, or not Tune's).
    """
    from ray import tune

    if not has_snapshot(folder):
        return {}
    try:
        analysis = tune.ExperimentAnalysis(str(folder) if is_remote(folder) else os.path.abspath(folder))
    except (ValueError, KeyError, TypeError) as exc:  # a torn or foreign JSON file (JSONDecodeError is a ValueError)
        raise UsageError(f"{folder}: Tune's snapshot (experiment_state-*.json) is unreadable "
                         f"({one_line(exc, 200)}); is the folder a complete copy?") from None  # fmt: skip
    return {t.trial_id: t for t in analysis.trials}


def results(folder: str | os.PathLike, trial_id: str) -> list[dict]:
    """A trial's epochs from Tune's result.json, one per epoch (a retried trial may report an epoch twice).

    Raises:
        UsageError: a line that is not one epoch's JSON object (a write cut short), naming the file and line.
    """
    path = join(folder, trial_id, "result.json")
    by_epoch = {}
    for number, line in enumerate((read_text(path) or "").splitlines(), 1):
        try:
            result = json.loads(line)
        except ValueError:  # a write cut short (a killed process, a full disk), or not Tune's file
            raise UsageError(f"{path}:{number}: not a JSON line (torn, or not Tune's); delete that line and sync "
                             "again") from None  # fmt: skip
        if not isinstance(result, dict):
            raise UsageError(f"{path}:{number}: expected a JSON object of one epoch's metrics, got {line[:80]}")
        if "epoch" in result:
            by_epoch[int(result["epoch"])] = result
    return [by_epoch[e] for e in sorted(by_epoch)]


def error_trace(folder: str | os.PathLike, trial_id: str) -> tuple[str, str]:
    """(last line, whole trace) of a trial's error.txt."""
    trace = read_text(join(folder, trial_id, "error.txt")) or "unknown error"
    lines = [line for line in trace.splitlines() if line.strip()]
    return next((line for line in reversed(lines) if not line.startswith(" ")), lines[-1] if lines else ""), trace


def out_of_retries(folder: str | os.PathLike, trial_id: str, max_failures: int) -> bool:
    """Whether a trial failed more often than Tune retries it: its error.txt says how often ("Failure # N")."""
    trace = read_text(join(folder, trial_id, "error.txt")) or ""
    failures = [int(n) for n in re.findall(r"^Failure # (\d+)", trace, re.M)]
    return bool(failures) and 0 <= max_failures < max(failures)


def trial_status(trial: Trial, folder: str | os.PathLike) -> str:
    """TERMINATED, ERROR or interrupted, by Tune's snapshot and the trial's folder.

    Tune's last snapshot can still say RUNNING for a trial whose worker died with no retries left: Tune does not
    mark an errored trial for its next snapshot (Ray 2.60). Past its retries, the trial errored, whatever the
    snapshot says.
    """
    if trial.status == "TERMINATED":
        return "TERMINATED"
    if trial.status == "ERROR" or out_of_retries(folder, trial.trial_id, trial.max_failures):
        return "ERROR"
    return "interrupted"


def unfinished_trials(folder: str | os.PathLike) -> list[str]:
    """The trials Tune's record says are still to run (pending, paused or stopped on Ctrl-C): what --resume continues.

    Ask the record, not the ResultGrid: on Ctrl-C (or SIGTERM, as run.py turns it) Tune saves its snapshot and then
    marks the trials it stops TERMINATED in memory (Ray 2.60), so a search stopped in its last wave of trials
    looks finished there.
    """
    return [i for i, trial in tune_trials(folder).items() if trial_status(trial, folder) == "interrupted"]


def checkpoint_uri(checkpoint) -> str:
    """Where a Tune checkpoint lies, as a path or a URI (Ray keeps a remote one's path without its scheme)."""
    scheme = checkpoint.filesystem.type_name
    return checkpoint.path if scheme == "local" else f"{scheme}://{checkpoint.path}"
